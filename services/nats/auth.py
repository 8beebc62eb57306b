"""Users, API tokens (`cx_auth`: `user.<name>`, `token.<id>`) and login sessions
(`cx_sessions`: `session.<sha256 of the cookie>`, expiring with the bucket's TTL) for the web
UI and API (`services.ports.AuthStore`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

import msgspec
import nats.js.errors
import structlog

from services.auth import ApiToken, Session, User, valid_name
from services.nats.connection import unavailable
from services.nats.names import AUTH_BUCKET, SESSIONS_BUCKET, kv_token
from services.nats.reader import kv_snapshot

if TYPE_CHECKING:
    from services.nats.connection import Connection
    from services.nats.provisioning import Provisioner

__all__ = ["NatsAuthStore"]

log = structlog.get_logger("cyclonetix.nats")
T = TypeVar("T")


class NatsAuthStore:
    def __init__(self, conn: Connection, provisioner: Provisioner) -> None:
        self._conn = conn
        self._provisioner = provisioner

    async def _get(self, bucket: str, key: str, kind: type[T]) -> T | None:
        kv = await self._provisioner.bucket(bucket)
        with unavailable(f"about {key}"):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # (deleted keys too)
                return None
        try:
            return msgspec.json.decode(entry.value or b"", type=kind)
        except msgspec.DecodeError:
            log.warning("auth.undecodable", key=key)
            return None

    async def _put(self, bucket: str, key: str, value: object) -> None:
        kv = await self._provisioner.bucket(bucket)
        with unavailable(f"about {key}"):
            await kv.put(key, msgspec.json.encode(value))

    async def _delete(self, bucket: str, key: str) -> None:
        kv = await self._provisioner.bucket(bucket)
        with unavailable(f"about {key}"):
            await kv.delete(key)

    async def _list(self, pattern: str, kind: type[T]) -> list[T]:
        await self._provisioner.bucket(AUTH_BUCKET)  # (it exists)
        found = []
        with unavailable(f"about {AUTH_BUCKET}"):
            snapshot = await kv_snapshot(self._conn, AUTH_BUCKET, pattern)
        for key, msg in snapshot.items():
            try:
                found.append(msgspec.json.decode(msg.data, type=kind))
            except msgspec.DecodeError:
                log.warning("auth.undecodable", key=key)
        return found

    async def user(self, name: str) -> User | None:
        if not valid_name(name):  # (nor a key too long for a subject)
            return None
        return await self._get(AUTH_BUCKET, f"user.{kv_token(name)}", User)

    async def put_user(self, user: User) -> None:
        await self._put(AUTH_BUCKET, f"user.{kv_token(user.name)}", user)

    async def remove_user(self, name: str) -> bool:
        if not valid_name(name) or await self.user(name) is None:
            return False
        await self._delete(AUTH_BUCKET, f"user.{kv_token(name)}")
        return True

    async def users(self) -> list[User]:
        return sorted(await self._list("user.>", User), key=lambda u: u.name)

    async def token(self, token_id: str) -> ApiToken | None:
        if not valid_name(token_id):
            return None
        return await self._get(AUTH_BUCKET, f"token.{kv_token(token_id)}", ApiToken)

    async def put_token(self, token: ApiToken) -> None:
        await self._put(AUTH_BUCKET, f"token.{kv_token(token.id)}", token)

    async def tokens(self) -> list[ApiToken]:
        return sorted(await self._list("token.>", ApiToken), key=lambda t: t.created_at)

    async def any_credentials(self) -> bool:
        await self._provisioner.bucket(AUTH_BUCKET)
        with unavailable(f"about {AUTH_BUCKET}"):
            snapshot = await kv_snapshot(self._conn, AUTH_BUCKET, ">")
        return bool(snapshot)

    async def session(self, key: str) -> Session | None:
        if not valid_name(key):
            return None
        found = await self._get(SESSIONS_BUCKET, f"session.{kv_token(key)}", Session)
        return found if found is not None and found.expires_at > time.time() else None

    async def put_session(self, key: str, session: Session) -> None:
        await self._put(SESSIONS_BUCKET, f"session.{kv_token(key)}", session)

    async def remove_session(self, key: str) -> None:
        await self._delete(SESSIONS_BUCKET, f"session.{kv_token(key)}")
