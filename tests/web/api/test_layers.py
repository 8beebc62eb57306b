"""Imports flow one way, web -> services -> projections -> core (DESIGN §7): nothing outside
web/ imports it, except the command that serves it (`cyclonetix ui`); web/ never imports nats
(the lint rule) and talks to NATS only through the ports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVES_THE_WEB = {ROOT / "services" / "cli" / "ui.py"}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_ui_command_imports_the_web_package() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in ("core", "projections", "services")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path not in SERVES_THE_WEB
        for name in sorted(imported(path))
        if name == "web" or name.startswith("web.")
    ]
    assert offenders == []


def test_the_web_package_reaches_nats_only_through_the_ports() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "web").rglob("*.py"))
        for name in sorted(imported(path))
        if name == "nats" or name.startswith(("nats.", "services.nats."))
        if not (path.name == "app.py" and name == "services.nats")  # connect(), in serve()
    ]
    assert offenders == []
