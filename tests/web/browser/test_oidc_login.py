"""Logging in through an OpenID Connect provider (web/oidc.py) in headless Chromium: the real
app on a real NATS with `ui.oidc` set, and the test provider process (tests/web/oidc_issuer.py)
that approves alice (group cx-ops: an operator) at once. A page redirects to /login, whose
"Log in with Test IdP" goes to the provider and back; the page asked for then opens with the
new session (its SameSite=Strict cookie sent although the login came back from another site)
and says who is logged in; its Log out button ends the session."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from services.settings import UiSettings
from tests.web.browser.driving import WAIT_MS, expect
from tests.web.test_oidc import issuer_process, oidc_settings
from web.app import create_app, listening
from web.auth import Authenticator

if TYPE_CHECKING:
    from playwright.async_api import Page

    from services.nats import NatsBackplane
    from web.context import UiContext

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    # http://localhost: another *site* than the UI's http://127.0.0.1, as a real provider is
    # (the same host would make the round trip same-site, SameSite=Strict cookies and all).
    with issuer_process("localhost") as url:
        yield url


@pytest.fixture
async def base_url(ui: UiContext, backplane: NatsBackplane, issuer: str) -> AsyncIterator[str]:
    """(Overrides tests/web/conftest.py's: the app with OIDC, which the `page` waits for.)"""
    ui.extras["auth"] = Authenticator(
        backplane.auth, settings=UiSettings(oidc=oidc_settings(issuer))
    )
    async with listening(create_app(ui), port=0) as url:
        yield url


async def test_log_in_with_the_provider_and_out(page: Page, base_url: str, issuer: str) -> None:
    ui = base_url
    async with httpx.AsyncClient(base_url=issuer, timeout=10) as control:
        # Approved on the provider's page: the way back starts at another site.
        config = {"claims": {"preferred_username": "alice", "groups": ["cx-ops"]}}
        r = await control.post("/test/config", json={**config, "interactive": True})
        assert r.status_code == 200
    await page.goto(f"{ui}/runs")
    await page.wait_for_url(re.compile(r"/login\?next=%2Fruns$"), timeout=WAIT_MS)
    await page.click("text=Log in with Test IdP")
    await page.wait_for_url(re.compile(r"^http://localhost:\d+/authorize\?"), timeout=WAIT_MS)
    await page.click("#approve")
    # To the provider, back to the callback, then on to /runs by the page's own navigation.
    await page.wait_for_url(f"{ui}/runs", timeout=WAIT_MS)
    await expect()(page.locator("h1")).to_contain_text("Runs")
    await expect()(page.locator("header .signed-in")).to_have_text("Logged in as alice (operator)")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["cx_session"]["httpOnly"] and cookies["cx_session"]["sameSite"] == "Strict"

    await page.click("header form.logout button")
    await page.wait_for_url(f"{ui}/login", timeout=WAIT_MS)
    await page.goto(f"{ui}/runs")
    await page.wait_for_url(re.compile(r"/login\?next="), timeout=WAIT_MS)
