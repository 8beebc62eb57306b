"""Only services/nats/ talks to NATS: the lint rule rejects `nats` imports elsewhere, and none
are there today. (core/ has its own, stricter rule: tests/unit/core/test_purity.py.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
ADAPTER = ROOT / "services" / "nats"
SCANNED = ("core", "services", "projections", "web", "tests", "bench")


def ruff_check(path: Path, source: str) -> subprocess.CompletedProcess[str]:
    """ruff on `source` as if it were the file `path` (the config of that place applies; the
    tree is left untouched, since others may be linting it at the same time)."""
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
    ["import nats\n", "import nats.errors\n", "from nats.js.api import Header\n"],
)
@pytest.mark.parametrize("where", ["services/probe.py", "services/cli/probe.py", "tests/probe.py"])
def test_the_lint_rule_rejects_nats_outside_the_adapter(where: str, source: str) -> None:
    done = ruff_check(ROOT / where, source)
    assert done.returncode == 1
    assert "TID251" in done.stdout and "only services/nats/ may import nats" in done.stdout


def test_the_adapter_may_import_nats() -> None:
    done = ruff_check(ADAPTER / "probe.py", "import nats.errors\n\n__all__ = ['nats']\n")
    assert "TID251" not in done.stdout, done.stdout


def nats_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [name for name in names if name.split(".")[0] == "nats"]
    return found


def test_no_module_outside_the_adapter_imports_nats() -> None:
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if ADAPTER in path.parents:
                continue
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in nats_imports(path)]
    assert offenders == []


def test_the_scan_sees_the_adapter_imports() -> None:
    """The scan would notice an import: the adapter's own modules have plenty."""
    assert nats_imports(ADAPTER / "connection.py")
