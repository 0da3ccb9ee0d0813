"""Adapters from the gateway's ports to the other services' gRPC APIs.

They convert messages to domain types and turn transport failures into domain errors
naming the dependency, so neither the core nor the transport handles ``grpc`` errors.
"""
