"""core/ stays free of I/O: the lint rule rejects such imports, and none are there today."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[3] / "core"
BANNED = {"nats", "redis", "asyncpg", "litestar", "uvicorn", "socket", "subprocess", "asyncio"}


@pytest.mark.parametrize("module", ["nats", "redis", "asyncpg", "litestar"])
def test_the_lint_rule_rejects_io_imports_in_core(module: str) -> None:
    ruff = Path(sys.executable).parent / "ruff"
    done = subprocess.run(
        [str(ruff), "check", "--stdin-filename", str(CORE / "probe.py"), "-"],
        input=f"import {module}\n",
        capture_output=True,
        text=True,
        cwd=CORE.parent,
    )
    assert done.returncode == 1
    assert "TID251" in done.stdout and module in done.stdout


def test_no_core_module_imports_an_io_library() -> None:
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.relative_to(CORE)} imports {name}"
