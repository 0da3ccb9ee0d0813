"""Content-addressed artifact blobs under ``data_dir/artifacts``.

A blob lives at ``sha256/<first two hex>/<digest>``. Uploads stream into a temporary
file under ``tmp/`` while being hashed; ``commit`` fsyncs and renames it into place,
so a reader never sees a partial blob and identical bytes are stored once. Anything
left in ``tmp/`` after a crash, and any blob no version references, is removed by
:meth:`ArtifactStore.collect_garbage` at start-up.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mlbackend_runtime.errors import NotFound

CHUNK = 1024 * 1024


class Upload:
    """A blob being written: hashes and counts what goes through ``write``."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".part")
        self.path = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.head = b""

    def write(self, chunk: bytes) -> None:
        if len(self.head) < 8:
            self.head += chunk[: 8 - len(self.head)]
        self._hash.update(chunk)
        self._file.write(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        """Flush the bytes to disk (before the rename makes them visible)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self._blobs / digest[:2] / digest

    def new_upload(self) -> Upload:
        return Upload(self._tmp)

    def commit(self, upload: Upload) -> str:
        """Move a finished upload to its content address; identical bytes stay stored once."""
        digest = upload.sha256
        target = self.path(digest)
        if target.exists():
            upload.discard()
            return digest
        target.parent.mkdir(exist_ok=True)
        os.replace(upload.path, target)
        _fsync_dir(target.parent)
        return digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).exists()

    def chunks(self, digest: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The blob's bytes, ``chunk_size`` at a time (never the whole file in memory)."""
        try:
            handle = self.path(digest).open("rb")
        except FileNotFoundError:
            raise NotFound(f"artifact blob {digest} is missing from the artifact store") from None
        with handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)

    def collect_garbage(self, referenced: set[str]) -> list[str]:
        """Remove temporary files and blobs outside ``referenced``; returns what went."""
        removed: list[str] = []
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
            removed.append(str(leftover))
        for blob in self._blobs.glob("*/*"):
            if blob.name not in referenced:
                blob.unlink(missing_ok=True)
                removed.append(str(blob))
        return removed


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
