"""Schedule marks (`services.ports.ScheduleMarks`) in the `cx_schedules` KV bucket, written with
compare-and-set on the entry's revision."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import nats.js.errors
import structlog

from core.errors import Conflict
from core.schedules import ScheduleMark
from services.nats.connection import unavailable
from services.nats.names import SCHEDULES_BUCKET, kv_token

if TYPE_CHECKING:
    from services.nats.provisioning import Provisioner

__all__ = ["NatsScheduleMarks"]

log = structlog.get_logger("cyclonetix.cron")
_decoder = msgspec.json.Decoder(ScheduleMark)


class NatsScheduleMarks:
    def __init__(self, provisioner: Provisioner) -> None:
        self._provisioner = provisioner

    async def get(self, key: str) -> tuple[ScheduleMark | None, int]:
        kv = await self._provisioner.bucket(SCHEDULES_BUCKET)
        with unavailable(f"about schedule {key}"):
            try:
                entry = await kv.get(kv_token(key))
            except nats.js.errors.KeyNotFoundError:
                return None, 0
        revision = int(entry.revision or 0)
        try:
            return _decoder.decode(entry.value or b""), revision
        except msgspec.DecodeError:
            # Unreadable (written by hand?): start afresh, replacing it at this revision.
            log.warning("schedule.mark_unreadable", schedule=key, revision=revision)
            return None, revision

    async def put(self, key: str, mark: ScheduleMark, revision: int) -> int:
        kv = await self._provisioner.bucket(SCHEDULES_BUCKET)
        data = msgspec.json.encode(mark)
        with unavailable(f"about schedule {key}"):
            try:
                if revision == 0:
                    return int(await kv.create(kv_token(key), data))
                return int(await kv.update(kv_token(key), data, last=revision))
            except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
                raise Conflict(f"schedule {key} was updated meanwhile") from None
