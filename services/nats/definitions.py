"""The definitions store (`services.ports.DefinitionsStore`) in the `cx_defs` KV bucket.

One key per definition (`task.<id>`, `dag.<id>`, ...), the value its msgspec JSON and the file
it came from in a `Cx-Source` header.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final

import msgspec
import structlog

from core.definitions import ContextDef, DagDef, Definitions, ParameterSetDef, TaskDef
from services.nats.names import (
    DEFS_BUCKET,
    KV_OPERATION,
    SOURCE_HEADER,
    decode_token,
    kv_subject,
    kv_token,
)
from services.nats.reader import kv_snapshot
from services.ports import DefinitionTooLarge

if TYPE_CHECKING:
    from services.nats.connection import Connection
    from services.nats.publisher import Publisher

__all__ = ["NatsDefinitionsStore"]

log = structlog.get_logger("cyclonetix.nats")

# key prefix -> (Definitions attribute, struct type)
_KINDS: Final[dict[str, tuple[str, type[Any]]]] = {
    "task": ("tasks", TaskDef),
    "dag": ("dags", DagDef),
    "context": ("contexts", ContextDef),
    "parameter_set": ("parameter_sets", ParameterSetDef),
}
_DECODERS = {kind: msgspec.json.Decoder(t) for kind, (_, t) in _KINDS.items()}
_json = msgspec.json.Encoder()
_HEADER_BYTES = len(b"NATS/1.0\r\n\r\n")  # (plus "Name: value\r\n" per header)


class NatsDefinitionsStore:
    def __init__(self, conn: Connection, publisher: Publisher) -> None:
        self._conn = conn
        self._publisher = publisher

    async def put(self, defs: Definitions) -> int:
        """Make cx_defs hold exactly `defs`; returns how many keys changed (put or deleted).

        Unchanged keys are not rewritten, so the bucket's history shows real changes only.
        Every message is checked against the server's max_payload before anything is written
        (DefinitionTooLarge, naming the file), and the deletes go out only once every put is
        stored: a failure half-way leaves a mix of old and new, never fewer definitions.
        Readers may briefly see a mix of the old and new set while this runs.
        """
        desired: dict[str, tuple[bytes, str | None]] = {}
        sizes: dict[str, int] = {}
        for kind, (attr, _) in _KINDS.items():
            for def_id, item in getattr(defs, attr).items():
                source = defs.sources.get(f"{attr}/{def_id}")
                value = _json.encode(item)
                desired[f"{kind}.{kv_token(def_id)}"] = (value, source)
                headers = _HEADER_BYTES + (len(SOURCE_HEADER) + len(source) + 4 if source else 0)
                where = source or f"{kind} {def_id}"
                sizes[where] = max(sizes.get(where, 0), len(value) + headers)
        DefinitionTooLarge.check(sizes, self._conn.nc.max_payload)
        current = {
            key: (msg.data, (msg.headers or {}).get(SOURCE_HEADER))
            for key, msg in (await kv_snapshot(self._conn, DEFS_BUCKET)).items()
            if key.split(".", 1)[0] in _KINDS
        }
        publish = self._publisher.publish_nowait
        puts = [
            publish(
                kv_subject(DEFS_BUCKET, key), value, {SOURCE_HEADER: source} if source else None
            )
            for key, (value, source) in desired.items()
            if current.get(key) != (value, source)
        ]
        if puts:
            await asyncio.gather(*puts)
        deletes = [
            publish(kv_subject(DEFS_BUCKET, key), b"", {KV_OPERATION: "DEL"})
            for key in sorted(current.keys() - desired.keys())
        ]
        if deletes:
            await asyncio.gather(*deletes)
        return len(puts) + len(deletes)

    async def load(self) -> Definitions:
        """The current definitions (values that fail to decode are logged and skipped)."""
        parts: dict[str, dict[str, Any]] = {attr: {} for attr, _ in _KINDS.values()}
        sources: dict[str, str] = {}
        for key, msg in (await kv_snapshot(self._conn, DEFS_BUCKET)).items():
            kind, _, token = key.partition(".")
            if kind not in _KINDS:
                continue
            try:
                item = _DECODERS[kind].decode(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("nats.undecodable_definition", key=key, error=str(exc))
                continue
            attr = _KINDS[kind][0]
            def_id = decode_token(token)
            parts[attr][def_id] = item
            if source := (msg.headers or {}).get(SOURCE_HEADER):
                sources[f"{attr}/{def_id}"] = source
        return Definitions(**parts, sources=sources)
