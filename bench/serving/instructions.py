"""Instructions a server executes per single-row ModelInfer, counted by callgrind.

Throughput on this machine moves by 20-40 % within an hour, so a change worth a few per
cent cannot be seen in rps. The number of instructions a server process executes per
request hardly moves: at concurrency 1 two runs of the same code agree within 0.1 %.
This runs our serving (thread front) and the bare sync echo server of ``run.py``, one
at a time, under ``valgrind --tool=callgrind`` with instrumentation off until warm-up
is over, sends N requests one after another (concurrency 1: at higher concurrency the
interleaving of threads makes counts vary by a few per cent), and prints instructions
per request (user space only: the kernel's share is not counted) and their ratio to
the echo server's.

    .venv/bin/python bench/serving/instructions.py                 # hgb, 2,000 requests
    .venv/bin/python bench/serving/instructions.py --model rf --requests 500

Needs valgrind (``apt-get install valgrind``); a server starts in ~35 s under it and a
request takes ~5 ms, so a run takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/serving/run.py: models, requests, servers
from benchkit import server_env, server_process, wait_for_file

WARM_UP = 300
# Bounds of the measured loop besides its count: under callgrind a request takes ~5 ms.
MAX_SECONDS = 300.0


async def _send(address: str, requests: list[bytes], count: int, seconds: float) -> int:
    """``count`` requests one after another (or fewer, once ``seconds`` have passed)."""
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(run.INFER)
        deadline = time.monotonic() + seconds
        sent = 0
        while sent < count and time.monotonic() < deadline:
            await infer(requests[sent % len(requests)], timeout=30)
            sent += 1
        return sent


def _control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


def _instructions(out_file: Path) -> int:
    """The event total of callgrind's dump (``summary:`` line)."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"))
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {dumps[-1]}")


def count(
    name: str,
    command: list[str],
    workdir: Path,
    requests: list[bytes],
    n: int,
    models: tuple[str, ...] = (),
) -> float:
    """Instructions per request of the server ``command`` starts (a ``--ready-file`` one)."""
    ready = workdir / f"{name}.ready.json"
    out_file = workdir / f"{name}.callgrind"
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out_file}"]  # fmt: skip
    with server_process([*valgrind, *command, "--ready-file", str(ready)], server_env(),
                        workdir / f"{name}.log") as process:  # fmt: skip
        address = wait_for_file(ready, process)["address"]
        if models:
            run._wait_models_ready(address, models, process)
        asyncio.run(_send(address, requests, WARM_UP, MAX_SECONDS))
        _control("--instr=on", process.pid)
        _control("--zero", process.pid)
        sent = asyncio.run(_send(address, requests, n, MAX_SECONDS))
        _control("--dump", process.pid)
    return _instructions(out_file) / sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=run.MODELS, default="hgb")
    parser.add_argument("--requests", type=int, default=2_000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("needs valgrind: apt-get install valgrind")
    with tempfile.TemporaryDirectory(prefix="mlbackend-instr-") as tmp:
        workdir = Path(tmp)
        _, rows, _ = run._train(workdir)
        ours = [sys.executable, str(run.MLBACKEND), "serve", "serving", "--port", "0",
                "--metrics-port", "0", "--model-dir", str(workdir / "ours"),
                "--data-dir", str(workdir / "data"), "--log-level", "WARNING"]  # fmt: skip
        echo = [sys.executable, str(Path(run.__file__).resolve()), "--role", "echo-sync"]

        def requests(model: str) -> list[bytes]:
            return [bytes.fromhex(h) for h in run._requests(rows, model, "probabilities")]

        n = args.requests
        counts = {
            "echo-sync": count("echo-sync", echo, workdir, requests("echo"), n),
            "mlbackend": count("mlbackend", ours, workdir, requests(args.model), n, (args.model,)),
        }
    print(f"single-row ModelInfer, {args.model}, concurrency 1, {args.requests} requests")
    for name, per_request in counts.items():
        ratio = per_request / counts["echo-sync"]
        print(
            f"  {name:10s} {per_request:10,.0f} instructions per request  {ratio:5.2f}x echo-sync"
        )


if __name__ == "__main__":
    main()
