"""Who may do what (web/auth.py), over a real app on a real NATS.

The matrix is generated from the app's route table: every (method, path) the app serves must
have a rule in RULES (a new route without one fails `test_every_route_has_a_rule`), and every
route is then requested as every kind of caller, each answer checked against its rule.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from litestar.routes import HTTPRoute

from services.auth import (
    ROLES,
    ApiToken,
    Role,
    Session,
    User,
    created_now,
    hash_password,
    new_token,
    role_allows,
    session_key,
)
from web.app import create_app, listening
from web.auth import Authenticator

if TYPE_CHECKING:
    from litestar import Litestar

    from core.definitions import Definitions
    from services.nats import NatsBackplane
    from web.context import UiContext

PUBLIC = "public"
PASSWORD = "correct horse battery staple"

# Every route the app serves and the role it needs (OPTIONS: public everywhere, added below).
RULES: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/runs"): "viewer",
    ("POST", "/api/v1/runs"): "operator",
    ("GET", "/api/v1/runs/counts"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}/tasks"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}/tasks/{task_id:str}/attempts"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}/events"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}/states"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}/tasks/{task_id:str}/log"): "viewer",
    ("POST", "/api/v1/runs/{run_id:str}/cancel"): "operator",
    ("POST", "/api/v1/runs/{run_id:str}/rerun"): "operator",
    ("GET", "/api/v1/definitions"): "viewer",
    ("GET", "/api/v1/agents"): "viewer",
    ("GET", "/api/v1/queues"): "viewer",
    ("GET", "/api/v1/runs/{run_id:str}/stream"): "viewer",
    ("GET", "/api/v1/stream"): "viewer",
    ("GET", "/"): "viewer",
    ("GET", "/runs"): "viewer",
    ("GET", "/runs/{run_id:str}"): "viewer",
    ("GET", "/runs/{run_id:str}/timeline"): "viewer",
    ("GET", "/tasks"): "viewer",
    ("GET", "/tasks/{task_id:str}"): "viewer",
    ("GET", "/dags"): "viewer",
    ("GET", "/dags/{dag_id:str}"): "viewer",
    ("GET", "/agents"): "viewer",
    ("GET", "/queues"): "viewer",
    ("GET", "/audit"): "admin",
    ("GET", "/api/v1/audit"): "admin",
    ("GET", "/static/{file_path:path}"): PUBLIC,
    ("HEAD", "/static/{file_path:path}"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): "viewer",
    ("GET", "/schema"): "viewer",
    ("GET", "/schema/openapi.json"): "viewer",
    ("GET", "/schema/{path:str}"): "viewer",
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    ("GET", "/login/oidc"): PUBLIC,  # (404 without ui.oidc: tests/web/test_oidc.py)
    ("GET", "/login/oidc/callback"): PUBLIC,
}

PARAMS = {
    "{run_id:str}": "no-such-run",
    "{task_id:str}": "a",
    "{dag_id:str}": "diamond",
    "{file_path:path}": "css/app.css",
    "{path:str}": "openapi.json",
}


def served(app: Litestar) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, HTTPRoute)
        for method in route.methods
    }


def rule(method: str, path: str) -> str:
    return PUBLIC if method == "OPTIONS" else RULES[(method, path)]


def test_every_route_has_a_rule(app: Litestar) -> None:
    routes = served(app)
    assert {key for key in routes if key[0] != "OPTIONS"} == set(RULES), (
        "a route without a rule (or a rule without a route): add it to RULES"
    )
    assert all(("OPTIONS", path) in routes for _, path in RULES)


class Caller:
    """One kind of caller: its headers, and what it should get."""

    def __init__(
        self, name: str, *, role: Role | None = None, bad: bool = False, **headers: str
    ) -> None:
        self.name = name
        self.role = role  # None: anonymous (no credentials, or a session that is no good)
        self.bad = bad  # a broken Authorization: 401 everywhere
        self.headers = headers

    def expect(self, method: str, path: str, status: int, location: str) -> str | None:
        """Why `status` is wrong for this caller on that route (None: it is right)."""
        need = rule(method, path)
        if status >= 500:
            return f"server error {status}"
        if self.bad:
            return None if status == 401 else f"{status}, not 401"
        if need == PUBLIC:
            return None if status not in (401, 403) else f"{status} on a public route"
        if self.role is None:
            page = method == "GET" and not path.startswith(("/api/", "/metrics", "/schema"))
            if page:
                ok = status == 303 and location.startswith("/login?next=")
                return None if ok else f"{status} {location!r}, not a redirect to /login"
            return None if status == 401 else f"{status}, not 401"
        if role_allows(self.role, need):  # type: ignore[arg-type]
            return None if status not in (401, 403) else f"{status} for a {self.role}"
        return None if status == 403 else f"{status}, not 403"


async def _login(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    client.cookies.clear()
    return await client.post(
        "/login",
        data={"name": name, "password": password, "next": "/runs"},
        headers={"origin": str(client.base_url).rstrip("/")},
    )


async def _people(backplane: NatsBackplane) -> dict[str, str]:
    """Users and tokens in the store; the token texts by role (and a revoked one)."""
    texts: dict[str, str] = {}
    for role in ROLES:
        user = User(f"{role}-user", role, hash_password(PASSWORD), created_now())
        await backplane.auth.put_user(user)
        token, text = new_token(f"{role}-token", role)
        await backplane.auth.put_token(token)
        texts[role] = text
    revoked, texts["revoked"] = new_token("old", "admin")
    await backplane.auth.put_token(ApiToken(**{**_fields(revoked), "revoked": True}))
    return texts


def _fields(token: ApiToken) -> dict[str, Any]:
    return {f: getattr(token, f) for f in token.__struct_fields__}


async def _request(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> tuple[int, str]:
    url = path
    for template, value in PARAMS.items():
        url = url.replace(template, value)
    kwargs: dict[str, Any] = {"headers": headers}
    if (method, path) == ("POST", "/login"):
        kwargs["data"] = {"name": "viewer-user", "password": PASSWORD}
    elif method == "POST":
        kwargs["json"] = {"task": "a"} if path == "/api/v1/runs" else {}
    client.cookies.clear()
    async with client.stream(method, url, **kwargs) as response:  # SSE: the status only
        return response.status_code, response.headers.get("location", "")


async def test_every_route_as_every_caller(
    app: Litestar, client: httpx.AsyncClient, backplane: NatsBackplane, published: Definitions
) -> None:
    texts = await _people(backplane)
    origin = str(client.base_url).rstrip("/")
    sessions: dict[Role, str] = {}
    for role in ROLES:
        logged_in = await _login(client, f"{role}-user", PASSWORD)
        assert logged_in.status_code == 303, logged_in.text
        sessions[role] = logged_in.cookies["cx_session"]
    await backplane.auth.put_session(
        session_key("expired"), Session("admin-user", "admin", time.time() - 1)
    )
    token_id = texts["admin"].split("_")[1]
    callers = [
        Caller("anonymous"),
        *(Caller(f"{r} token", role=r, authorization=f"Bearer {texts[r]}") for r in sessions),
        *(
            Caller(f"{r} session", role=r, cookie=f"cx_session={sessions[r]}", origin=origin)
            for r in sessions
        ),
        Caller("revoked token", bad=True, authorization=f"Bearer {texts['revoked']}"),
        Caller("malformed token", bad=True, authorization="Bearer not-a-token"),
        Caller("basic auth", bad=True, authorization="Basic YWRtaW46YWRtaW4="),
        Caller("wrong secret", bad=True, authorization=f"Bearer cx_{token_id}_{'A' * 43}"),
        Caller("forged session", cookie="cx_session=forged", origin=origin),
        Caller("expired session", cookie="cx_session=expired", origin=origin),
    ]
    wrong = []
    for method, path in sorted(served(app)):
        if path == "/logout":
            continue  # ends the session it is given: below
        for caller in callers:
            status, location = await _request(client, method, path, caller.headers)
            problem = caller.expect(method, path, status, location)
            if problem is not None:
                wrong.append(f"{caller.name}: {method} {path}: {problem}")
    assert wrong == []


async def test_cross_site_posts_with_a_session_are_refused(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: Definitions
) -> None:
    await _people(backplane)
    cookie = (await _login(client, "admin-user", PASSWORD)).cookies["cx_session"]
    for origin in ({}, {"origin": "https://evil.example"}, {"referer": "https://evil.example/x"}):
        client.cookies.clear()
        r = await client.post(
            "/api/v1/runs", json={"task": "a"}, headers={"cookie": f"cx_session={cookie}", **origin}
        )
        assert r.status_code == 403, (origin, r.text)


async def test_login_cookie_and_logout(client: httpx.AsyncClient, backplane: NatsBackplane) -> None:
    texts = await _people(backplane)
    wrong = await _login(client, "admin-user", "nope")
    assert wrong.status_code == 401 and "Wrong name or password" in wrong.text
    nobody = await _login(client, "nobody", PASSWORD)
    assert nobody.status_code == 401
    r = await _login(client, "admin-user", PASSWORD)
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    set_cookie = r.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    assert "max-age=43200" in set_cookie and "secure" not in set_cookie  # (loopback)
    cookie = r.cookies["cx_session"]
    headers = {"cookie": f"cx_session={cookie}"}
    client.cookies.clear()
    page = await client.get("/runs", headers=headers)
    assert page.status_code == 200
    # Every page's header: who is logged in, and a Log out button (a form POST to /logout).
    assert "Logged in as <strong>admin-user</strong> (admin)" in page.text
    assert '<form method="post" action="/logout" class="logout">' in page.text
    assert await backplane.auth.session(session_key(cookie)) is not None
    client.cookies.clear()
    token = await client.get("/runs", headers={"authorization": f"Bearer {texts['admin']}"})
    assert token.status_code == 200 and "Logged in as" not in token.text  # no session to end
    client.cookies.clear()
    out = await client.post(
        "/logout", headers={**headers, "origin": str(client.base_url).rstrip("/")}
    )
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert await backplane.auth.session(session_key(cookie)) is None  # ended server-side
    client.cookies.clear()
    again = await client.get("/runs", headers=headers)
    assert again.status_code == 303 and again.headers["location"].startswith("/login")


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil", "/\t/evil.example/"]
)
async def test_login_goes_back_to_this_site_only(
    client: httpx.AsyncClient, backplane: NatsBackplane, target: str
) -> None:
    await _people(backplane)
    r = await client.post(
        "/login", data={"name": "admin-user", "password": PASSWORD, "next": target}
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


async def test_without_users_the_ui_stays_open(
    client: httpx.AsyncClient, backplane: NatsBackplane, published: Definitions
) -> None:
    assert await backplane.auth.any_credentials() is False
    home = await client.get("/")
    assert home.status_code == 200
    assert "Logged in as" not in home.text and 'action="/logout"' not in home.text
    assert (await client.get("/api/v1/runs")).status_code == 200
    assert (await client.post("/api/v1/runs", json={"task": "a"})).status_code == 201
    # A token is never ignored, even on an open UI.
    bad = await client.get("/api/v1/runs", headers={"authorization": "Bearer cx_0_x"})
    assert bad.status_code == 401


async def test_served_beyond_loopback_it_is_never_open(
    ui: UiContext, backplane: NatsBackplane
) -> None:
    """`serve` on a non-loopback host: the last user removed does not open the UI."""
    ui.extras["auth"] = Authenticator(backplane.auth, may_open=False)
    async with listening(create_app(ui), port=0) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/api/v1/runs")).status_code == 401
        assert (await c.get("/runs")).status_code == 303
        assert (await c.get("/healthz")).status_code == 200
