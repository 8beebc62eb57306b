"""Who did what (issue 11, item 2) over a real app on a real NATS: `requested_by` on the events
written for a session user or a token (and shown by the run API and page), the audit records of
logins and logouts, `/audit` and `GET /api/v1/audit` (admins only), and a login that cannot be
recorded is refused."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from core.audit import AuditRecord
from core.errors import Unavailable
from core.events import RunCancelRequested, RunScheduled
from services.auth import ROLES, User, created_now, hash_password, new_token, session_key
from tests.rolekit import history

if TYPE_CHECKING:
    import datetime as dt

    import httpx

    from core.definitions import Definitions
    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PASSWORD = "correct horse battery staple"


async def people(backplane: NatsBackplane) -> dict[str, str]:
    """A user `<role>-user` and a token `<role>-token` of every role: the token texts."""
    texts: dict[str, str] = {}
    for role in ROLES:
        await backplane.auth.put_user(
            User(f"{role}-user", role, hash_password(PASSWORD), created_now())
        )
        token, texts[role] = new_token(f"{role}-token", role)
        await backplane.auth.put_token(token)
    return texts


def origin(client: httpx.AsyncClient) -> str:
    return str(client.base_url).rstrip("/")


async def login(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    client.cookies.clear()
    r = await client.post(
        "/login",
        data={"name": name, "password": password, "next": "/runs"},
        headers={"origin": origin(client)},
    )
    client.cookies.clear()  # (each request below says which cookie it sends)
    return r


async def session_headers(client: httpx.AsyncClient, name: str) -> dict[str, str]:
    r = await login(client, name, PASSWORD)
    assert r.status_code == 303, r.text
    return {"cookie": f"cx_session={r.cookies['cx_session']}", "origin": origin(client)}


def bearer(text: str) -> dict[str, str]:
    return {"authorization": f"Bearer {text}"}


# -- requested_by -----------------------------------------------------------------------------


async def test_events_written_for_a_session_user_or_a_token_say_who(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: Definitions
) -> None:
    texts = await people(backplane)
    ana = await session_headers(client, "operator-user")
    ci = bearer(texts["operator"])

    r = await client.post("/api/v1/runs", json={"task": "a", "run_id": "by-ana"}, headers=ana)
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/runs", json={"task": "a", "run_id": "by-ci"}, headers=ci)
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/runs/by-ci/cancel", json={}, headers=ana)
    assert r.status_code == 202, r.text
    r = await client.post("/api/v1/runs/by-ana/rerun", json={"run_id": "again"}, headers=ci)
    assert r.status_code == 201, r.text

    [ana_run] = await history(backplane, "by-ana")
    ci_run, cancel = await history(backplane, "by-ci")
    [rerun] = await history(backplane, "again")
    assert isinstance(ana_run, RunScheduled) and ana_run.requested_by == "operator-user"
    assert isinstance(ci_run, RunScheduled) and ci_run.requested_by == "token:operator-token"
    assert isinstance(cancel, RunCancelRequested)
    assert (cancel.by, cancel.requested_by) == ("api", "operator-user")
    # A rerun is asked for by whoever reruns, not by who asked for the earlier run.
    assert isinstance(rerun, RunScheduled)
    assert (rerun.rerun_of, rerun.requested_by) == ("by-ana", "token:operator-token")

    # The run API and the run page show it (and who asked for the cancel).
    detail = (await client.get("/api/v1/runs/by-ci", headers=ci)).json()["run"]
    assert (detail["requested_by"], detail["cancelled_by"]) == (
        "token:operator-token",
        "operator-user",
    )
    page = await client.get("/runs/by-ci", headers=ci)
    assert page.status_code == 200
    assert 'requested by <span id="requested-by">token:operator-token</span>' in page.text
    assert 'cancel asked by <span id="cancelled-by">operator-user</span>' in page.text
    page = await client.get("/runs/by-ana", headers=ci)
    assert 'requested by <span id="requested-by">operator-user</span>' in page.text


async def test_on_an_open_ui_nobody_is_named(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: Definitions
) -> None:
    r = await client.post("/api/v1/runs", json={"task": "a", "run_id": "open"})
    assert r.status_code == 201, r.text
    [event] = await history(backplane, "open")
    assert isinstance(event, RunScheduled) and event.requested_by is None
    assert "requested-by" not in (await client.get("/runs/open")).text


# -- the audit log of logins ------------------------------------------------------------------


async def audit_api(client: httpx.AsyncClient, token: str, **query: str) -> list[dict[str, str]]:
    r = await client.get("/api/v1/audit", params=query, headers=bearer(token))
    assert r.status_code == 200, r.text
    found: list[dict[str, str]] = r.json()
    return found


async def test_logins_refused_and_accepted_and_logouts_are_recorded_and_listed(
    client: httpx.AsyncClient, backplane: NatsBackplane
) -> None:
    texts = await people(backplane)
    wrong = await login(client, "viewer-user", "not the password")
    assert wrong.status_code == 401
    hostile = "<b>x</b>\x1b[31m"
    assert (await login(client, hostile, PASSWORD)).status_code == 401
    headers = await session_headers(client, "viewer-user")
    out = await client.post("/logout", headers=headers)
    assert out.status_code == 303

    records = await audit_api(client, texts["admin"])
    shown = [(r["action"], r["actor"], r["outcome"], r["address"]) for r in records]
    assert shown == [
        ("login", "viewer-user", "refused", "127.0.0.1"),
        ("login", hostile, "refused", "127.0.0.1"),
        ("login", "viewer-user", "ok", "127.0.0.1"),
        ("logout", "viewer-user", "ok", "127.0.0.1"),
    ]
    assert "not the password" not in json.dumps(records)
    assert PASSWORD not in json.dumps(records)
    # Filters: by actor, by action, since.
    mine = await audit_api(client, texts["admin"], actor="viewer-user", action="login")
    assert [r["outcome"] for r in mine] == ["refused", "ok"]
    assert await audit_api(client, texts["admin"], since="2999-01-01T00:00:00") == []
    assert [r["action"] for r in await audit_api(client, texts["admin"], limit="1")] == ["logout"]
    bad = await client.get(
        "/api/v1/audit", params={"action": "nope"}, headers=bearer(texts["admin"])
    )
    assert bad.status_code == 422 and "no audit action 'nope'" in bad.text

    # The page, for an admin: newest first, what was typed shown as text.
    admin = await session_headers(client, "admin-user")
    page = await client.get("/audit", headers=admin)
    assert page.status_code == 200
    assert page.text.count('<tr class="audit-refused">') == 2
    assert "&lt;b&gt;x&lt;/b&gt;" in page.text and "<b>x</b>" not in page.text
    # (newest first: the admin's own login on top)
    assert re.findall(r"<td>(log\w+)</td>", page.text) == ["login", "logout", *["login"] * 3]
    assert 'href="/audit"' in page.text  # (the nav links it for an admin)
    filtered = await client.get("/audit", params={"action": "logout"}, headers=admin)
    assert filtered.text.count("<tr class=") == 1
    said = await client.get("/audit", params={"since": "soon"}, headers=admin)
    assert said.status_code == 200 and "since: not a time: &#39;soon&#39;" in said.text


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_only_an_admin_sees_the_audit_log(
    client: httpx.AsyncClient, backplane: NatsBackplane, role: str
) -> None:
    texts = await people(backplane)
    session = await session_headers(client, f"{role}-user")
    for headers in (bearer(texts[role]), session):
        for path in ("/audit", "/api/v1/audit"):
            r = await client.get(path, headers=headers)
            assert r.status_code == 403, (path, r.status_code)
    runs = await client.get("/runs", headers=session)
    assert 'href="/audit"' not in runs.text  # (not offered where it would be refused)


class Unwritable:
    """An audit log that cannot be written (the stream gone, NATS unreachable)."""

    async def write(self, r: AuditRecord) -> None:
        raise Unavailable("cannot write the audit log (CX_AUDIT): no responders")

    async def read(
        self,
        *,
        since: dt.datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        return []


async def test_a_login_that_cannot_be_recorded_is_refused(
    client: httpx.AsyncClient, backplane: NatsBackplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    await people(backplane)
    monkeypatch.setattr(backplane, "audit", Unwritable())
    r = await login(client, "admin-user", PASSWORD)
    assert r.status_code == 503 and "cx_session" not in r.cookies
    assert "cannot write the audit log" in r.text
    # A refusal is still a refusal (401), recorded or not.
    assert (await login(client, "admin-user", "wrong")).status_code == 401


async def test_a_logout_ends_the_session_even_when_it_cannot_be_recorded(
    client: httpx.AsyncClient, backplane: NatsBackplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    await people(backplane)
    headers = await session_headers(client, "admin-user")
    cookie = headers["cookie"].split("=", 1)[1]
    monkeypatch.setattr(backplane, "audit", Unwritable())
    assert (await client.post("/logout", headers=headers)).status_code == 303
    assert await backplane.auth.session(session_key(cookie)) is None
