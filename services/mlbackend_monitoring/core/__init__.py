"""Monitoring's domain: the prediction log and feedback (no gRPC here)."""
