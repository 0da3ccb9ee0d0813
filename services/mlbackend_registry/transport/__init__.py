"""gRPC transport of the registry: the servicer and the pb2 <-> domain converters."""
