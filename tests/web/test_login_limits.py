"""Failed logins limited per account and per client address (web/login_limits.py, POST /login
in web/auth.py), over the real app on a real NATS. Requests come from two loopback addresses
(127.0.0.1 and 127.0.0.2: the client binds its side of the connection)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from services.auth import User, created_now, hash_password
from services.settings import load_settings
from web.app import create_app, listening
from web.auth import Authenticator
from web.login_limits import LoginLimiter

if TYPE_CHECKING:
    from services.nats import NatsBackplane
    from web.context import UiContext

PASSWORD = "correct horse battery staple"
HERE, THERE = "127.0.0.1", "127.0.0.2"
TOO_MANY = re.compile(
    r"Too many failed logins (for this account|from this address); try again in (\d+) s\."
)


def client_from(base_url: str, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=base_url, transport=transport, timeout=10)


async def login(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    client.cookies.clear()
    return await client.post(
        "/login",
        data={"name": name, "password": password, "next": "/runs"},
        headers={"origin": str(client.base_url).rstrip("/")},
    )


def refusal(response: httpx.Response) -> tuple[str, int]:
    """(which limit, seconds) of a 429 whose page says so in one line, as Retry-After does."""
    assert response.status_code == 429, (response.status_code, response.text)
    found = TOO_MANY.search(response.text)
    assert found is not None, response.text
    assert int(response.headers["retry-after"]) == int(found[2])
    assert "cx_session" not in response.cookies
    return found[1], int(found[2])


@pytest.fixture
async def people(backplane: NatsBackplane) -> None:
    for user in (
        User("op", "operator", "", created_now()),
        User("viewer", "viewer", "", created_now()),
    ):
        await backplane.auth.put_user(
            User(user.name, user.role, hash_password(PASSWORD), created_now())
        )


async def test_the_sixth_attempt_is_refused_even_with_the_right_password(
    base_url: str, people: None, backplane: NatsBackplane
) -> None:
    async with client_from(base_url, HERE) as here, client_from(base_url, THERE) as there:
        for _ in range(5):
            assert (await login(here, "op", "wrong")).status_code == 401
        right = await login(here, "op", PASSWORD)
        by, seconds = refusal(right)
        assert by == "for this account" and 890 <= seconds <= 900
        # The same answer for a wrong password: the limit tells nothing about the password.
        wrong = await login(here, "op", "wrong")
        assert refusal(wrong)[0] == by and wrong.text == right.text
        # The account is limited from every address; another account from another address
        # still logs in.
        assert refusal(await login(there, "op", PASSWORD))[0] == "for this account"
        other = await login(there, "viewer", PASSWORD)
        assert other.status_code == 303 and "cx_session" in other.cookies
    # Each refusal is in the audit log, the limited ones saying why.
    tried = [(r.outcome, r.detail) for r in await backplane.audit.read(actor="op")]
    assert tried[:5] == [("refused", "wrong name or password")] * 5
    assert len(tried) == 8 and all(d.startswith("Too many failed logins") for _, d in tried[5:])


async def test_a_success_resets_the_accounts_count(base_url: str, people: None) -> None:
    async with client_from(base_url, HERE) as here:
        for _ in range(2):  # 4 failures, a success, 4 more: never 5 in a row
            for _ in range(4):
                assert (await login(here, "op", "wrong")).status_code == 401
            assert (await login(here, "op", PASSWORD)).status_code == 303


async def test_an_address_is_limited_across_accounts(base_url: str, people: None) -> None:
    async with client_from(base_url, HERE) as here, client_from(base_url, THERE) as there:
        for i in range(20):  # 20 names (most do not exist), 1 failure each
            assert (await login(here, f"guess{i}", "wrong")).status_code == 401
        by, _ = refusal(await login(here, "op", PASSWORD))
        assert by == "from this address"
        # The accounts themselves are not limited: from another address, op logs in.
        assert (await login(there, "op", PASSWORD)).status_code == 303


async def test_the_limits_come_from_the_settings(
    ui: UiContext, backplane: NatsBackplane, people: None, tmp_path: Path
) -> None:
    (tmp_path / "cyclonetix.yaml").write_text("ui:\n  login_max_failures_per_account: 2\n")
    settings = load_settings({}, tmp_path).ui
    assert settings.login_max_failures_per_account == 2
    ui.extras["auth"] = Authenticator(backplane.auth, settings=settings)
    async with listening(create_app(ui), port=0) as url, client_from(url, HERE) as here:
        for _ in range(2):
            assert (await login(here, "op", "wrong")).status_code == 401
        assert refusal(await login(here, "op", PASSWORD))[0] == "for this account"


def test_failures_leave_the_window() -> None:
    now = [1000.0]
    limiter = LoginLimiter(per_account=2, per_address=2, window=60, clock=lambda: now[0])
    limiter.failed("op", HERE)
    now[0] += 10
    limiter.failed("op", HERE)
    blocked = limiter.blocked("op", THERE)
    assert blocked is not None and (blocked.by, blocked.retry_after) == ("account", 50)
    now[0] += 50  # the first failure leaves the window: one left, below the limit
    assert limiter.blocked("op", THERE) is None
    limiter.failed("op", HERE)  # two in the window again, for op and from HERE
    blocked = limiter.blocked("other", HERE)
    assert blocked is not None and (blocked.by, blocked.retry_after) == ("address", 10)
    limiter.succeeded("op")  # clears the account, not the address
    assert limiter.blocked("op", THERE) is None
    assert limiter.blocked("op", HERE) is not None
