"""`cyclonetix users` and `cyclonetix tokens` against a real NATS, and `ui` once a login
exists."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from services.auth import new_token, parse_token
from services.nats import NatsBackplane
from tests.web.api.test_cli_ui import CLI, env


def cli(
    tmp_path: Path, nats_url: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--nats-url", nats_url],
        cwd=tmp_path, env=env(), input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["users", "tokens"])
def test_help(tmp_path: Path, command: str) -> None:
    for action in ("", *(("add", "passwd", "remove", "list") if command == "users" else ())):
        shown = subprocess.run(
            [*CLI, command, *([action] if action else []), "--help"],
            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0 and "usage:" in shown.stdout


async def test_users_and_tokens(tmp_path: Path, nats_url: str, backplane: NatsBackplane) -> None:
    added = cli(tmp_path, nats_url, "users", "add", "admin", "--role", "admin",
                "--password-stdin", stdin="s3cret\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    user = await backplane.auth.user("admin")
    assert user is not None and user.role == "admin" and "s3cret" not in user.password_hash
    again = cli(tmp_path, nats_url, "users", "add", "admin", "--role", "viewer",
                "--password-stdin", stdin="x\n")  # fmt: skip
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1
    bad = cli(tmp_path, nats_url, "users", "add", "a b", "--role", "admin", "--password-stdin",
              stdin="x\n")  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("cyclonetix: error: name 'a b'")
    empty = cli(tmp_path, nats_url, "users", "add", "eve", "--role", "admin", "--password-stdin")
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert cli(tmp_path, nats_url, "users", "passwd", "admin", "--password-stdin",
               stdin="new\n").returncode == 0  # fmt: skip
    listed = json.loads(cli(tmp_path, nats_url, "users", "list", "--json").stdout)
    assert [(u["name"], u["role"]) for u in listed] == [("admin", "admin")]
    assert "password_hash" not in listed[0]

    created = cli(tmp_path, nats_url, "tokens", "create", "ci", "--role", "operator")
    assert created.returncode == 0, created.stderr
    parsed = parse_token(created.stdout.strip())
    assert parsed is not None
    token_id, secret = parsed
    shown = cli(tmp_path, nats_url, "tokens", "list", "--json").stdout
    assert secret not in shown
    assert json.loads(shown) == [
        {
            "id": token_id,
            "name": "ci",
            "role": "operator",
            "created_at": json.loads(shown)[0]["created_at"],
            "revoked": False,
        }
    ]
    assert cli(tmp_path, nats_url, "tokens", "revoke", token_id).returncode == 0
    token = await backplane.auth.token(token_id)
    assert token is not None and token.revoked
    missing = cli(tmp_path, nats_url, "tokens", "revoke", "0123456789abcdef")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1

    assert cli(tmp_path, nats_url, "users", "remove", "admin").returncode == 0
    assert await backplane.auth.user("admin") is None
    gone = cli(tmp_path, nats_url, "users", "remove", "admin")
    assert gone.returncode == 2 and gone.stderr.strip() == "cyclonetix: error: no user 'admin'"


async def test_ui_listens_beyond_loopback_once_a_login_exists(
    tmp_path: Path, nats_url: str, backplane: NatsBackplane
) -> None:
    token, text = new_token("ci", "viewer")
    await backplane.auth.put_token(token)
    process = await asyncio.create_subprocess_exec(
        *CLI, "ui", "--host", "0.0.0.0", "--port", "0", "--nats-url", nats_url,
        "--log-level", "WARNING",
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("cyclonetix ui: http://0.0.0.0:"), line
        port = line.rsplit(":", 1)[1].strip()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/api/v1/runs")).status_code == 401
            auth = {"authorization": f"Bearer {text}"}
            assert (await client.get("/api/v1/runs", headers=auth)).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 20)
    assert code == 0, (await process.stderr.read()).decode() if process.stderr else ""
