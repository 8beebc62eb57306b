"""Logging in to the UI through an OpenID Connect provider (settings `ui.oidc`:
services/settings.py's OidcSettings; off without `ui.oidc.issuer`).

    GET /login/oidc?next=/runs     -> 303 to the provider's authorization endpoint
    GET /login/oidc/callback       <- the provider sends the browser back with a code

The flow is the authorization code with PKCE (S256), a `state` and a `nonce`:

- The provider's discovery document (`<issuer>/.well-known/openid-configuration`) is read on
  first use; its JWKS too (again once when an ID token names a key it does not hold).
- /login/oidc keeps (state -> nonce, PKCE verifier, where to go after) in this process for
  PENDING_TTL seconds, and gives the browser a random `cx_oidc` cookie (HttpOnly,
  SameSite=Lax: it must come back on the provider's cross-site redirect) whose SHA-256 the
  pending login remembers: a callback with a state this process did not hand out, already
  used, expired, or started in another browser, is refused. With several UI processes, the
  callback must reach the process that started the login (sticky sessions).
- The callback exchanges the code (with the verifier, and the client secret if there is one)
  at the token endpoint, then checks the ID token with authlib and joserfc: its signature
  against the provider's JWKS (asymmetric algorithms only), `iss` the issuer, `aud` this
  client, not expired, `nonce` this login's. A failure is one line on the login page (401) and
  no session.
- The user's name is the ID token's `username_claim` (default `preferred_username`), else
  its `email`; the role is the highest that `roles` maps any value of `roles_claim` to, else
  `default_role`, else no login (403, one line).
- Then the same server-side session as a password login (`cx_sessions`, the HttpOnly
  SameSite=Strict cookie), marked `via="oidc"`: the role is the one mapped at login, for the
  session's 12 hours. The answer is a page that moves on to `next` by itself (a meta
  refresh): a redirect straight from the provider's cross-site redirect would not carry the
  new SameSite=Strict cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from litestar import Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect

from services.auth import ROLES, Role, check_role, new_oidc_session, session_key, valid_name
from services.settings import OidcSettings
from web.audit import login_recorded
from web.auth import PUBLIC, _safe_next, oidc_name, secure_cookies, session_cookie
from web.pages.templating import render

__all__ = ["CALLBACK_PATH", "FLOW_COOKIE", "OidcError", "OidcLogin", "oidc_callback", "oidc_start"]

CALLBACK_PATH: Final = "/login/oidc/callback"
FLOW_COOKIE: Final = "cx_oidc"
PENDING_TTL: Final = 600.0  # seconds a login may spend at the provider
MAX_PENDING: Final = 10_000
HTTP_TIMEOUT_S: Final = 10.0
LEEWAY_S: Final = 60  # clock skew allowed on exp/iat
# Asymmetric only: an HS* token would be "signed" with the client secret, a none one not at all.
ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class OidcError(Exception):
    """A login through the provider that cannot go on: one line for the login page."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class _Pending:
    nonce: str
    verifier: str
    redirect_uri: str
    next: str
    browser: str  # SHA-256 of the flow cookie
    started: float  # monotonic


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _one_line(text: str, limit: int = 200) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class OidcLogin:
    """The provider of `settings`, as this UI process talks to it (one per app)."""

    def __init__(self, settings: OidcSettings) -> None:
        if settings.issuer is None or settings.client_id is None:
            raise ValueError("OIDC needs ui.oidc.issuer and ui.oidc.client_id")
        self.settings = settings
        self.issuer: str = settings.issuer
        self.client_id: str = settings.client_id
        self._metadata: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None
        self._pending: dict[str, _Pending] = {}

    # -- talking to the provider ----------------------------------------------------------------

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                response = await http.get(url, headers={"accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"Cannot read {what} at {url}: {_one_line(str(exc))}", 502) from None
        if not isinstance(data, dict):
            raise OidcError(f"The {what} at {url} is not a JSON object", 502)
        return data

    async def metadata(self) -> dict[str, Any]:
        """The discovery document (read once; its issuer must be the configured one)."""
        if self._metadata is None:
            url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            found = await self._get_json(url, "identity provider's discovery document")
            if found.get("issuer") != self.issuer:
                raise OidcError(
                    f"The discovery document at {url} names the issuer {found.get('issuer')!r}, "
                    f"not {self.issuer!r} (ui.oidc.issuer)",
                    502,
                )
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(key), str):
                    raise OidcError(f"The discovery document at {url} has no {key}", 502)
            self._metadata = found
        return self._metadata

    async def jwks(self, *, again: bool = False) -> KeySet:
        if self._jwks is None or again:
            url = (await self.metadata())["jwks_uri"]
            self._jwks = await self._get_json(url, "identity provider's keys (JWKS)")
        try:
            return KeySet.import_key_set(self._jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise OidcError(
                f"The identity provider's keys (JWKS) are unusable: {_one_line(str(exc))}", 502
            ) from None

    def client_secret(self) -> str | None:
        if self.settings.client_secret is not None:
            return self.settings.client_secret
        if self.settings.client_secret_file is not None:
            try:
                text = Path(self.settings.client_secret_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise OidcError(
                    f"Cannot read ui.oidc.client_secret_file: {exc.strerror or exc}", 500
                ) from None
            return text.strip()
        return None

    # -- the flow -------------------------------------------------------------------------------

    async def start(self, redirect_uri: str, next: str) -> tuple[str, str]:
        """(the provider's authorization URL to send the browser to, the flow cookie)."""
        metadata = await self.metadata()
        now = time.monotonic()
        self._forget_old(now)
        state, nonce, verifier, browser = (generate_token(43) for _ in range(4))
        self._pending[state] = _Pending(nonce, verifier, redirect_uri, next, _digest(browser), now)
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint: str = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", browser

    def _forget_old(self, now: float) -> None:
        for state, pending in list(self._pending.items()):
            if now - pending.started > PENDING_TTL:
                del self._pending[state]
        while len(self._pending) >= MAX_PENDING:  # a flood of starts: the oldest go
            del self._pending[next(iter(self._pending))]

    async def finish(self, state: str, code: str, browser: str) -> tuple[str, Role, str]:
        """(user name, role, where to go) for the provider's answer to one of our logins."""
        pending = self._pending.pop(state, None) if state else None
        fresh = pending is not None and time.monotonic() - pending.started <= PENDING_TTL
        if pending is None or not fresh:
            raise OidcError("This login is unknown or has expired (state); log in again")
        if not browser or not hmac.compare_digest(_digest(browser), pending.browser):
            raise OidcError("This login was started in another browser (state); log in again")
        if not code:
            raise OidcError("The identity provider sent no authorization code")
        tokens = await self._exchange(code, pending)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("The identity provider's token response has no id_token", 502)
        access = tokens.get("access_token")
        claims = await self.verify(
            id_token, pending.nonce, access if isinstance(access, str) else None
        )
        name = self.username(claims)
        return name, self.role(name, claims), pending.next

    async def _exchange(self, code: str, pending: _Pending) -> dict[str, Any]:
        metadata = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": pending.redirect_uri,
            "code_verifier": pending.verifier,
        }
        auth: dict[str, Any] = {}
        secret = self.client_secret()
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if secret is None:
            form["client_id"] = self.client_id  # a public client: PKCE is its proof
        elif "client_secret_basic" in methods:
            auth["auth"] = (self.client_id, secret)  # HTTP Basic, as RFC 6749 asks
        else:
            form.update(client_id=self.client_id, client_secret=secret)
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                response = await http.post(
                    metadata["token_endpoint"],
                    data=form,
                    **auth,
                    headers={"accept": "application/json"},
                )
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(
                f"Cannot exchange the code at the identity provider: {_one_line(str(exc))}", 502
            ) from None
        if response.status_code != 200 or not isinstance(data, dict):
            said = data.get("error", "") if isinstance(data, dict) else ""
            raise OidcError(
                f"The identity provider refused the code ({response.status_code} "
                f"{_one_line(str(said))})",
                502,
            )
        return data

    async def verify(self, id_token: str, nonce: str, access_token: str | None) -> dict[str, Any]:
        """The ID token's claims once its signature, iss, aud, exp and nonce are checked."""
        metadata = await self.metadata()
        offered = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in offered if a in ALGORITHMS]
        try:
            try:
                token = jwt.decode(id_token, await self.jwks(), algorithms=algorithms)
            except InvalidKeyIdError:  # a key the provider added since: read its keys again
                token = jwt.decode(id_token, await self.jwks(again=True), algorithms=algorithms)
            params: dict[str, Any] = {"nonce": nonce, "client_id": self.client_id}
            if access_token is not None:
                params["access_token"] = access_token
            claims = CodeIDToken(
                token.claims,
                token.header,
                {
                    "iss": {"essential": True, "value": self.issuer},
                    "aud": {"essential": True, "value": self.client_id},
                    "exp": {"essential": True},
                },
                params,
            )
            claims.validate(leeway=LEEWAY_S)
        except BadSignatureError:
            raise OidcError("The ID token's signature does not match the provider's keys") from None
        except InvalidKeyIdError:
            raise OidcError(
                "The ID token is signed with a key the provider does not list"
            ) from None
        except ExpiredTokenError:
            raise OidcError("The ID token has expired") from None
        except (InvalidClaimError, MissingClaimError) as exc:
            raise OidcError(f"The ID token was refused: {_claim_problem(exc)}") from None
        except JoseError as exc:
            raise OidcError(f"The ID token was refused: {_one_line(str(exc))}") from None
        return dict(claims)

    def username(self, claims: dict[str, Any]) -> str:
        wanted = self.settings.username_claim
        for claim in dict.fromkeys((wanted, "email")):
            value = claims.get(claim)
            if isinstance(value, str) and value:
                if not valid_name(value):
                    raise OidcError(
                        f"The user name {_one_line(value, 70)!r} (claim {claim}) is not usable "
                        "here: 1-64 letters, digits, '_', '.', '@' or '-'",
                        403,
                    )
                return value
        raise OidcError(f"The ID token names no user (claims {wanted} and email)", 403)

    def role(self, name: str, claims: dict[str, Any]) -> Role:
        claim = self.settings.roles_claim
        raw = claims.get(claim) if claim else None
        values = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        mapped: list[Role] = [  # (the settings' loader checked the roles' names)
            check_role(self.settings.roles[v])
            for v in values
            if isinstance(v, str) and v in self.settings.roles
        ]
        if mapped:
            return max(mapped, key=ROLES.index)
        if self.settings.default_role is not None:
            return check_role(self.settings.default_role)
        shown = ", ".join(str(v) for v in values) or "none"
        raise OidcError(
            f"The account {name} has no role here: none of its {claim} "
            f"({_one_line(shown, 80)}) is mapped in ui.oidc.roles",
            403,
        )


def _claim_problem(exc: InvalidClaimError | MissingClaimError) -> str:
    claim = getattr(exc, "claim", "") or str(exc)
    what = {
        "iss": "it is from another issuer (iss)",
        "aud": "it is for another client (aud)",
        "nonce": "it is not this login's (nonce)",
        "exp": "it has expired (exp)",
        "azp": "it is for another client (azp)",
        "at_hash": "it does not match the access token (at_hash)",
    }
    missing = isinstance(exc, MissingClaimError)
    return f"it has no {claim} claim" if missing else what.get(claim, f"its {claim} claim is wrong")


# -- the routes -----------------------------------------------------------------------------------


def _oidc(request: Request[Any, Any, Any]) -> OidcLogin | None:
    found: OidcLogin | None = request.app.state.ui.extras.get("oidc")
    return found


def _refused(
    request: Request[Any, Any, Any], message: str, status: int, next: str = "/"
) -> Response[Any]:
    response = render(
        "login.html", status_code=status, next=next, error=message, oidc_name=oidc_name(request)
    )
    response.delete_cookie(FLOW_COOKIE, path="/login/oidc")
    return response


@get("/login/oidc", opt=PUBLIC, include_in_schema=False)
async def oidc_start(request: Request[Any, Any, Any], next: FromQuery[str] = "/") -> Response[Any]:
    oidc = _oidc(request)
    if oidc is None:
        return _refused(request, "Logging in through an identity provider is not configured.", 404)
    redirect_uri = oidc.settings.redirect_url or str(request.base_url).rstrip("/") + CALLBACK_PATH
    try:
        url, browser = await oidc.start(redirect_uri, _safe_next(next))
    except OidcError as exc:
        return _refused(request, exc.message, exc.status, _safe_next(next))
    flow = Cookie(
        key=FLOW_COOKIE,
        value=browser,
        max_age=int(PENDING_TTL),
        path="/login/oidc",
        httponly=True,
        samesite="lax",  # sent back on the provider's (cross-site) redirect to the callback
        secure=secure_cookies(request),
    )
    return Redirect(url, status_code=303, cookies=[flow])


@get(CALLBACK_PATH, opt=PUBLIC, include_in_schema=False)
async def oidc_callback(request: Request[Any, Any, Any]) -> Response[Any]:
    # (`state` is a name Litestar keeps for itself: the query is read here)
    query = request.query_params
    state, code = query.get("state", ""), query.get("code", "")
    error, error_description = query.get("error", ""), query.get("error_description", "")
    oidc = _oidc(request)
    if oidc is None:
        return _refused(request, "Logging in through an identity provider is not configured.", 404)
    if error:
        said = _one_line(f"{error}: {error_description}" if error_description else error)
        return _refused(request, f"The identity provider refused the login ({said}).", 401)
    try:
        name, role, target = await oidc.finish(state, code, request.cookies.get(FLOW_COOKIE, ""))
    except OidcError as exc:
        await login_recorded(request, "(oidc)", "refused", detail=f"oidc: {exc.message}")
        return _refused(request, exc.message + ".", exc.status)
    await login_recorded(request, name, "ok", detail="oidc")  # (first: unrecorded, no session)
    cookie, session = new_oidc_session(name, role, time.time())
    auth = request.app.state.ui.extras["auth"]
    await auth.store.put_session(session_key(cookie), session)
    response = render("login_continue.html", next=target, user=name, role=role)
    response.set_cookie(session_cookie(request, cookie))
    response.delete_cookie(FLOW_COOKIE, path="/login/oidc")
    return response
