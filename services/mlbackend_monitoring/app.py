"""Wiring of the monitoring service: settings → prediction log → core → servicer → server."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry

from mlbackend.monitoring.v1 import monitoring_pb2, monitoring_pb2_grpc
from mlbackend_monitoring.core.predictions import PredictionLogService
from mlbackend_monitoring.stores.sqlite import SqlitePredictionLog
from mlbackend_monitoring.transport.servicer import MonitoringServicer
from mlbackend_runtime.background import background_executor
from mlbackend_runtime.server import RunningServer, ServiceSpec, start_server
from mlbackend_runtime.settings import ServerSettings

SPEC = ServiceSpec(
    name="monitoring",
    grpc_services=(monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name,),
    default_port=50054,
    default_metrics_port=9054,
    max_message_bytes=16 * 1024 * 1024,
)


async def create_server(
    settings: ServerSettings, *, registry: CollectorRegistry | None = None
) -> RunningServer:
    # Ingest is background work: records are decoded and written on one thread below the
    # process's priority, which also owns the log's connection.
    background = background_executor("monitoring-ingest", settings.monitoring_nice)
    log = SqlitePredictionLog(settings.data_dir / "monitoring" / "predictions.sqlite", background)
    # Metrics, drift and verdicts come with a later issue: the generated base answers them.
    servicer = MonitoringServicer(PredictionLogService(log), background)  # type: ignore[abstract]

    def register(server: grpc.aio.Server) -> None:
        monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(servicer, server)

    running = await start_server(SPEC, settings, register, registry=registry)
    running.on_stop(log.close)
    return running
