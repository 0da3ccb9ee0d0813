"""Generate the Python wire code and mypy stubs for every proto under protos/.

Runs ``grpc_tools.protoc`` in-process with the python, grpc_python, mypy and
mypy_grpc outputs into ``OUT/mlbackend/...``, then adds the package markers
(``__init__.py`` in every generated package directory, ``py.typed`` at the
root). The previous ``OUT/mlbackend`` tree is removed first so a deleted proto
leaves nothing behind. Because each proto's path equals its package and its
import path (``protos/mlbackend/serving/v1/serving.proto`` ->
``mlbackend.serving.v1.serving_pb2``), protoc writes correct absolute imports
and no generated text is post-processed.

Usage: ``python scripts/gen_protos.py --out clients``
"""

from __future__ import annotations

import argparse
import importlib.resources
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
ROOT_PACKAGE = "mlbackend"


def find_protos(proto_root: Path) -> list[Path]:
    """Return every .proto file under ``proto_root``, relative to it, sorted."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def plugin_path(name: str) -> Path:
    """Locate a protoc plugin installed next to the running interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"protoc plugin {name} not found at {path}: install mypy-protobuf")
    return path


def run_protoc(proto_root: Path, out_dir: Path, protos: list[Path]) -> None:
    """Run protoc once over all ``protos`` with every output into ``out_dir``."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    out = str(out_dir)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={plugin_path('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_path('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *(p.as_posix() for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def add_package_markers(package_root: Path) -> None:
    """Write an empty ``__init__.py`` in every package dir and a ``py.typed``."""
    for directory in [package_root, *sorted(p for p in package_root.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").write_text("")
    (package_root / "py.typed").write_text("")


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Regenerate ``out_dir/mlbackend`` from ``proto_root`` from scratch."""
    protos = find_protos(proto_root)
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / ROOT_PACKAGE, ignore_errors=True)
    run_protoc(proto_root, out_dir, protos)
    add_package_markers(out_dir / ROOT_PACKAGE)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and generate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory that receives the mlbackend/ package tree (e.g. clients)",
    )
    args = parser.parse_args(argv)
    generate(args.out.resolve())


if __name__ == "__main__":
    main()
