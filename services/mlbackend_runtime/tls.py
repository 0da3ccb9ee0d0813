"""Server credentials from PEM files: TLS, or mutual TLS when a client CA is given.

The same files serve a gRPC port (:func:`server_credentials`) and an HTTP listener
beside it (:func:`server_ssl_context`: the gateway's JSON front), so a service that
speaks both never offers one of them in plaintext.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    root = client_ca.read_bytes() if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later with ``cert``; with ``client_ca``, a client must present a
    certificate that CA signed (only that CA: not the system's), as on the gRPC port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["http/1.1"])
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
