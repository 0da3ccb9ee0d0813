"""The services ``mlbackend serve`` and ``mlbackend up`` know, by short name."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable
from typing import Protocol

from prometheus_client import CollectorRegistry

from mlbackend_runtime.server import RunningServer, ServiceSpec
from mlbackend_runtime.settings import ServerSettings

# Start order for `mlbackend up`: dependencies before the services that call them.
SERVICES: dict[str, str] = {
    "registry": "mlbackend_registry.app",
    "features": "mlbackend_features.app",
    "monitoring": "mlbackend_monitoring.app",
    "serving": "mlbackend_serving.app",
    "gateway": "mlbackend_gateway.app",
}

# Which other services each one calls, passed as --NAME target by `mlbackend up`.
DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "registry": (),
    "features": (),
    "monitoring": ("registry",),
    "serving": ("registry", "monitoring"),
    "gateway": ("registry", "features", "serving", "monitoring"),
}


class ServiceApp(Protocol):
    SPEC: ServiceSpec

    def create_server(
        self, settings: ServerSettings, *, registry: CollectorRegistry | None = None
    ) -> Awaitable[RunningServer]: ...


def load(name: str) -> ServiceApp:
    """The ``app`` module of service ``name`` (imported on demand: a process loads one)."""
    try:
        module_name = SERVICES[name]
    except KeyError:
        known = ", ".join(SERVICES)
        raise ValueError(f"unknown service {name!r}; expected one of {known}") from None
    app: ServiceApp = importlib.import_module(module_name)
    return app
