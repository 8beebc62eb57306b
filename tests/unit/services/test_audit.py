"""Audit first, then act (`services.audit.audited`): an action whose record cannot be
written is not done; one that fails after its record gets an "error" record; and a command
(`users add`) refuses with one line, changing nothing, when the audit log cannot be written."""

from __future__ import annotations

import argparse
import datetime as dt
import io
from typing import Any

import pytest

from core.audit import ACTIONS, AuditRecord, decode_record, encode_record, matches, record
from core.errors import Unavailable
from services.audit import audited, new_record
from services.cli import users
from tests.fakes.backplane import MemoryServer
from tests.fakes.kv import MemoryAuditLog

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Unwritable(MemoryAuditLog):
    async def write(self, r: AuditRecord) -> None:
        raise Unavailable("cannot write the audit log (CX_AUDIT): timed out")


async def test_the_record_is_stored_before_the_action_runs() -> None:
    audit = MemoryAuditLog()
    seen: list[list[AuditRecord]] = []

    async def act() -> str:
        seen.append(list(audit.records))
        return "done"

    r = new_record("users.add", actor="cli:ana", target="bob")
    assert await audited(audit, r, act) == "done"
    assert seen == [[r]] and audit.records == [r]


async def test_an_action_whose_record_cannot_be_written_is_not_done() -> None:
    done: list[bool] = []

    async def act() -> None:
        done.append(True)

    with pytest.raises(Unavailable, match="cannot write the audit log"):
        await audited(Unwritable(), new_record("tokens.revoke", actor="cli:ana"), act)
    assert done == []


async def test_an_action_that_fails_after_its_record_gets_an_error_record() -> None:
    audit = MemoryAuditLog()

    async def act() -> None:
        raise Unavailable("NATS did not acknowledge a publish\nsecond line")

    r = new_record("users.remove", actor="cli:ana", target="bob")
    with pytest.raises(Unavailable, match="NATS did not acknowledge"):
        await audited(audit, r, act)
    first, error = audit.records
    assert first == r
    assert (error.action, error.target, error.outcome) == ("users.remove", "bob", "error")
    assert error.detail == "NATS did not acknowledge a publish" and error.id != r.id


async def test_users_add_changes_nothing_when_the_audit_log_cannot_be_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = MemoryServer()
    server.audit = Unwritable()

    async def connect(args: Any, name: str) -> Any:
        return server.connect(name)

    monkeypatch.setattr(users, "connect", connect)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    args = argparse.Namespace(name="bob", role="admin", password_stdin=True)
    with pytest.raises(Unavailable, match="cannot write the audit log"):
        await users.add_user(args)
    assert await server.auth.user("bob") is None


def test_records_cut_what_was_typed_and_refuse_unknown_actions() -> None:
    r = record(id="x", at=T0, actor="a" * 1000, action="login", detail="one\ntwo")
    assert len(r.actor) == 200 and r.actor.endswith("…") and r.detail == "one two"
    assert decode_record(encode_record(r)) == r
    with pytest.raises(ValueError, match=r"unknown audit action 'user\.add'"):
        record(id="x", at=T0, actor="a", action="user.add")
    assert "login" in ACTIONS


def test_a_record_written_by_a_newer_version_still_reads() -> None:
    newer = b'{"id":"1","at":"2026-01-01T00:00:00Z","actor":"a","action":"sso.link","x":{}}'
    r = decode_record(newer)
    assert (r.action, r.target, r.outcome) == ("sso.link", "", "ok")


def test_matching() -> None:
    r = record(id="x", at=T0, actor="cli:ana", action="users.add")
    assert matches(r) and matches(r, action="users") and matches(r, action="users.add")
    assert not matches(r, action="user") and not matches(r, action="tokens")
    assert matches(r, actor="cli:ana") and not matches(r, actor="cli:an")
    assert matches(r, since=T0) and not matches(r, since=T0 + dt.timedelta(seconds=1))
