"""Where a local Cyclonetix runs: `cyclonetix dev` records it, every other command reads it.

`./.cyclonetix/runtime.json` holds `{"nats_url": ..., "ui_url": ..., "pid": ...}`, so commands run
from the same folder find the system without flags.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path(".cyclonetix")
RUNTIME_FILE = "runtime.json"


class NoNatsServer(Exception):
    """No NATS URL given and none recorded; the message says how to get one."""


def write_runtime_info(data_dir: Path, **info: Any) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / RUNTIME_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(path)  # atomic: readers never see half a file
    return path


def read_runtime_info(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, Any] | None:
    path = data_dir / RUNTIME_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    pid = info.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        return None  # left behind by a `cyclonetix dev` that is no longer running
    return info


def clear_runtime_info(data_dir: Path) -> None:
    (data_dir / RUNTIME_FILE).unlink(missing_ok=True)


def resolve_nats_url(explicit: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """--nats-url, else CYCLONETIX_NATS_URL, else what `cyclonetix dev` recorded here."""
    if explicit:
        return explicit
    if env := os.environ.get("CYCLONETIX_NATS_URL"):
        return env
    info = read_runtime_info(data_dir)
    if info and isinstance(info.get("nats_url"), str):
        return str(info["nats_url"])
    raise NoNatsServer(
        "no NATS server: pass --nats-url, set CYCLONETIX_NATS_URL, "
        "or run 'cyclonetix dev' in this folder"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
