"""Serving's local artifact cache, so a restarted server answers while the registry is down.

Layout under the cache root::

    blobs/<sha256>   artifact bytes, content-addressed (written to tmp/, then renamed)
    index.json       the versions being served (metadata) and the aliases pointing at them

Every write is atomic (temporary file, fsync, rename), so a crash leaves the previous
index or the new one, never half of one. The artifact's digest is checked again when
the loader reads it. Methods block: call them off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mlbackend_serving.core.versions import VersionInfo

logger = logging.getLogger("mlbackend.serving.cache")

INDEX_FILE = "index.json"
PRUNE_MIN_AGE = 600.0
_FORMAT = 1


class CacheCorrupt(Exception):
    """A cached artifact does not hash to its name."""


@dataclass
class CachedState:
    """What was served when the index was last written."""

    revision: int = 0
    versions: list[VersionInfo] = field(default_factory=list)
    aliases: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class PendingArtifact:
    """An artifact being downloaded into the cache."""

    sha256: str
    target: Path
    path: Path
    file: BinaryIO

    def commit(self) -> None:
        handle = self.file
        handle.flush()
        handle.seek(0)
        digest = hashlib.sha256()
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
        if digest.hexdigest() != self.sha256:
            raise CacheCorrupt(f"the downloaded bytes hash to {digest.hexdigest()}")
        os.fsync(handle.fileno())
        handle.close()
        os.replace(self.path, self.target)

    def discard(self) -> None:
        """Drop the temporary file (nothing to do after a commit)."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"

    def blob_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self._blobs / sha256

    def has(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def begin(self, sha256: str) -> PendingArtifact:
        """A temporary file to write the artifact into; ``commit`` keeps it under its
        digest only if the bytes hash to ``sha256``."""
        target = self.blob_path(sha256)
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix=f"{sha256[:12]}-")
        return PendingArtifact(sha256, target, Path(name), os.fdopen(fd, "w+b"))

    def load_index(self) -> CachedState | None:
        path = self.root / INDEX_FILE
        try:
            data = json.loads(path.read_text())
            if data.get("format") != _FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            return CachedState(
                revision=int(data["revision"]),
                versions=[VersionInfo.from_json(v) for v in data["versions"]],
                aliases={
                    str(model): {str(a): int(v) for a, v in aliases.items()}
                    for model, aliases in data["aliases"].items()
                },
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the unreadable cache index %s: %s", path, exc)
            return None

    def save_index(self, state: CachedState) -> None:
        data: dict[str, Any] = {
            "format": _FORMAT,
            "revision": state.revision,
            "versions": [v.to_json() for v in state.versions],
            "aliases": state.aliases,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".index-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(name, self.root / INDEX_FILE)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def prune(self, keep: set[str], *, min_age: float = PRUNE_MIN_AGE) -> list[str]:
        """Delete cached artifacts whose digest is not in ``keep`` and that are older
        than ``min_age`` seconds (another server sharing the cache may be about to load
        a fresh one); returns the deleted."""
        removed: list[str] = []
        if not self._blobs.is_dir():
            return removed
        horizon = time.time() - min_age
        for path in self._blobs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.name in keep or path.stat().st_mtime > horizon:
                    continue
                path.unlink()
                removed.append(path.name)
        return removed
