"""Hostile input at the web process (web/security.py): a body over the limit is a 413 in the
error envelope, a name in the path that no id can be is a 400 naming it (and reaches nothing
behind the handlers), and every response carries the security headers."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest

from tests.web.api.helpers import start
from web.security import CONTENT_SECURITY_POLICY, MAX_BODY_BYTES, MAX_NAME_CHARS, name_problem

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx

    from services.nats import NatsBackplane

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXPECTED_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def one_line_error(response: httpx.Response | RawResponse, status: int) -> str:
    """The message of the API's error envelope, checked to be the one-line shape."""
    assert response.status_code == status, response.text
    body = json.loads(response.text)
    assert set(body) == {"error"}, body
    assert body["error"]["status"] == status
    message: str = body["error"]["message"]
    assert message and "\n" not in message and "Traceback" not in message, message
    return message


class RawResponse:
    def __init__(self, status_code: int, headers: dict[str, str], text: str) -> None:
        self.status_code, self.headers, self.text = status_code, headers, text


async def raw(base_url: str, method: str, target: str, body: bytes = b"") -> RawResponse:
    """One HTTP/1.1 request with the request target exactly as given (httpx normalises `..`
    away and encodes what a hostile client would not)."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(lines[0].split()[1]), headers, payload.decode("utf-8", "replace"))


# -- body size ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/runs", "/api/v1/runs/x/cancel", "/api/v1/runs/x/rerun"])
async def test_a_body_over_the_limit_is_413_in_the_envelope(
    client: httpx.AsyncClient, published: object, path: str
) -> None:
    big = b'{"reason": "' + b"x" * MAX_BODY_BYTES + b'"}'
    r = await client.post(path, content=big, headers={"content-type": "application/json"})
    assert "too large" in one_line_error(r, 413).lower()

    # Streamed without a Content-Length (chunked): counted as it comes, the same answer.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    r = await client.post(path, content=chunks(), headers={"content-type": "application/json"})
    one_line_error(r, 413)


async def test_a_body_under_the_limit_is_read(client: httpx.AsyncClient, published: object) -> None:
    padded = b'{"task": "a"' + b" " * (MAX_BODY_BYTES - 100) + b"}"
    r = await client.post(
        "/api/v1/runs", content=padded, headers={"content-type": "application/json"}
    )
    assert r.status_code == 201, r.text


# -- names in the path --------------------------------------------------------------------------

BAD_NAMES = [
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("%2e%2e", "'..'"),
    ("a%00b", "U+0000"),
    ("a%0Ab", "U+000A"),
    ("a%1Bb", "U+001B"),
    ("a%7Fb", "U+007F"),
    ("a%E2%80%AEb", "U+202E"),  # right-to-left override
    ("a%5Cb", "'\\'"),
    ("x" * (MAX_NAME_CHARS + 1), f"longer than {MAX_NAME_CHARS}"),
]

API_ROUTES = [
    ("GET", "/api/v1/runs/{}"),
    ("GET", "/api/v1/runs/{}/tasks"),
    ("GET", "/api/v1/runs/{}/events"),
    ("GET", "/api/v1/runs/{}/states?at_seq=1"),
    ("GET", "/api/v1/runs/{}/stream"),
    ("GET", "/api/v1/runs/ok/tasks/{}/attempts"),
    ("GET", "/api/v1/runs/ok/tasks/{}/log"),
    ("GET", "/api/v1/runs/{}/tasks/ok/log"),
    ("POST", "/api/v1/runs/{}/cancel"),
    ("POST", "/api/v1/runs/{}/rerun"),
]
PAGE_ROUTES = ["/runs/{}", "/runs/{}/timeline", "/tasks/{}", "/dags/{}"]


@pytest.mark.parametrize(("name", "words"), BAD_NAMES)
async def test_a_bad_name_in_an_api_path_is_400_naming_it(
    base_url: str, backplane: NatsBackplane, published: object, name: str, words: str
) -> None:
    for method, template in API_ROUTES:
        r = await raw(base_url, method, template.format(name), b"{}" if method == "POST" else b"")
        message = one_line_error(r, 400)
        field = json.loads(r.text)["error"]["field"]
        assert field in ("run_id", "task_id"), (template, r.text)
        assert message.startswith(f"{field}: ") and words in message, (template, message)
    # Nothing was written for any of them: the cancels and reruns never reached the log.
    assert await backplane.events.first_seq("..") is None


@pytest.mark.parametrize(("name", "words"), BAD_NAMES)
async def test_a_bad_name_in_a_page_path_is_a_400_page(
    base_url: str, published: object, name: str, words: str
) -> None:
    for template in PAGE_ROUTES:
        r = await raw(base_url, "GET", template.format(name))
        assert r.status_code == 400, (template, r.text)
        assert r.headers["content-type"].startswith("text/html")
        assert "Traceback" not in r.text
        assert words.replace("'", "&#39;") in r.text, (template, r.text)


async def test_a_slash_in_a_name_never_makes_a_name(client: httpx.AsyncClient) -> None:
    """An encoded `/` is a separator once decoded: another route, or none (404)."""
    for target in ("/api/v1/runs/a%2F..%2F..%2Fetc", "/api/v1/runs/a%2Fb/events"):
        r = await client.get(target)
        assert r.status_code in (400, 404), r.text
        one_line_error(r, r.status_code)


async def test_static_files_stay_in_their_folder(base_url: str) -> None:
    ok = await raw(base_url, "GET", "/static/css/app.css")
    assert ok.status_code == 200
    for target in (
        "/static/../app.py",
        "/static/css/../../app.py",
        "/static/%2e%2e/app.py",
        "/static/css/%2e%2e/%2e%2e/security.py",
        "/static/..%5Capp.py",
        "/static/css/app.css%00.py",
    ):
        r = await raw(base_url, "GET", target)
        assert r.status_code in (400, 404), (target, r.status_code, r.text[:200])
        assert "MAX_BODY_BYTES" not in r.text and "create_app" not in r.text


async def test_good_names_still_work(client: httpx.AsyncClient, published: object) -> None:
    run_id = await start(client, task="a", run_id="x" * 128)
    assert (await client.get(f"/api/v1/runs/{run_id}")).status_code == 200
    assert (await client.get(f"/api/v1/runs/{run_id}/tasks/a/attempts")).status_code == 200
    assert (await client.get(f"/runs/{run_id}")).status_code == 200
    r = await client.get("/api/v1/runs/no-such-run")
    assert "no run 'no-such-run'" in one_line_error(r, 404)
    assert (await client.get("/tasks/greet")).status_code == 200


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("my-run_01", True),
        ("task:set", True),
        ("Grüße", True),
        ("", False),
        ("a/b", False),
        ("..", False),
        ("a\x00", False),
        ("a\u200bb", False),  # zero-width space: format, invisible in a page
        ("x" * MAX_NAME_CHARS, True),
        ("x" * (MAX_NAME_CHARS + 1), False),
    ],
)
def test_name_problem(value: str, ok: bool) -> None:
    assert (name_problem(value) is None) == ok
    assert name_problem("css/app.css", path=True) is None
    assert name_problem("css/../x", path=True) is not None


# -- security headers ---------------------------------------------------------------------------


async def test_every_kind_of_response_has_the_security_headers(
    client: httpx.AsyncClient, published: object
) -> None:
    run_id = await start(client, task="a")
    responses = {
        "page": await client.get(f"/runs/{run_id}"),
        "dashboard": await client.get("/"),
        "api": await client.get("/api/v1/runs"),
        "api error": await client.get("/api/v1/runs/nope"),
        "page error": await client.get("/runs/nope"),
        "unknown route": await client.get("/nope/nope"),
        "bad body": await client.post(
            "/api/v1/runs", content=b"{", headers={"content-type": "application/json"}
        ),
        "static": await client.get("/static/js/run.js"),
        "schema": await client.get("/schema"),
        "healthz": await client.get("/healthz"),
    }
    for what, r in responses.items():
        for name, value in EXPECTED_HEADERS.items():
            assert r.headers.get(name) == value, (what, r.status_code, name, r.headers)
    assert responses["page error"].status_code == 404
    assert responses["api error"].status_code == 404
    assert responses["schema"].headers["content-type"].startswith("application/vnd.oai.openapi")


async def test_no_page_has_inline_script(client: httpx.AsyncClient, published: object) -> None:
    """What the CSP (script-src 'self') would refuse: inline code or event handler attributes.
    The run's JSON block is data (type="application/json"), not executed."""
    import re

    run_id = await start(client, task="d")
    for path in (
        "/",
        "/runs",
        f"/runs/{run_id}",
        f"/runs/{run_id}/timeline",
        "/tasks",
        "/tasks/d",
        "/dags",
        "/dags/diamond",
        "/agents",
        "/queues",
    ):
        html = (await client.get(path)).text
        for tag in re.finditer(r"<script([^>]*)>(.*?)</script>", html, re.S):
            attrs, code = tag.group(1), tag.group(2)
            assert "src=" in attrs or 'type="application/json"' in attrs, (path, tag.group(0)[:200])
            assert "src=" not in attrs or not code.strip(), path
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert "<style" not in html, path
