"""Every API route that reads a body, fuzzed (Hypothesis): random JSON values, the right fields
with wrong types, huge strings, deep nesting, any Unicode (NUL and control characters
included), bytes that are not JSON at all. Whatever comes in, the answer is a 2xx or a 4xx in
the one-line error envelope (web/errors.py), never a 5xx, never a hang.

The app is the real composition over a real NATS (tests/web/conftest.py), served by uvicorn on
this test's event loop; Hypothesis runs in a worker thread with a blocking client, so the loop
keeps serving while it waits. No orchestrator runs: a valid body schedules a run (an append to
the log), which costs a few milliseconds and is fine.
"""

from __future__ import annotations

import asyncio
import json
import string
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.web.api.helpers import start
from tests.web.conftest import PUBLISHED
from web.context import UiContext
from web.login_limits import LoginLimiter
from web.security import MAX_BODY_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

EXAMPLES = 400  # per route and kind of body: 3,600 requests in all, ~17 s in one process
REQUEST_TIMEOUT_S = 10.0  # a hang fails the example

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # the timeout above bounds each request
    database=None,  # the server differs per run: a stored example would not replay the same
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- what is sent -------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),  # any code point, NUL too
    st.sampled_from(["", "..", "../../etc/passwd", "a/b", "\x00", "\u202e", "a b", "-x", "=2E"]),
    st.builds(
        lambda c, n: c * n, st.sampled_from(["x", "é", "日", "🚀", "\x00"]), st.integers(0, 300_000)
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),  # past 64 bits
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(hostile_text, inner, max_size=5),
    max_leaves=20,
)
ids = st.one_of(
    st.sampled_from([*PUBLISHED.tasks, *PUBLISHED.dags, *PUBLISHED.contexts]), hostile_text
)


def fields(known: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """The body's own fields, each absent, right-ish or any JSON value; sometimes one more."""
    some = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in known.items()})
    return st.one_of(
        some,
        st.builds(lambda d, k, v: {**d, k: v}, some, hostile_text, json_values),
    )


def deep(depth: int, kind: str) -> bytes:
    return (
        ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)
    ).encode()


def encoded(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(deep, st.integers(1, 50_000), st.sampled_from(["list", "dict"])),
    st.sampled_from(
        [b"", b"null", b"{", b'{"task": "a",', b"NaN", b"1e999", b'"\xff"', b"\xef\xbb\xbf{}"]
    ),
    st.builds(lambda v: encoded(v)[:-1], json_values),  # cut short
)

schedule_bodies = fields(
    {
        "task": ids,
        "dag": ids,
        "context": ids,
        "parameters": st.dictionaries(
            st.one_of(st.text(string.ascii_uppercase + "._", min_size=1, max_size=8), hostile_text),
            scalars,
            max_size=4,
        ),
        "run_id": st.one_of(
            st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=20),
            hostile_text,
        ),
    }
)
cancel_bodies = fields({"reason": hostile_text})
rerun_bodies = fields(
    {
        "from_task": ids,
        "from_failure": st.booleans(),
        "run_id": st.text(string.ascii_letters, min_size=1, max_size=20),
    }
)

# -- what must come back ------------------------------------------------------------------------


def acceptable(r: httpx.Response, what: object) -> None:
    """A 2xx, or a 4xx in the one-line envelope; never a 5xx."""
    assert r.status_code < 500, (r.status_code, r.text[:500], what)
    if r.status_code < 300:
        return
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["status"] == r.status_code
    assert set(error) <= {"status", "message", "field"}, error
    message = error["message"]
    assert isinstance(message, str) and message, error
    assert "\n" not in message and "Traceback" not in message, error


def fuzz(base_url: str, path: str, bodies: st.SearchStrategy[Any], *, raw: bool) -> None:
    """Post every generated body to `path` (blocking: run it in a thread)."""
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:

        @FUZZ
        @given(body=bodies)
        def check(body: Any) -> None:
            content = body if raw else encoded(body)
            r = client.post(path, content=content, headers={"content-type": "application/json"})
            acceptable(r, content[:200])
            if len(content) > MAX_BODY_BYTES:
                assert r.status_code == 413, r.text

        check()


@pytest.fixture
async def a_run(client: httpx.AsyncClient, published: object) -> str:
    """A run to cancel and rerun (nothing runs it: it stays scheduled)."""
    return await start(client, task="d")


ROUTES = {
    "schedule": ("/api/v1/runs", schedule_bodies),
    "cancel": ("/api/v1/runs/{run}/cancel", cancel_bodies),
    "rerun": ("/api/v1/runs/{run}/rerun", rerun_bodies),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_json_bodies(base_url: str, a_run: str, route: str) -> None:
    path, bodies = ROUTES[route]
    await asyncio.to_thread(fuzz, base_url, path.format(run=a_run), bodies, raw=False)


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_any_json_value(base_url: str, a_run: str, route: str) -> None:
    path, _ = ROUTES[route]
    await asyncio.to_thread(fuzz, base_url, path.format(run=a_run), json_values, raw=False)


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_bytes_that_are_not_json(base_url: str, a_run: str, route: str) -> None:
    path, _ = ROUTES[route]
    await asyncio.to_thread(fuzz, base_url, path.format(run=a_run), raw_bodies, raw=True)


async def test_the_fuzzed_routes_are_every_route_with_a_body(app: object) -> None:
    """A new route that reads a body must join ROUTES (and be fuzzed)."""
    from litestar import Litestar
    from litestar.routes import HTTPRoute

    assert isinstance(app, Litestar)
    with_body = {
        route.path.replace(":str", "")
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for handler in route.route_handlers
        if "data" in handler.parsed_fn_signature.parameters
    }
    fuzzed = {p.format(run="{run_id}") for p, _ in ROUTES.values()}
    assert with_body == fuzzed | {"/login"}  # the login form: test_login_forms


login_forms = st.one_of(
    st.dictionaries(st.sampled_from(["name", "password", "next", "x"]), hostile_text, max_size=4),
    st.binary(max_size=300),
)


async def test_login_forms(base_url: str, ui: UiContext) -> None:
    """Any form (or bytes) posted to /login: the login page again or a redirect, never a 5xx
    (fewer examples: each checks an argon2 hash). The failed-login limits are lifted, so that
    every example reaches the password check (tests/web/test_login_limits.py: the limits)."""
    ui.extras["auth"].limiter = LoginLimiter(per_account=10**6, per_address=10**6)

    def run() -> None:
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
            # (each example: an argon2 check and an audit record; 150 took > 120 s loaded)
            @settings(FUZZ, max_examples=60)
            @given(form=login_forms)
            def check(form: dict[str, str] | bytes) -> None:
                if isinstance(form, bytes):
                    headers = {"content-type": "application/x-www-form-urlencoded"}
                    r = client.post("/login", content=form, headers=headers)
                else:
                    r = client.post("/login", data=form)
                assert r.status_code in (303, 400, 401, 403, 413, 422), (
                    r.status_code,
                    r.text[:300],
                )

            check()

    await asyncio.to_thread(run)
