"""Typed client of the model registry (`mlbackend.registry.v1.ModelRegistryService`).

Besides the raw ``stub`` it offers the two streaming helpers everyone needs: an upload
that streams a file in 1 MiB chunks with its sha256, and a download that checks the
digest the server sends first and raises :class:`ArtifactIntegrityError` on mismatch.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

import grpc

from mlbackend.registry.v1 import registry_pb2, registry_pb2_grpc
from mlbackend_clients.base import ServiceClient
from mlbackend_clients.errors import decode_error

CHUNK_BYTES = 1024 * 1024
"""Upload chunk size: the registry accepts at most 1 MiB per message."""

Source = bytes | str | os.PathLike[str] | BinaryIO


class ArtifactIntegrityError(Exception):
    """The downloaded bytes do not match the digest or size the server announced."""


def _open(source: Source) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    if isinstance(source, str | os.PathLike):
        return Path(source).open("rb")
    return source


def _digest(handle: BinaryIO) -> tuple[str, int]:
    start = handle.tell()
    digest = hashlib.sha256()
    size = 0
    while chunk := handle.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    handle.seek(start)
    return digest.hexdigest(), size


class RegistryClient(ServiceClient["registry_pb2_grpc.ModelRegistryServiceAsyncStub"]):
    SERVICE = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"]
    STUB = registry_pb2_grpc.ModelRegistryServiceStub

    async def upload_version(
        self,
        parent: str,
        artifact: Source,
        model_version: registry_pb2.ModelVersion | None = None,
        *,
        create_registered_model: bool = False,
        reason: str = "",
        timeout: float | None = None,
    ) -> registry_pb2.ModelVersion:
        """Create a version of ``parent`` (``models/NAME``) from bytes, a path or a binary file.

        The file is read twice (once to hash it, once to send it), never held in memory.
        """
        handle = _open(artifact)
        try:
            sha256, size = await asyncio.to_thread(_digest, handle)
            metadata = registry_pb2.CreateModelVersionRequest.Metadata(
                parent=parent,
                model_version=model_version or registry_pb2.ModelVersion(),
                artifact_sha256=sha256,
                artifact_size_bytes=size,
                create_registered_model=create_registered_model,
                reason=reason,
            )

            async def requests() -> AsyncIterator[registry_pb2.CreateModelVersionRequest]:
                yield registry_pb2.CreateModelVersionRequest(metadata=metadata)
                while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
                    yield registry_pb2.CreateModelVersionRequest(chunk=chunk)

            try:
                response = await self.stub.CreateModelVersion(requests(), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise decode_error(exc) from None
            return response.model_version
        finally:
            if handle is not artifact:
                handle.close()

    async def download_artifact(
        self,
        name: str,
        out: BinaryIO,
        *,
        chunk_size: int = 0,
        timeout: float | None = None,
    ) -> registry_pb2.DownloadModelArtifactResponse.Header:
        """Stream the artifact of ``name`` (``models/M/versions/N|ALIAS|latest``) into ``out``.

        Raises :class:`ArtifactIntegrityError` when the bytes do not hash to the digest
        announced first (``out`` then holds unverified bytes: discard them).
        """
        call = self.stub.DownloadModelArtifact(
            registry_pb2.DownloadModelArtifactRequest(name=name, chunk_size_bytes=chunk_size),
            timeout=timeout,
        )
        header: registry_pb2.DownloadModelArtifactResponse.Header | None = None
        digest = hashlib.sha256()
        size = 0
        try:
            async for message in call:
                if message.WhichOneof("payload") == "header":
                    header = message.header
                    continue
                if header is None:
                    raise ArtifactIntegrityError(f"{name}: the server sent bytes before the digest")
                digest.update(message.chunk)
                size += len(message.chunk)
                await asyncio.to_thread(out.write, message.chunk)
        except grpc.aio.AioRpcError as exc:
            raise decode_error(exc) from None
        if header is None:
            raise ArtifactIntegrityError(f"{name}: the server sent no digest")
        expected = header.artifact
        if size != expected.size_bytes or digest.hexdigest() != expected.sha256:
            raise ArtifactIntegrityError(
                f"{header.model_version}: received {size} bytes with sha256 "
                f"{digest.hexdigest()}, expected {expected.size_bytes} bytes with "
                f"sha256 {expected.sha256}"
            )
        return header

    async def download_artifact_bytes(
        self, name: str, *, timeout: float | None = None
    ) -> tuple[registry_pb2.DownloadModelArtifactResponse.Header, bytes]:
        """The verified artifact in memory (for small artifacts; else ``download_artifact``)."""
        buffer = io.BytesIO()
        header = await self.download_artifact(name, buffer, timeout=timeout)
        return header, buffer.getvalue()
