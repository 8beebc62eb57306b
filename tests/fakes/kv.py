"""Key-value ports in memory: definitions, agent registry, leases, checkpoints.

A `Bucket` behaves like a JetStream KV bucket: one revision counter for the whole bucket,
`create` only when the key is absent, `update` only from the current revision, and entries that
expire `ttl` seconds after their last write on the backplane's `Clock`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog

from core.agents import AgentInfo
from core.audit import AuditRecord, matches
from core.definitions import ContextDef, DagDef, Definitions, ParameterSetDef, TaskDef
from services.auth import ApiToken, Session, User
from services.ports import DefinitionTooLarge

if TYPE_CHECKING:
    from tests.fakes.backplane import MemoryBackplane
    from tests.fakes.clock import Clock
    from tests.fakes.faults import Faults

__all__ = [
    "Bucket",
    "MemoryAgentRegistry",
    "MemoryAuditLog",
    "MemoryAuthStore",
    "MemoryCheckpoints",
    "MemoryDefinitionsStore",
    "MemoryLeases",
]

log = structlog.get_logger("cyclonetix.fakes")


@dataclass(frozen=True, slots=True)
class Entry:
    value: bytes
    revision: int
    written_at: float
    source: str | None = None  # a header the definitions store keeps with each value


class Bucket:
    def __init__(self, clock: Clock, ttl: float | None = None) -> None:
        self.clock = clock
        self.ttl = ttl
        self._entries: dict[str, Entry] = {}
        self._revision = 0

    def get(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self.ttl is not None and self._expired(entry, self.ttl):
            del self._entries[key]
            return None
        return entry

    def _expired(self, entry: Entry, ttl: float) -> bool:
        return self.clock.now() - entry.written_at >= ttl

    def items(self) -> dict[str, Entry]:
        return {key: e for key in list(self._entries) if (e := self.get(key)) is not None}

    def put(self, key: str, value: bytes, source: str | None = None) -> int:
        self._revision += 1
        self._entries[key] = Entry(value, self._revision, self.clock.now(), source)
        return self._revision

    def create(self, key: str, value: bytes) -> int | None:
        """Write only if `key` is absent (never written, deleted or expired)."""
        if self.get(key) is not None:
            return None
        return self.put(key, value)

    def update(self, key: str, value: bytes, last: int) -> int | None:
        """Write only if `key` is still at revision `last`."""
        entry = self.get(key)
        if entry is None or entry.revision != last:
            return None
        return self.put(key, value)

    def delete(self, key: str, last: int | None = None) -> bool:
        entry = self.get(key)
        if last is not None and (entry is None or entry.revision != last):
            return False
        self._entries.pop(key, None)
        self._revision += 1  # the delete marker takes a revision
        return True


# Definitions: key prefix -> (Definitions attribute, struct type), as on NATS.
_DEF_KINDS: Final[dict[str, tuple[str, type[Any]]]] = {
    "task": ("tasks", TaskDef),
    "dag": ("dags", DagDef),
    "context": ("contexts", ContextDef),
    "parameter_set": ("parameter_sets", ParameterSetDef),
}
_DEF_DECODERS = {kind: msgspec.json.Decoder(t) for kind, (_, t) in _DEF_KINDS.items()}
_json = msgspec.json.Encoder()
_HEADER_BYTES = len(b"NATS/1.0\r\n\r\n")  # (plus "Name: value\r\n" per header)
_agent_decoder = msgspec.json.Decoder(AgentInfo)


class MemoryDefinitionsStore:
    """`services.ports.DefinitionsStore`: one entry per definition, as JSON."""

    def __init__(self, conn: MemoryBackplane, bucket: Bucket, max_payload: int) -> None:
        self._conn = conn
        self._bucket = bucket
        self._max_payload = max_payload

    async def put(self, defs: Definitions) -> int:
        """As on NATS: sizes checked against the server's max_payload first (a message is the
        value plus its source header), puts before deletes."""
        self._conn.check_open()
        desired: dict[str, tuple[bytes, str | None]] = {}
        sizes: dict[str, int] = {}
        for kind, (attr, _) in _DEF_KINDS.items():
            for def_id, item in getattr(defs, attr).items():
                source = defs.sources.get(f"{attr}/{def_id}")
                value = _json.encode(item)
                desired[f"{kind}.{def_id}"] = (value, source)
                headers = _HEADER_BYTES + (len("Cx-Source") + len(source) + 4 if source else 0)
                where = source or f"{kind} {def_id}"
                sizes[where] = max(sizes.get(where, 0), len(value) + headers)
        DefinitionTooLarge.check(sizes, self._max_payload)
        current = {key: (e.value, e.source) for key, e in self._bucket.items().items()}
        changed = 0
        for key, (value, source) in desired.items():
            if current.get(key) != (value, source):
                self._bucket.put(key, value, source)
                changed += 1
        for key in sorted(current.keys() - desired.keys()):
            self._bucket.delete(key)
            changed += 1
        await asyncio.sleep(0)
        return changed

    async def load(self) -> Definitions:
        self._conn.check_open()
        parts: dict[str, dict[str, Any]] = {attr: {} for attr, _ in _DEF_KINDS.values()}
        sources: dict[str, str] = {}
        for key, entry in self._bucket.items().items():
            kind, _, def_id = key.partition(".")
            try:
                item = _DEF_DECODERS[kind].decode(entry.value)
            except msgspec.DecodeError as exc:
                log.warning("fake.undecodable_definition", key=key, error=str(exc))
                continue
            attr = _DEF_KINDS[kind][0]
            parts[attr][def_id] = item
            if entry.source:
                sources[f"{attr}/{def_id}"] = entry.source
        await asyncio.sleep(0)
        return Definitions(**parts, sources=sources)


class MemoryAgentRegistry:
    """`services.ports.AgentRegistry`: heartbeats expire by the bucket's ttl."""

    def __init__(self, conn: MemoryBackplane, bucket: Bucket) -> None:
        self._conn = conn
        self._bucket = bucket

    async def heartbeat(self, info: AgentInfo) -> None:
        self._conn.check_open()
        self._bucket.put(info.id, _json.encode(info))
        await asyncio.sleep(0)

    async def remove(self, agent_id: str) -> None:
        self._conn.check_open()
        self._bucket.delete(agent_id)
        await asyncio.sleep(0)

    async def list(self) -> list[AgentInfo]:
        self._conn.check_open()
        agents = []
        for key, entry in self._bucket.items().items():
            try:
                agents.append(_agent_decoder.decode(entry.value))
            except msgspec.DecodeError as exc:
                log.warning("fake.undecodable_agent", key=key, error=str(exc))
        await asyncio.sleep(0)
        return sorted(agents, key=lambda a: a.id)


