"""gRPC servicers of the serving service and their message ↔ domain converters."""
