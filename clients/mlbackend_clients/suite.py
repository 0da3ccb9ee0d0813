"""The typed client of each service, by the short name ``mlbackend serve`` uses."""

from __future__ import annotations

from typing import Any

from mlbackend_clients.base import ServiceClient
from mlbackend_clients.features import FeatureStoreClient
from mlbackend_clients.gateway import GatewayClient
from mlbackend_clients.monitoring import MonitoringClient
from mlbackend_clients.registry import RegistryClient
from mlbackend_clients.serving import ServingClient

CLIENT_CLASSES: dict[str, type[ServiceClient[Any]]] = {
    "registry": RegistryClient,
    "features": FeatureStoreClient,
    "monitoring": MonitoringClient,
    "serving": ServingClient,
    "gateway": GatewayClient,
}
