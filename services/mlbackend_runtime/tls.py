"""Server credentials from PEM files: TLS, or mutual TLS when a client CA is given."""

from __future__ import annotations

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
