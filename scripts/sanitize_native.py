"""Our C extensions under AddressSanitizer and UndefinedBehaviorSanitizer.

The two request parsers read bytes from the network and the tree walk reads arrays a
model artifact produced, so an out-of-bounds read there is a security bug, not a
crash. This builds every extension with ``-fsanitize=address,undefined`` in a copy of
the sources (the venv's own builds stay as they are), then, with the sanitizer
runtimes preloaded, runs the extensions' unit tests and a mutation fuzz of each entry
point: truncated, bit-flipped, spliced and re-tagged requests for the parsers, random
node records for the walk. Any report aborts the run. Bounded by count and time.

    .venv/bin/python scripts/sanitize_native.py [--seconds 20]    # make sanitize

Needs gcc (or clang) with the sanitizer runtimes; Linux only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("setup.py", "pyproject.toml", "README.md", "native", "services", "clients", "tests")
TESTS = (
    "tests/unit/test_oip_wire.py",
    "tests/unit/test_feature_wire.py",
    "tests/unit/test_serving_fastpath.py",
)
FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

# Runs inside the sanitized interpreter: argv[1] is the time budget per entry point.
FUZZ = r"""
import random, sys, time
import numpy as np
sys.path[:0] = ["tests", "tests/unit"]
import test_feature_wire, test_oip_wire
from mlbackend_features import _wire
from mlbackend_serving import _oipwire, _treewalk
from mutations import mangled

for module in (_wire, _oipwire, _treewalk):  # the sanitized builds, not the venv's
    assert "mlbackend-sanitize-" in module.__file__, module.__file__
seconds, most = float(sys.argv[1]), 2_000_000
rng = random.Random(20261207)

for name, parse, seeds in [
    ("ModelInfer parser", _oipwire.parse_infer_request,
     [m.SerializeToString() for m in test_oip_wire.USUAL]),
    ("online read parser", _wire.parse_online_request, list(test_feature_wire.USUAL)),
]:
    count = accepted = 0
    until = time.monotonic() + seconds
    while count < most and time.monotonic() < until:
        count += 1
        accepted += parse(mangled(rng, seeds, most_edits=6)) is not None
    print(f"{name}: {count} mangled requests, {accepted} parsed, no sanitizer report")

nodes_rng = np.random.default_rng(20261207)
count = refused = 0
until = time.monotonic() + seconds
while count < most and time.monotonic() < until:
    count += 1
    nodes, width, outputs = (int(v) for v in nodes_rng.integers(1, (12, 4, 3)))
    records = bytearray(nodes_rng.integers(0, 256, nodes * 24, dtype=np.uint8).tobytes())
    for i in range(nodes):  # mostly plausible children, some just out of range
        for offset in (8, 12, 16):
            child = int(nodes_rng.integers(-2, nodes + 2)).to_bytes(4, "little", signed=True)
            records[i * 24 + offset : i * 24 + offset + 4] = child
    roots = nodes_rng.integers(-1, nodes + 1, int(nodes_rng.integers(1, 4))).astype(np.intp)
    x = nodes_rng.standard_normal((int(nodes_rng.integers(0, 4)), width))
    x[nodes_rng.random(x.shape) < 0.2] = np.nan
    out = np.zeros((len(x), outputs))
    try:
        _treewalk.sum_leaves(x, width, roots, bytes(records),
                             nodes_rng.standard_normal((nodes, outputs)), np.zeros(outputs), out)
    except ValueError:
        refused += 1
print(f"tree walk: {count} random forests, {refused} refused, no sanitizer report")
"""


def runtime(compiler: str, name: str) -> str:
    path = subprocess.run(
        [compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(path):
        sys.exit(f"{compiler} has no {name}: install the sanitizer runtimes")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="fuzz time per entry point")
    args = parser.parse_args()
    compiler = os.environ.get("CC", "gcc")
    preload = " ".join(runtime(compiler, lib) for lib in ("libasan.so", "libubsan.so"))
    with tempfile.TemporaryDirectory(prefix="mlbackend-sanitize-") as tmp:
        work = Path(tmp)
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(
                    source, work / name, ignore=shutil.ignore_patterns("*.so", "__pycache__")
                )
            else:
                shutil.copy2(source, work / name)
        build_env = {**os.environ, "CC": compiler, "CFLAGS": f"{FLAGS} -O1 -g", "LDFLAGS": FLAGS}
        subprocess.run(
            [sys.executable, "setup.py", "build_ext", "--inplace"],
            cwd=work, env=build_env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        built = sorted(p.name.split(".")[0] for p in work.glob("services/*/_*.so"))
        if built != ["_oipwire", "_treewalk", "_wire"]:
            sys.exit(f"not every extension was built with the sanitizers: {built}")
        # No leak report: what the interpreter itself keeps at exit is not ours to judge.
        env = {
            **os.environ,
            "LD_PRELOAD": preload,
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
            "PYTHONPATH": f"{work / 'services'}:{work / 'clients'}",
            "CI": "true",  # the extensions' tests run, never skip
        }
        (work / "fuzz_native.py").write_text(FUZZ, encoding="utf-8")
        steps = {
            "the extensions' tests": ["-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
            "the fuzz": ["fuzz_native.py", str(args.seconds)],
        }
        for step, arguments in steps.items():
            if subprocess.run([sys.executable, *arguments], cwd=work, env=env).returncode:
                print(f"sanitizers: {step} failed (a sanitizer report is above)", file=sys.stderr)
                return 1
    print("sanitizers: clean")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
