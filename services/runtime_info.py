"""Where a local Cyclonetix runs: `cyclonetix dev` records it, every other command reads it.

`./.cyclonetix/runtime.json` holds `{"nats_url", "ui_url", "pid", "read_model"}`, so commands run
from the same folder find the system without flags (`read_model` is `nats+memory://` for dev's
in-memory store: services/read_model_client.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.errors import Invalid
from services.settings import Settings, load_settings

DEFAULT_DATA_DIR = Path(Settings().data_dir)  # the default of the data_dir setting
RUNTIME_FILE = "runtime.json"


class NoNatsServer(Invalid):
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


def resolve_nats_url(
    explicit: str | None, data_dir: Path | None = None, settings: Settings | None = None
) -> str:
    """--nats-url, else the nats.url setting (CYCLONETIX_NATS_URL, cyclonetix.yaml), else what
    `cyclonetix dev` recorded in the data folder (`data_dir`, else the data_dir setting).

    `settings` defaults to this process's (load_settings); SettingsError if they are bad.
    """
    if explicit:
        return explicit
    if settings is None:
        settings = load_settings()
    if settings.nats.url:
        return settings.nats.url
    info = read_runtime_info(settings.data_path if data_dir is None else data_dir)
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
