"""gRPC transport of the monitoring service."""
