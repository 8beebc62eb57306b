"""Logging in and out of the UI (web/auth.py) in headless Chromium, against the in-process
system (conftest.py's `live_system`) with an operator `op` in the auth store: a page redirects
to /login; the login form lands on the page asked for; a run scheduled from the DAG's form is
accepted; a page of another origin (same host, another port: the same *site*, so the browser
sends the SameSite=Strict cookie along) posting a form to the UI is refused and changes
nothing; every page's header says who is logged in, and its "Log out" button (a form POST to
/logout) ends the session; after that the API refuses and pages redirect to /login again.

Every wait is a condition with a deadline (Playwright's `expect` and `wait_for_*`, and
tests/waiting.py's `eventually`).
"""

from __future__ import annotations

import contextlib
import http.server
import re
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from services.auth import User, created_now, hash_password
from tests.waiting import eventually
from tests.web.browser.driving import WAIT_MS, expect

if TYPE_CHECKING:
    from playwright.async_api import Page

    from services.nats import NatsBackplane

pytestmark = pytest.mark.timeout(180)

PASSWORD = "correct horse battery staple"

# A same-origin request from the page, as its own scripts make them (the browser adds the
# cookie and the Origin header): [status, body text].
FETCH = """async ([method, path, body]) => {
  const init = {method, headers: {}, redirect: "manual"};
  if (body !== null) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  return [r.status, await r.text()];
}"""


@contextlib.contextmanager
def other_origin(ui_url: str, run_id: str) -> Iterator[str]:
    """A tiny HTTP server on another port of the same host (another origin, the same site),
    serving pages whose forms post themselves to the UI on load; its URL."""
    pages = {
        "/cancel.html": f"{ui_url}/api/v1/runs/{run_id}/cancel",
        "/logout.html": f"{ui_url}/logout",
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            action = pages.get(self.path)
            if action is None:
                self.send_error(404)
                return
            body = (
                "<!doctype html><html><body>"
                f'<form id="f" method="post" action="{action}" enctype="text/plain"></form>'
                "<script>document.getElementById('f').submit()</script>"
                "</body></html>"
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    host = ui_url.split("://", 1)[1].rsplit(":", 1)[0]
    server = http.server.ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def cross_site_post(page: Page, evil_url: str, path: str) -> int:
    """Open the other origin's page `path`; the status of the UI's answer to its form."""
    async with page.expect_response(
        lambda r: r.request.method == "POST", timeout=WAIT_MS
    ) as answer:
        await page.goto(f"{evil_url}{path}")
    response = await answer.value
    headers = await response.request.all_headers()
    assert headers.get("origin") == evil_url, headers  # the browser said where it came from
    return response.status


async def call(page: Page, method: str, path: str, body: Any = None) -> tuple[int, str]:
    status, text = await page.evaluate(FETCH, [method, path, body])
    return int(status), str(text)


async def test_log_in_schedule_log_out_and_cross_site_posts_refused(
    page: Page, live_system: str, backplane: NatsBackplane
) -> None:
    ui = live_system
    await backplane.auth.put_user(User("op", "operator", hash_password(PASSWORD), created_now()))

    # (1) Once a user exists, a page redirects to the login form (the store is cached a few
    # seconds: wait for it to say so).
    async def redirected() -> bool | None:
        await page.goto(f"{ui}/runs")
        return True if "/login" in page.url else None

    await eventually(redirected, what="/runs redirecting to /login", timeout=15)
    assert re.search(r"/login\?next=%2Fruns$", page.url), page.url

    # (2) A wrong password stays on the form; the right one lands on /runs.
    await page.fill("input[name=name]", "op")
    await page.fill("input[name=password]", "wrong")
    await page.click("button[type=submit]")
    await expect()(page.locator("p.error")).to_contain_text("Wrong name or password")
    await page.fill("input[name=name]", "op")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{ui}/runs", timeout=WAIT_MS)
    await expect()(page.locator("h1")).to_contain_text("Runs")
    await expect()(page.locator("header .signed-in")).to_have_text("Logged in as op (operator)")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["cx_session"]["httpOnly"] and cookies["cx_session"]["sameSite"] == "Strict"

    # (3) Schedule the diamond from its form: accepted, its run page opens and it succeeds.
    await page.goto(f"{ui}/dags/diamond")
    async with page.expect_response(
        lambda r: r.url.endswith("/api/v1/runs") and r.request.method == "POST"
    ) as scheduled:
        await page.click("#schedule-submit")
    assert (await scheduled.value).status == 201
    await page.wait_for_url(re.compile(r"/runs/[^/]+$"), timeout=WAIT_MS)
    diamond = page.url.rsplit("/", 1)[1]
    await expect()(page.locator("#run-status .badge")).to_have_text("succeeded", timeout=WAIT_MS)

    # A long run to try to cancel, scheduled from the page (its session, same origin).
    status, text = await call(page, "POST", "/api/v1/runs", {"task": "sleeper"})
    assert status == 201, text
    sleeper = re.search(r'"run_id":"([^"]+)"', text)
    assert sleeper is not None, text
    sleeper_id = sleeper.group(1)

    # (httpx here would be anonymous, and refused: read the status through the page)
    async def page_status() -> str | None:
        code, body = await call(page, "GET", f"/api/v1/runs/{sleeper_id}")
        found = re.search(r'"status":"([^"]+)"', body) if code == 200 else None
        return found.group(1) if found and found.group(1) == "running" else None

    assert await eventually(page_status, what="the sleeper running", timeout=30) == "running"

    # (6) While logged in, pages of another origin post forms to the UI: refused, and
    # nothing changes.
    with other_origin(ui, sleeper_id) as evil:
        assert await cross_site_post(page, evil, "/cancel.html") == 403
        assert await cross_site_post(page, evil, "/logout.html") == 403
    await page.goto(f"{ui}/runs/{sleeper_id}")
    await expect()(page.locator("#run-status .badge")).to_have_text("running")
    code, body = await call(page, "GET", f"/api/v1/runs/{sleeper_id}")
    assert code == 200 and '"status":"running"' in body, body  # still logged in, not cancelled

    # Cancel it properly (same origin), so that the agent has nothing left to do.
    code, body = await call(page, "POST", f"/api/v1/runs/{sleeper_id}/cancel", {})
    assert code == 202, body
    await expect()(page.locator("#run-status .badge")).to_have_text("cancelled", timeout=WAIT_MS)

    # (4) Log out with the header's button: its form POSTs /logout (same origin), back to /login.
    async with page.expect_response(
        lambda r: r.url.endswith("/logout") and r.request.method == "POST"
    ) as logged_out:
        await page.click("header form.logout button")
    assert (await logged_out.value).status == 303
    await page.wait_for_url(f"{ui}/login", timeout=WAIT_MS)
    assert "cx_session" not in {c["name"] for c in await page.context.cookies()}
    await expect()(page.locator("header .signed-in")).to_have_count(0)

    # (5) What comes next is refused: the API says 401, pages redirect to /login.
    code, body = await call(page, "POST", "/api/v1/runs", {"task": "sleeper"})
    assert code == 401, body
    await page.goto(f"{ui}/runs/{diamond}")
    await page.wait_for_url(re.compile(r"/login\?next="), timeout=WAIT_MS)
    await expect()(page.locator("form.login")).to_be_visible()
