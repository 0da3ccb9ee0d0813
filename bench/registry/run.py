"""Registry artifact benchmark: upload and download MB/s and the server's peak memory.

Starts ``mlbackend serve registry`` as its own process on loopback, uploads an artifact
of each size through ``RegistryClient.upload_version`` (1 MiB chunks, sha256 declared),
downloads it back through ``download_artifact`` (digest verified) and reads the server's
peak RSS (``VmHWM``) after each size. The baseline, measured in the same run on the same
files, is a plain local file copy (``shutil.copyfile``): the disk's ceiling.

The artifacts are random bytes declared as ONNX, which the registry stores without
inspecting (a skops artifact would also be loaded once at upload to check its types,
which measures the loader, not the transport).

    .venv/bin/python bench/registry/run.py            # 20 MB and 200 MB
    .venv/bin/python bench/registry/run.py --sizes 20  # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlbackend.common.v1 import common_pb2
from mlbackend.registry.v1 import registry_pb2
from mlbackend_clients.registry import RegistryClient

MB = 1_000_000


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _write_random(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(left, 4 * MB))
            out.write(chunk)
            left -= len(chunk)


def _start(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = workdir / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "mlbackend_cli", "serve", "registry", "--port", "0",
         "--metrics-port", "0", "--data-dir", str(workdir / "data"), "--ready-file", str(ready),
         "--log-level", "WARNING"],
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("registry did not start")
        time.sleep(0.05)
    return process, json.loads(ready.read_text())["address"]


async def _measure(address: str, pid: int, files: list[Path]) -> list[dict[str, float]]:
    rows = []
    async with RegistryClient.connect(address) as client:
        for number, path in enumerate(files, start=1):
            size = path.stat().st_size
            started = time.perf_counter()
            await client.upload_version(
                "models/bench",
                path,
                registry_pb2.ModelVersion(
                    artifact=registry_pb2.Artifact(format=common_pb2.ARTIFACT_FORMAT_ONNX)
                ),
                create_registered_model=number == 1,
            )
            upload = time.perf_counter() - started
            target = path.with_suffix(".down")
            started = time.perf_counter()
            with target.open("wb") as out:
                await client.download_artifact(f"models/bench/versions/{number}", out)
            download = time.perf_counter() - started
            started = time.perf_counter()
            shutil.copyfile(path, path.with_suffix(".copy"))
            copy = time.perf_counter() - started
            rows.append(
                {
                    "mb": size / MB,
                    "upload_mb_s": size / MB / upload,
                    "download_mb_s": size / MB / download,
                    "copy_mb_s": size / MB / copy,
                    "server_peak_rss_mib": _peak_rss_mib(pid),
                }
            )
            for leftover in (target, path.with_suffix(".copy")):
                leftover.unlink()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200], help="MB each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlbackend-bench-registry-") as tmp:
        workdir = Path(tmp)
        files = []
        for size in args.sizes:
            path = workdir / f"artifact-{size}mb.bin"
            _write_random(path, size * MB)
            files.append(path)
        process, address = _start(workdir)
        try:
            started_rss = _peak_rss_mib(process.pid)
            rows = asyncio.run(_measure(address, process.pid, files))
        finally:
            process.terminate()
            process.wait(30)
    print(f"registry started at peak RSS {started_rss:.0f} MiB")
    print(f"{'size MB':>8} {'upload MB/s':>12} {'download MB/s':>14} {'file copy MB/s':>15} "
          f"{'up/copy':>8} {'down/copy':>10} {'server peak RSS MiB':>20}")  # fmt: skip
    for r in rows:
        print(
            f"{r['mb']:8.0f} {r['upload_mb_s']:12.1f} {r['download_mb_s']:14.1f} "
            f"{r['copy_mb_s']:15.1f} {r['upload_mb_s'] / r['copy_mb_s']:8.2f} "
            f"{r['download_mb_s'] / r['copy_mb_s']:10.2f} {r['server_peak_rss_mib']:20.0f}"
        )
    if len(rows) > 1:
        growth = rows[-1]["server_peak_rss_mib"] - rows[0]["server_peak_rss_mib"]
        ratio = rows[-1]["mb"] / rows[0]["mb"]
        print(f"peak RSS grew {growth:.0f} MiB while the artifact grew {ratio:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
