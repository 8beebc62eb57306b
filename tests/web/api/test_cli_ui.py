"""`cyclonetix ui` as a process: it serves over its own memory store (filled by its own
projector), and stops cleanly on SIGTERM; bad input is one line."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.nats import NatsBackplane
from tests.e2e.conftest import child_env
from tests.web.conftest import PUBLISHED

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

CLI = [sys.executable, "-m", "services.cli"]
ROOT = Path(__file__).resolve().parents[3]


def env() -> dict[str, str]:
    return child_env(PYTHONPATH=str(ROOT))


async def test_serves_until_sigterm(
    backplane: NatsBackplane, nats_url: str, tmp_path: Path
) -> None:
    await backplane.definitions.put(PUBLISHED)
    process = await asyncio.create_subprocess_exec(
        *CLI, "ui", "--port", "0", "--nats-url", nats_url, "--log-level", "WARNING",
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("cyclonetix ui: http://127.0.0.1:"), line
        url = line.split(": ", 1)[1].strip()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/healthz")).status_code == 200
            r = await client.post("/api/v1/runs", json={"task": "a"})
            assert r.status_code == 201, r.text
            assert r.json()["visible"] is True  # its own projector applied it
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0, (await process.stderr.read()).decode() if process.stderr else ""


def test_help_and_a_bad_read_model(tmp_path: Path) -> None:
    shown = subprocess.run(
        [*CLI, "ui", "--help"], cwd=tmp_path, env=env(), capture_output=True, text=True
    )
    assert shown.returncode == 0
    assert "--read-model URL" in shown.stdout
    bad = subprocess.run(
        [*CLI, "ui", "--read-model", "ftp://x"], cwd=tmp_path, env=env(), capture_output=True,
        text=True,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "cyclonetix: error: not a read-model URL: ftp://x (use memory://, "
        "redis://host:port/db?prefix=P or postgresql://user@host:port/db)"
    ]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com", ""])
def test_no_login_means_no_address_but_loopback(tmp_path: Path, host: str) -> None:
    refused = subprocess.run(
        [*CLI, "ui", "--host", host, "--port", "0", "--nats-url", "nats://127.0.0.1:1"],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert f"--host {host!r} is not a loopback address" in line and "no login" in line


async def test_a_port_in_use_is_one_line(nats_url: str, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = await asyncio.to_thread(
            subprocess.run,
            [*CLI, "ui", "--port", str(port), "--nats-url", nats_url, "--log-level", "ERROR"],
            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"cyclonetix: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


async def test_oidc_counts_as_a_login_for_the_host(nats_url: str, tmp_path: Path) -> None:
    """With `ui.oidc` set (and no user nor token), `--host 0.0.0.0` is allowed, and the UI is
    not open: the API says 401 and the login page offers the provider."""
    (tmp_path / "cyclonetix.yaml").write_text(
        "ui:\n  oidc:\n    issuer: https://login.example.com\n    name: Acme SSO\n"
        "    client_id: cyclonetix\n    default_role: viewer\n"
    )
    process = await asyncio.create_subprocess_exec(
        *CLI, "ui", "--host", "0.0.0.0", "--port", "0", "--nats-url", nats_url,
        "--log-level", "WARNING",
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("cyclonetix ui: http://0.0.0.0:"), line
        port = line.strip().rsplit(":", 1)[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/api/v1/runs")).status_code == 401
            assert "Log in with Acme SSO" in (await client.get("/login")).text
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0, (await process.stderr.read()).decode() if process.stderr else ""
