"""Users, API tokens and login sessions of the web UI and API: what they are and how their
secrets are checked (the store is `services.ports.AuthStore`; on NATS the `cx_auth` and
`cx_sessions` KV buckets, services/nats/auth.py).

- A user has a name, a role and an argon2 hash of their password.
- A token is shown once as `cx_<id>_<secret>`; only the SHA-256 of its secret is kept (the
  secret is 32 random bytes, so a fast hash is as good as a slow one), with its role and
  whether it is revoked.
- A session is what a login gives a browser: a random cookie value, kept server-side under
  its SHA-256 (whoever reads the bucket cannot replay a session), with the user, the role and
  when it expires (SESSION_TTL).

Roles are ordered: viewer (reads) < operator (also schedules, cancels, reruns) < admin.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import re
import secrets
from typing import Final, Literal, get_args

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.errors import Invalid

__all__ = [
    "ROLES",
    "SESSION_TTL",
    "ApiToken",
    "Role",
    "Session",
    "User",
    "check_name",
    "check_role",
    "hash_password",
    "new_oidc_session",
    "new_session",
    "new_token",
    "parse_token",
    "role_allows",
    "session_key",
    "token_matches",
    "valid_name",
    "verify_password",
]

Role = Literal["viewer", "operator", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
SESSION_TTL: Final = 12 * 3600.0  # seconds a login lasts
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_TOKEN = re.compile(r"cx_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked when the user does not exist, so that a wrong name costs as long as a wrong
    password. Made on first use: a hash costs ~0.35 s and ~64 MiB, which every role process
    would otherwise pay at import."""
    return _hasher.hash(secrets.token_urlsafe(16))


class User(msgspec.Struct, frozen=True):
    name: str
    role: Role
    password_hash: str
    created_at: dt.datetime


class ApiToken(msgspec.Struct, frozen=True):
    id: str
    name: str
    role: Role
    hash: str  # SHA-256 (hex) of the secret
    created_at: dt.datetime
    revoked: bool = False


class Session(msgspec.Struct, frozen=True):
    user: str
    role: Role
    expires_at: float  # seconds since the epoch
    # How the user logged in: "password" (a user of the store: their current role counts, and
    # the session ends with them) or "oidc" (an identity provider's user, with the role their
    # ID token mapped to when they logged in: web/oidc.py).
    via: Literal["password", "oidc"] = "password"


def role_allows(have: Role, need: Role) -> bool:
    return ROLES.index(have) >= ROLES.index(need)


def check_role(text: str) -> Role:
    for role in ROLES:
        if text == role:
            return role
    raise Invalid(f"role must be one of {', '.join(ROLES)}, not {text!r}")


def valid_name(name: str) -> bool:
    """Whether `name` can be a user's or a token's name (short: it becomes a NATS key)."""
    return _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not valid_name(name):
        raise Invalid(
            f"name {name!r}: 1-64 letters, digits, '_', '.', '@' or '-', starting with a "
            "letter or digit"
        )
    return name


def hash_password(password: str) -> str:
    if not password:
        raise Invalid("the password must not be empty")
    return _hasher.hash(password)


def verify_password(user: User | None, password: str) -> bool:
    """Whether `password` is `user`'s (None: no such user; it takes as long all the same)."""
    try:
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return user is not None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_token(name: str, role: Role) -> tuple[ApiToken, str]:
    """A token and the text to show once (`cx_<id>_<secret>`)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return ApiToken(token_id, check_name(name), role, digest, _now()), f"cx_{token_id}_{secret}"


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a token's text; None when it is not shaped like one."""
    match = _TOKEN.fullmatch(text)
    return None if match is None else (match[1], match[2])


def token_matches(token: ApiToken, secret: str) -> bool:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return hmac.compare_digest(digest, token.hash)


def session_key(cookie: str) -> str:
    """Where a session is kept: the SHA-256 of its cookie value."""
    return hashlib.sha256(cookie.encode()).hexdigest()


def new_session(user: User, now: float) -> tuple[str, Session]:
    """(cookie value, session) for a login of `user` at `now` (epoch seconds)."""
    return secrets.token_urlsafe(32), Session(user.name, user.role, now + SESSION_TTL)


def new_oidc_session(name: str, role: Role, now: float) -> tuple[str, Session]:
    """(cookie value, session) for a login through OIDC of `name` with `role` at `now`."""
    return secrets.token_urlsafe(32), Session(name, role, now + SESSION_TTL, via="oidc")


def created_now() -> dt.datetime:
    return _now()
