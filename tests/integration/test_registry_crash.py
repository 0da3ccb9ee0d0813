"""Crash safety of the registry: a real server process killed with SIGKILL mid-upload."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2 as pb
from mlbackend_clients.registry import RegistryClient

MODEL = "models/fraud"
SPEC = pb.ModelVersion(artifact=pb.Artifact(format=common_pb2.ARTIFACT_FORMAT_ONNX))


class RegistryProcess:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        ready = self.data_dir.parent / f"ready-{time.monotonic_ns()}.json"
        mlbackend = Path(sys.executable).parent / "mlbackend"
        self.process = subprocess.Popen(
            [
                str(mlbackend),
                "serve",
                "registry",
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--data-dir",
                str(self.data_dir),
                "--ready-file",
                str(ready),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert self.process.poll() is None, "registry process exited during start-up"
            assert time.monotonic() < deadline, "registry did not become ready"
            time.sleep(0.05)
        self.address = json.loads(ready.read_text())["address"]

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@pytest.fixture
def registry_process(tmp_path: Path) -> Iterator[RegistryProcess]:
    server = RegistryProcess(tmp_path / "data")
    server.start()
    yield server
    server.stop()


def _artifact(seed: int, size: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32)


async def test_kill_9_mid_upload_leaves_no_half_version_and_watch_resumes(
    registry_process: RegistryProcess,
) -> None:
    artifacts = registry_process.data_dir / "artifacts"
    async with RegistryClient.connect(registry_process.address) as client:
        first = _artifact(1, 200_000)
        await client.upload_version(MODEL, first, SPEC, create_registered_model=True)
        snapshot = client.stub.Watch(pb.WatchRequest(parent=MODEL))
        async for event in snapshot:
            if event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT_COMPLETE:
                seen = event.revision
                break
        snapshot.cancel()
        await client.stub.SetAlias(pb.SetAliasRequest(parent=MODEL, alias="production", version=1))

        big = _artifact(2, 8 * 1024 * 1024)
        sent = asyncio.Event()

        async def stalled_upload() -> AsyncIterator[pb.CreateModelVersionRequest]:
            meta = pb.CreateModelVersionRequest.Metadata(
                parent=MODEL, model_version=SPEC, artifact_sha256=hashlib.sha256(big).hexdigest()
            )
            yield pb.CreateModelVersionRequest(metadata=meta)
            for start in range(0, 3 * 1024 * 1024, 1024 * 1024):
                yield pb.CreateModelVersionRequest(chunk=big[start : start + 1024 * 1024])
            sent.set()
            await asyncio.sleep(3600)

        upload = asyncio.ensure_future(client.stub.CreateModelVersion(stalled_upload()))
        await asyncio.wait_for(sent.wait(), 10)
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size for p in (artifacts / "tmp").iterdir()):
            assert time.monotonic() < deadline, "the server never started writing the upload"
            await asyncio.sleep(0.05)
        registry_process.kill()
        with pytest.raises(grpc.aio.AioRpcError):
            await upload

    registry_process.start()
    assert list((artifacts / "tmp").iterdir()) == []
    assert len(list((artifacts / "sha256").glob("*/*"))) == 1
    async with RegistryClient.connect(registry_process.address) as client:
        listed = await client.stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL))
        assert [v.version for v in listed.model_versions] == [1]
        _, data = await client.download_artifact_bytes(f"{MODEL}/versions/production")
        assert data == first
        resumed = client.stub.Watch(pb.WatchRequest(parent=MODEL, start_revision=seen))
        event = await asyncio.wait_for(anext(aiter(resumed)), 5)
        assert (event.revision, event.alias.alias, event.alias.version) == (
            seen + 1,
            "production",
            1,
        )
        resumed.cancel()
        # The next upload takes number 2: the killed one never allocated a number.
        second = await client.upload_version(MODEL, _artifact(3, 1000), SPEC)
        assert second.version == 2
