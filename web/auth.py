"""Who may do what in the web process (installed by `web.app.create_app`).

Every route needs a role: its handler's `opt={"auth": ...}` says which ("public", "viewer",
"operator", "admin"); without one, a GET (or HEAD) needs a viewer, any other method an admin,
and OPTIONS is public. POST runs, cancel and rerun say "operator"; /healthz, /static, /login and
/logout say "public".

`authenticate`, a guard on every route, finds who asks:

- `Authorization: Bearer cx_<id>_<secret>`: an API token from the store. A header that is not
  such a token, an unknown or revoked token, a wrong secret: 401 on every route, public ones
  and an open UI included (never taken as anonymous).
- else the `cx_session` cookie of a login (`/login`): a session kept server-side in the
  `cx_sessions` KV bucket (under the SHA-256 of the cookie, expiring after 12 h), whose user
  still exists; its role is the user's current one. A POST, PUT, PATCH or DELETE with a
  session must carry an Origin or Referer of this host (else 403): with the cookie's
  SameSite=Strict, a page of another site cannot act with it.
- else anonymous: allowed everything while the store holds no user and no token (the UI as
  it was, which `cyclonetix ui` serves on loopback only); once one exists, 401 on the API and a
  redirect to /login on pages.

A role below the route's is 403. What the store says is cached `CACHE_S` seconds per process:
a revoked token, a removed user or the first user created takes effect within that.

POST /login refuses (429, `Retry-After`) an account or a client address with too many recent
failures before looking at the password (web/login_limits.py; settings `ui.login_*`). With
`ui.oidc` set, /login also offers the identity provider (web/oidc.py: /login/oidc, public),
whose sessions are the same; the UI is then never open. Pages say who is logged in (a
session's user) with a Log out button: the guard tells the templates (`SIGNED_IN`).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import Body, FromQuery
from litestar.response import Redirect

from services.addresses import is_loopback
from services.auth import (
    SESSION_TTL,
    Role,
    check_role,
    new_session,
    parse_token,
    role_allows,
    session_key,
    token_matches,
    valid_name,
    verify_password,
)
from services.ports import AuthStore
from services.settings import UiSettings
from web.audit import login_recorded, logout_recorded
from web.login_limits import LoginLimiter
from web.pages.templating import SIGNED_IN, render

__all__ = [
    "CACHE_S",
    "OPERATOR",
    "PUBLIC",
    "SESSION_COOKIE",
    "Authenticator",
    "Identity",
    "LoginRequired",
    "authenticate",
    "login_router",
    "required_role",
    "to_login",
]

CACHE_S: Final = 5.0
SESSION_COOKIE: Final = "cx_session"
PUBLIC: Final = {"auth": "public"}
OPERATOR: Final = {"auth": "operator"}
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
Need = Role | Literal["public"]


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: Role
    via: Literal["token", "session"]


class LoginRequired(Exception):
    """An anonymous request for a page once logins exist: answered with a redirect to /login."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


def required_role(method: str, handler: BaseRouteHandler) -> Need:
    """The role a request with `method` to `handler` needs (see the module's docstring)."""
    said = handler.opt.get("auth")
    if said is not None:
        return "public" if said == "public" else check_role(str(said))
    if method == "OPTIONS":
        return "public"
    return "viewer" if method in _SAFE_METHODS else "admin"


class _Cache:
    def __init__(self) -> None:
        self.values: dict[str, tuple[float, Any]] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        hit = self.values.get(key)
        if hit is None or time.monotonic() - hit[0] > CACHE_S:
            return False, None
        return True, hit[1]

    def put(self, key: str, value: Any) -> None:
        if len(self.values) > 10_000:  # a flood of forged ids or cookies: start afresh
            self.values.clear()
        self.values[key] = (time.monotonic(), value)