class MemoryLeases:
    """`services.ports.Leases`: entries of a bucket with a ttl (free ttl after the last write).
    `Faults.fail_lease_calls` makes calls raise before they change anything."""

    def __init__(self, conn: MemoryBackplane, bucket: Bucket, faults: Faults) -> None:
        self._conn = conn
        self._bucket = bucket
        self._faults = faults

    def _check(self, what: str) -> None:
        self._conn.check_open()
        if (fault := self._faults.lease_fault(self._conn.name, what)) is not None:
            raise fault

    async def acquire(self, name: str, holder: str) -> int | None:
        self._check(f"acquire lease {name!r}")
        revision = self._bucket.create(name, holder.encode())
        await asyncio.sleep(0)
        return revision

    async def renew(self, name: str, holder: str, revision: int) -> int | None:
        self._check(f"renew lease {name!r}")
        new = self._bucket.update(name, holder.encode(), revision)
        await asyncio.sleep(0)
        return new

    async def holder(self, name: str) -> str | None:
        self._check(f"read lease {name!r}")
        entry = self._bucket.get(name)
        await asyncio.sleep(0)
        return (entry.value.decode() or None) if entry is not None else None

    async def release(self, name: str, revision: int) -> None:
        # Best effort, as on NATS: a stale revision releases nothing.
        self._check(f"release lease {name!r}")
        self._bucket.delete(name, last=revision)
        await asyncio.sleep(0)


class MemoryCheckpoints:
    """`services.ports.Checkpoints`."""

    def __init__(self, conn: MemoryBackplane, bucket: Bucket) -> None:
        self._conn = conn
        self._bucket = bucket

    async def get(self, name: str) -> int | None:
        self._conn.check_open()
        entry = self._bucket.get(name)
        await asyncio.sleep(0)
        if entry is None:
            return None
        try:
            return int(entry.value)
        except ValueError:
            return None

    async def put(self, name: str, value: int) -> None:
        self._conn.check_open()
        self._bucket.put(name, str(value).encode())
        await asyncio.sleep(0)


class MemoryAuthStore:
    """`services.ports.AuthStore` in memory (a session's expiry is wall-clock time, as the web
    process writes it)."""

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._tokens: dict[str, ApiToken] = {}
        self._sessions: dict[str, Session] = {}

    async def user(self, name: str) -> User | None:
        return self._users.get(name)

    async def put_user(self, user: User) -> None:
        self._users[user.name] = user

    async def remove_user(self, name: str) -> bool:
        return self._users.pop(name, None) is not None

    async def users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.name)

    async def token(self, token_id: str) -> ApiToken | None:
        return self._tokens.get(token_id)

    async def put_token(self, token: ApiToken) -> None:
        self._tokens[token.id] = token

    async def tokens(self) -> list[ApiToken]:
        return sorted(self._tokens.values(), key=lambda t: t.created_at)

    async def any_credentials(self) -> bool:
        return bool(self._users or self._tokens)

    async def session(self, key: str) -> Session | None:
        found = self._sessions.get(key)
        return found if found is not None and found.expires_at > time.time() else None

    async def put_session(self, key: str, session: Session) -> None:
        self._sessions[key] = session

    async def remove_session(self, key: str) -> None:
        self._sessions.pop(key, None)


class MemoryAuditLog:
    """`services.ports.AuditLog` in memory."""

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def write(self, r: AuditRecord) -> None:
        if all(known.id != r.id for known in self.records):  # (a retried write: stored once)
            self.records.append(r)

    async def read(
        self,
        *,
        since: dt.datetime | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        found = [r for r in self.records if matches(r, since=since, actor=actor, action=action)]
        return found[-limit:] if limit > 0 else []
