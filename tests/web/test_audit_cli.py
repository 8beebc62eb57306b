"""Who did what, from the CLI, against a real NATS: `requested_by` of `schedule`, `runs cancel`
and `runs rerun` (`cli:<OS login>`), the audit records of `users` and `tokens`, and
`cyclonetix audit` listing them (filters, JSON, escaped text, one-line errors)."""

from __future__ import annotations

import json
import socket
import subprocess
from typing import TYPE_CHECKING

import pytest

from core.events import RunCancelRequested, RunScheduled
from services.audit import new_record
from services.auth import parse_token
from tests.rolekit import history
from tests.web.api.test_cli_ui import CLI, env
from tests.web.conftest import PUBLISHED

if TYPE_CHECKING:
    from pathlib import Path

    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LOGIN = "auditor"  # the OS login the commands run as (LOGNAME: getpass reads it first)


def cli(
    tmp_path: Path, nats_url: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args, "--nats-url", nats_url],
        cwd=tmp_path, env={**env(), "LOGNAME": LOGIN}, input=stdin, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_cli_commands_on_runs_say_who_asked(
    tmp_path: Path, nats_url: str, backplane: NatsBackplane
) -> None:
    await backplane.definitions.put(PUBLISHED)
    ok(cli(tmp_path, nats_url, "schedule", "task", "a", "--run-id", "from-cli"))
    ok(cli(tmp_path, nats_url, "runs", "cancel", "from-cli"))
    ok(cli(tmp_path, nats_url, "runs", "rerun", "from-cli", "--run-id", "again"))
    scheduled, cancel = await history(backplane, "from-cli")
    [rerun] = await history(backplane, "again")
    assert isinstance(scheduled, RunScheduled) and scheduled.requested_by == f"cli:{LOGIN}"
    assert isinstance(cancel, RunCancelRequested)
    assert (cancel.by, cancel.requested_by) == ("cli", f"cli:{LOGIN}")
    assert isinstance(rerun, RunScheduled) and rerun.requested_by == f"cli:{LOGIN}"


async def test_users_and_tokens_are_audited_and_listed(
    tmp_path: Path, nats_url: str, backplane: NatsBackplane
) -> None:
    ok(cli(tmp_path, nats_url, "users", "add", "ana", "--role", "operator", "--password-stdin",
           stdin="s3cret\n"))  # fmt: skip
    ok(cli(tmp_path, nats_url, "users", "passwd", "ana", "--password-stdin", stdin="n3w\n"))
    created = ok(cli(tmp_path, nats_url, "tokens", "create", "ci", "--role", "admin"))
    parsed = parse_token(created.strip())
    assert parsed is not None
    token_id, secret = parsed
    ok(cli(tmp_path, nats_url, "tokens", "revoke", token_id))
    ok(cli(tmp_path, nats_url, "users", "remove", "ana"))
    missing = cli(tmp_path, nats_url, "users", "remove", "nobody")  # changes nothing: no record
    assert missing.returncode == 2

    listed = ok(cli(tmp_path, nats_url, "audit", "--json"))
    records = [json.loads(line) for line in listed.splitlines()]
    assert [(r["action"], r["target"], r["detail"]) for r in records] == [
        ("users.add", "ana", "role operator"),
        ("users.passwd", "ana", ""),
        ("tokens.create", f"{token_id} (ci)", "role admin"),
        ("tokens.revoke", f"{token_id} (ci)", ""),
        ("users.remove", "ana", "role operator"),
    ]
    assert {(r["actor"], r["outcome"], r["address"]) for r in records} == {
        (f"cli:{LOGIN}", "ok", socket.gethostname())
    }
    assert "s3cret" not in listed and "n3w" not in listed and secret not in listed

    def actions(*options: str) -> list[str]:
        out = ok(cli(tmp_path, nats_url, "audit", "--json", *options))
        return [json.loads(line)["action"] for line in out.splitlines()]

    # (Each filter's logic: tests/unit/services/test_audit.py; here, that the options reach it.)
    assert actions("--action", "tokens") == ["tokens.create", "tokens.revoke"]
    assert actions("--actor", f"cli:{LOGIN}", "--limit", "2", "--since", "1h") == [
        "tokens.revoke",
        "users.remove",
    ]
    assert ok(cli(tmp_path, nats_url, "audit", "--since", "2999-01-01T00:00")) == (
        "no audit records match\n"
    )

    # The table: a header, a line per record, nothing typed reaches the terminal raw.
    await backplane.audit.write(
        new_record("login", actor="evil\x1b[2J\u202e", outcome="refused", address="10.0.0.9")
    )
    table = ok(cli(tmp_path, nats_url, "audit", "--action", "login")).splitlines()
    assert table[0].split() == ["TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "ADDRESS", "DETAIL"]
    assert len(table) == 2 and "\x1b" not in table[1] and "\u202e" not in table[1]
    assert "evil\\x1b[2J\\u202e" in table[1] and "refused" in table[1] and "10.0.0.9" in table[1]

    bad = cli(tmp_path, nats_url, "audit", "--action", "nope")
    assert bad.returncode == 2
    assert bad.stderr.startswith("cyclonetix: error: action: no audit action 'nope'")
    assert len(bad.stderr.strip().splitlines()) == 1
    when = cli(tmp_path, nats_url, "audit", "--since", "yesterday")
    assert when.returncode == 2 and len(when.stderr.strip().splitlines()) == 1


def test_help(tmp_path: Path) -> None:
    shown = subprocess.run(
        [*CLI, "audit", "--help"], cwd=tmp_path, env=env(), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0
    for option in ("--since", "--actor", "--action", "--limit", "--json"):
        assert option in shown.stdout
