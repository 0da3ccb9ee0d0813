"""gRPC servicer of the gateway and the message ↔ domain converters it (and the JSON
front) share."""
