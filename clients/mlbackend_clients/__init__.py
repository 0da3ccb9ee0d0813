"""Clients of the mlbackend services: a channel factory and a thin typed client per service.

Imports only gRPC, protobuf and the generated ``mlbackend.*`` wire code, so it can
ship as a small wheel of its own.
"""

from mlbackend_clients.channel import ChannelOptions, TlsOptions, create_channel
from mlbackend_clients.errors import RpcError, decode_error

__all__ = ["ChannelOptions", "RpcError", "TlsOptions", "create_channel", "decode_error"]
