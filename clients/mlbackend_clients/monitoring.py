"""Typed client of the monitoring service (`mlbackend.monitoring.v1.MonitoringService`)."""

from __future__ import annotations

from mlbackend.monitoring.v1 import monitoring_pb2, monitoring_pb2_grpc
from mlbackend_clients.base import ServiceClient


class MonitoringClient(ServiceClient["monitoring_pb2_grpc.MonitoringServiceAsyncStub"]):
    SERVICE = monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"]
    STUB = monitoring_pb2_grpc.MonitoringServiceStub
