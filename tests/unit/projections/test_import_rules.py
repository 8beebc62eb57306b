"""projections/ depends on core only: the lint rule (projections/ruff.toml) rejects imports of
the layers above it and of NATS, and only the store adapters may import their client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROJECTIONS = ROOT / "projections"
NEVER = {"nats", "services", "web", "litestar"}
CLIENTS = {"redis": ("redis",), "asyncpg": ("postgres",)}  # client -> adapter module prefixes


def ruff_check(path: Path, source: str) -> subprocess.CompletedProcess[str]:
    ruff = Path(sys.executable).parent / "ruff"
    return subprocess.run(
        [str(ruff), "check", "--no-cache", "--stdin-filename", str(path), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "source",
    [
        "import nats\n",
        "from services.ports import Backplane\n",
        "import web.app\n",
        "import litestar\n",
        "import redis\n",
        "import asyncpg\n",
    ],
)
def test_the_lint_rule_rejects_upward_and_client_imports(source: str) -> None:
    done = ruff_check(PROJECTIONS / "views_probe.py", source)
    assert done.returncode == 1
    assert "TID251" in done.stdout


@pytest.mark.parametrize(("where", "source"), [("redis.py", "redis"), ("postgres.py", "asyncpg")])
def test_an_adapter_may_import_its_client(where: str, source: str) -> None:
    done = ruff_check(PROJECTIONS / where, f"import {source}\n\n__all__ = ['{source}']\n")
    assert "TID251" not in done.stdout, done.stdout


def test_no_projections_module_imports_what_it_must_not() -> None:
    for path in PROJECTIONS.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                where = path.relative_to(PROJECTIONS)
                assert top not in NEVER, f"{where} imports {name}"
                if top in CLIENTS:
                    assert str(where).startswith(CLIENTS[top]), f"{where} imports {name}"
