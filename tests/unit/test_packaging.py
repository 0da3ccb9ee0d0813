"""What a user's site-packages gets: only names that carry the project's name, and a
client package that pulls in no server-side dependency."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_clients_import_no_server_side_dependency() -> None:
    code = (
        "import sys, mlbackend_clients, mlbackend_clients.suite, mlbackend_clients.inference\n"
        "heavy = {'numpy', 'sklearn', 'pandas', 'scipy', 'mlbackend_runtime',\n"
        "         'prometheus_client'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_only_project_named_packages_are_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    tops = {
        path.name
        for where in find["where"]
        for path in (ROOT / where).iterdir()
        if path.is_dir() and not path.name.startswith((".", "__"))
    }
    assert tops, "nothing to package"
    assert all(name == "mlbackend" or name.startswith("mlbackend_") for name in tops), tops
    assert set(find["include"]) == {"mlbackend", "mlbackend.*", "mlbackend_*"}
