"""Logging in through an OpenID Connect provider (web/oidc.py): the real app on a real NATS,
and a real provider process (tests/web/oidc_issuer.py) that approves its configured user at
once; the requests a browser would make are made with httpx, one at a time, so that each
answer is checked (tests/web/browser/test_login.py drives the same in Chromium)."""

from __future__ import annotations

import contextlib
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from services.auth import session_key
from services.settings import OidcSettings, UiSettings
from web.app import create_app, listening
from web.auth import Authenticator

if TYPE_CHECKING:
    from services.nats import NatsBackplane
    from web.context import UiContext

REPO = Path(__file__).resolve().parents[2]
CLIENT_ID, CLIENT_SECRET = "cyclonetix", "s3cret"
START_S = 20.0
ISSUER_ARGS = ("--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET)
ROLES: dict[str, Any] = {"cx-ops": "operator", "cx-admins": "admin", "cx-readers": "viewer"}


@contextlib.contextmanager
def issuer_process(name: str = "127.0.0.1") -> Iterator[str]:
    """tests/web/oidc_issuer.py running (`name`: the host in its URL); its issuer URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.web.oidc_issuer", *ISSUER_ARGS, "--name", name],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + START_S
        line = ""
        while not line.endswith("\n"):  # the first line says where it listens
            left = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(left, 0))
            assert ready and process.poll() is None, f"the issuer did not start ({line!r})"
            line += process.stdout.readline()
        assert line.startswith("listening "), line
        yield line.split()[1]
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with issuer_process() as url:
        yield url


@pytest.fixture
async def provider(issuer: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the provider's test controls, reset to alice in cx-ops, nothing tampered."""
    async with httpx.AsyncClient(base_url=issuer, timeout=10) as control:
        await configure(control)
        yield control


async def configure(control: httpx.AsyncClient, tamper: str | None = None, **claims: Any) -> None:
    claims = claims or {"preferred_username": "alice", "groups": ["cx-ops"]}
    r = await control.post("/test/config", json={"claims": claims, "tamper": tamper})
    assert r.status_code == 200


def oidc_settings(issuer: str, **changes: Any) -> OidcSettings:
    fields: dict[str, Any] = {
        "issuer": issuer,
        "name": "Test IdP",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "roles_claim": "groups",
        "roles": ROLES,
        **changes,
    }
    return OidcSettings(**fields)


@pytest.fixture
async def oidc_url(
    ui: UiContext, backplane: NatsBackplane, issuer: str, provider: httpx.AsyncClient
) -> AsyncIterator[str]:
    """The app with OIDC set up (and no user nor token in the store)."""
    settings = UiSettings(oidc=oidc_settings(issuer))
    ui.extras["auth"] = Authenticator(backplane.auth, settings=settings)
    async with listening(create_app(ui), port=0) as url:
        yield url


@pytest.fixture
async def browser(oidc_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """What a browser does, request by request (its cookies kept; no redirect followed)."""
    async with httpx.AsyncClient(base_url=oidc_url, timeout=10) as client:
        yield client


async def through_provider(browser: httpx.AsyncClient, next: str = "/runs") -> httpx.Response:
    """Click "Log in with Test IdP": to the provider and back; the callback's answer."""
    start = await browser.get("/login/oidc", params={"next": next})
    assert start.status_code == 303, start.text
    assert "cx_oidc" in browser.cookies
    at_provider = await browser.get(start.headers["location"])  # approves at once
    assert at_provider.status_code == 302, at_provider.text
    callback = at_provider.headers["location"]
    assert callback.startswith(str(browser.base_url).rstrip("/") + "/login/oidc/callback?")
    return await browser.get(callback)


def refused(response: httpx.Response, status: int, says: str) -> None:
    """A refusal: the login page with one line saying why, and no session."""
    assert response.status_code == status, response.text
    assert 'class="error"' in response.text and says in response.text, response.text
    assert "cx_session" not in response.cookies


async def test_a_login_through_the_provider_makes_a_session(
    browser: httpx.AsyncClient, backplane: NatsBackplane, provider: httpx.AsyncClient
) -> None:
    # Not open (OIDC counts as a login, though the store has no user): to the login page,
    # which offers the provider.
    first = await browser.get("/runs")
    assert first.status_code == 303 and first.headers["location"].startswith("/login")
    page = await browser.get(first.headers["location"])
    assert "Log in with Test IdP" in page.text and "/login/oidc?next=%2Fruns" in page.text

    done = await through_provider(browser)
    assert done.status_code == 200, done.text
    assert "Logged in as <strong>alice</strong> (operator)" in done.text
    assert 'http-equiv="refresh" content="0; url=/runs"' in done.text  # on to `next`
    set_cookie = done.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    cookie = done.cookies["cx_session"]
    session = await backplane.auth.session(session_key(cookie))
    assert session is not None and (session.user, session.role, session.via) == (
        "alice",
        "operator",
        "oidc",
    )
    assert (await provider.get("/test/seen")).json() == {"exchanges": 1, "pkce_ok": 1}
    logins = await backplane.audit.read(actor="alice", action="login")
    assert [(r.outcome, r.detail) for r in logins] == [("ok", "oidc")]  # audited

    runs = await browser.get("/runs")
    assert runs.status_code == 200 and "Logged in as <strong>alice</strong> (operator)" in runs.text
    origin = {"origin": str(browser.base_url).rstrip("/")}
    scheduled = await browser.post("/api/v1/runs", json={"task": "nope"}, headers=origin)
    assert scheduled.status_code not in (401, 403), scheduled.text  # an operator may schedule
    out = await browser.post("/logout", headers=origin)
    assert out.status_code == 303
    assert await backplane.auth.session(session_key(cookie)) is None


async def test_the_highest_mapped_role_counts(
    browser: httpx.AsyncClient, provider: httpx.AsyncClient
) -> None:
    await configure(provider, preferred_username="root", groups=["other", "cx-ops", "cx-admins"])
    done = await through_provider(browser)
    assert "Logged in as <strong>root</strong> (admin)" in done.text


async def test_email_when_there_is_no_preferred_username(
    browser: httpx.AsyncClient, provider: httpx.AsyncClient
) -> None:
    await configure(provider, email="bob@example.com", groups="cx-readers")
    done = await through_provider(browser)
    assert "Logged in as <strong>bob@example.com</strong> (viewer)" in done.text


async def test_an_unmapped_role_is_refused(
    browser: httpx.AsyncClient, provider: httpx.AsyncClient
) -> None:
    await configure(provider, preferred_username="eve", groups=["strangers"])
    refused(await through_provider(browser), 403, "The account eve has no role here")
    assert (await browser.get("/runs")).status_code == 303  # still not logged in


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        ("state", "This login is unknown or has expired (state)"),
        ("nonce", "it is not this login&#39;s (nonce)"),
        ("signature", "The ID token&#39;s signature does not match the provider&#39;s keys"),
        ("audience", "it is for another client (aud)"),
        ("expired", "The ID token has expired"),
        ("issuer", "it is from another issuer (iss)"),
    ],
)
async def test_a_bad_answer_from_the_provider_is_refused(
    browser: httpx.AsyncClient,
    provider: httpx.AsyncClient,
    backplane: NatsBackplane,
    tamper: str,
    says: str,
) -> None:
    await configure(provider, tamper=tamper)
    refused(await through_provider(browser), 401, says)
    assert (await browser.get("/runs")).status_code == 303  # still not logged in
    logins = await backplane.audit.read(action="login")
    assert logins and logins[-1].outcome == "refused" and logins[-1].detail.startswith("oidc: ")


async def test_a_callback_in_another_browser_is_refused(
    browser: httpx.AsyncClient, oidc_url: str
) -> None:
    start = await browser.get("/login/oidc", params={"next": "/runs"})
    at_provider = await browser.get(start.headers["location"])
    async with httpx.AsyncClient(timeout=10) as other:  # without this browser's cx_oidc
        answer = await other.get(at_provider.headers["location"])
    refused(answer, 401, "This login was started in another browser (state)")
    # And the state was used up: this browser cannot use it after.
    again = await browser.get(at_provider.headers["location"])
    refused(again, 401, "This login is unknown or has expired (state)")


async def test_without_oidc_its_routes_say_so(client: httpx.AsyncClient) -> None:
    for path in ("/login/oidc", "/login/oidc/callback?state=x&code=y"):
        refused(await client.get(path), 404, "not configured")
    assert "Log in with" not in (await client.get("/login")).text