class Authenticator:
    """The store, read through a short cache (one per app)."""

    def __init__(
        self, store: AuthStore, *, may_open: bool = True, settings: UiSettings | None = None
    ) -> None:
        self.store = store
        # False (served beyond loopback): never open, even once the last user and token are
        # removed; anonymous then gets 401 / the login page.
        self.may_open = may_open
        self.settings = settings if settings is not None else UiSettings()
        # Failed logins (web/login_limits.py): counted in this process.
        self.limiter = LoginLimiter(
            per_account=self.settings.login_max_failures_per_account,
            per_address=self.settings.login_max_failures_per_address,
            window=self.settings.login_failure_window,
        )
        self._cache = _Cache()

    async def _cached(self, key: str, fetch: Any) -> Any:
        hit, value = self._cache.get(key)
        if not hit:
            value = await fetch
            self._cache.put(key, value)
        else:
            fetch.close()  # the coroutine not awaited
        return value

    def forget(self, key: str) -> None:
        self._cache.values.pop(key, None)

    async def is_open(self) -> bool:
        """No user, no token and no OIDC provider yet: anonymous may do everything."""
        if not self.may_open or self.settings.oidc.issuer is not None:
            return False
        return not await self._cached("open", self.store.any_credentials())

    async def from_bearer(self, header: str) -> Identity:
        scheme, _, text = header.partition(" ")
        parsed = parse_token(text.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            raise NotAuthorizedException("the Authorization header is not 'Bearer cx_<id>_<...>'")
        token_id, secret = parsed
        token = await self._cached(f"token:{token_id}", self.store.token(token_id))
        if token is None or token.revoked or not token_matches(token, secret):
            raise NotAuthorizedException("unknown or revoked token")
        return Identity(token.name, token.role, "token")

    async def from_session(self, cookie: str) -> Identity | None:
        key = session_key(cookie)
        session = await self._cached(f"session:{key}", self.store.session(key))
        if session is None or session.expires_at <= time.time():
            return None
        if session.via == "oidc":  # the provider's user: the role it was given then
            return Identity(session.user, session.role, "session")
        user = await self._cached(f"user:{session.user}", self.store.user(session.user))
        if user is None:
            return None
        return Identity(user.name, user.role, "session")


def _authenticator(connection: ASGIConnection[Any, Any, Any, Any]) -> Authenticator:
    found: Authenticator = connection.app.state.ui.extras["auth"]
    return found


def same_origin(connection: ASGIConnection[Any, Any, Any, Any], *, required: bool) -> bool:
    """Whether the request's Origin (else Referer) names this host; without either, `not
    required`."""
    source = connection.headers.get("origin") or connection.headers.get("referer")
    if not source or source == "null":
        return not required
    host = connection.headers.get("host", "")
    return bool(host) and urllib.parse.urlsplit(source).netloc.lower() == host.lower()


async def authenticate(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard (every route): see the module's docstring."""
    method = str(connection.scope.get("method", "GET"))
    need = required_role(method, handler)
    auth = _authenticator(connection)
    identity: Identity | None = None
    header = connection.headers.get("authorization")
    if header is not None:
        identity = await auth.from_bearer(header)
    elif cookie := connection.cookies.get(SESSION_COOKIE):
        identity = await auth.from_session(cookie)
        unsafe = identity is not None and method not in _SAFE_METHODS
        if unsafe and not same_origin(connection, required=True):
            raise PermissionDeniedException("cross-site request refused (Origin, Referer)")
    connection.scope.setdefault("state", {})["identity"] = identity
    # The pages' header: "Logged in as <name> (role)" and a Log out button (sessions only).
    session = identity is not None and identity.via == "session"
    SIGNED_IN.set((identity.name, identity.role) if identity is not None and session else None)
    if need == "public":
        return
    if identity is None:
        if await auth.is_open():
            return
        path = connection.scope.get("path", "/")
        if method in ("GET", "HEAD") and not path.startswith(("/api/", "/metrics", "/schema")):
            query = connection.scope.get("query_string", b"").decode("latin-1")
            raise LoginRequired(path + (f"?{query}" if query else ""))
        raise NotAuthorizedException("log in (/login) or send 'Authorization: Bearer <token>'")
    if not role_allows(identity.role, need):
        raise PermissionDeniedException(f"{identity.role} may not do this: it needs {need}")


def to_login(_: Request[Any, Any, Any], exc: LoginRequired) -> Response[Any]:
    """Exception handler: the login page, coming back to `exc.target` after."""
    query = urllib.parse.urlencode({"next": exc.target})
    return Redirect(f"/login?{query}", status_code=303)


# -- the login page -----------------------------------------------------------------------------


class LoginForm(msgspec.Struct):
    name: str = ""
    password: str = ""
    next: str = "/"


def _safe_next(target: str) -> str:
    """Only a path of this site (not `//evil` nor `https://evil`, nor `/<tab>/evil`: browsers
    drop tabs and newlines from URLs)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(c < " " or c == "\x7f" for c in target):
        return "/"
    return target


def _loopback(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    server = connection.scope.get("server")
    return is_loopback(server[0] if server else "")


def secure_cookies(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """Whether cookies are marked Secure (HTTPS only): served beyond loopback."""
    return not _loopback(connection)


def session_cookie(connection: ASGIConnection[Any, Any, Any, Any], value: str) -> Cookie:
    """The cookie of a login session (web/oidc.py's; POST /login sets the same)."""
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        max_age=int(SESSION_TTL),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure_cookies(connection),
    )


def oidc_name(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The identity provider's name for "Log in with <name>" ("": no OIDC login)."""
    oidc = _authenticator(connection).settings.oidc
    if oidc.issuer is None:
        return ""
    return oidc.name or urllib.parse.urlsplit(oidc.issuer).netloc or oidc.issuer


def _client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    client = connection.scope.get("client")
    return str(client[0]) if client else ""


@get("/login", opt=PUBLIC, include_in_schema=False)
async def login_page(request: Request[Any, Any, Any], next: FromQuery[str] = "/") -> Response[str]:
    return render("login.html", next=_safe_next(next), error="", oidc_name=oidc_name(request))


@post("/login", opt=PUBLIC, include_in_schema=False)
async def login(
    request: Request[Any, Any, Any],
    data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
) -> Response[Any]:
    if not same_origin(request, required=False):
        raise PermissionDeniedException("cross-site request refused (Origin, Referer)")
    auth = _authenticator(request)
    address = _client_address(request)
    # Too many failures: refused before the password is looked at (web/login_limits.py).
    blocked = auth.limiter.blocked(data.name, address)
    if blocked is not None:
        await login_recorded(request, data.name, "refused", detail=blocked.message)
        refused = render(
            "login.html",
            status_code=429,
            next=_safe_next(data.next),
            error=blocked.message,
            oidc_name=oidc_name(request),
        )
        refused.headers["Retry-After"] = str(blocked.retry_after)
        return refused
    user = await auth.store.user(data.name) if valid_name(data.name) else None
    if not await asyncio.to_thread(verify_password, user, data.password) or user is None:
        auth.limiter.failed(data.name, address)
        await login_recorded(request, data.name, "refused", detail="wrong name or password")
        return render(
            "login.html",
            status_code=401,
            next=_safe_next(data.next),
            error="Wrong name or password.",
            oidc_name=oidc_name(request),
        )
    auth.limiter.succeeded(data.name)
    await login_recorded(request, user.name, "ok")  # (first: unrecorded, no session)
    cookie, session = new_session(user, time.time())
    await auth.store.put_session(session_key(cookie), session)
    return Redirect(
        _safe_next(data.next),
        status_code=303,
        cookies=[
            Cookie(
                key=SESSION_COOKIE,
                value=cookie,
                max_age=int(SESSION_TTL),
                path="/",
                httponly=True,
                samesite="strict",
                secure=not _loopback(request),
            )
        ],
    )


@post("/logout", opt=PUBLIC, include_in_schema=False)
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        if not same_origin(request, required=True):
            raise PermissionDeniedException("cross-site request refused (Origin, Referer)")
        auth = _authenticator(request)
        key = session_key(cookie)
        ended = await auth.store.session(key)
        await auth.store.remove_session(key)
        auth.forget(f"session:{key}")
        if ended is not None:
            await logout_recorded(request, ended.user)
    response: Response[Any] = Redirect("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


login_router = Router(path="/", route_handlers=[login_page, login, logout])
