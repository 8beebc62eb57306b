"""The read side of a chaos scenario: a projector process into a Redis store of the scenario's
own (a fresh key prefix, deleted after), how long it takes to catch up with the log, and the
final check that the store equals a fresh replay of the whole log into memory (what
`cyclonetix replay --verify` compares).

Redis is the machine's (`$CYCLONETIX_TEST_REDIS`, default redis://127.0.0.1:6379/0); without it
the scenario skips, or fails under CYCLONETIX_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis import exceptions as rexc

from services.cli.replay import verify
from tests.chaos.harness import Chaos, Role
from tests.conftest import requires_service

SERVER_ENV = "CYCLONETIX_TEST_REDIS"
CATCH_UP_TIMEOUT_S = 60.0
POLL_S = 0.02


@contextlib.asynccontextmanager
async def redis_store(name: str) -> AsyncIterator[str]:
    """The URL of a Redis read model under a fresh prefix; its keys are deleted on exit."""
    url = os.environ.get(SERVER_ENV, "redis://127.0.0.1:6379/0")
    admin = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        try:
            await admin.ping()
        except (OSError, rexc.RedisError) as exc:
            requires_service("redis", f"{url}: {exc}")
        prefix = f"cxchaos:{name}:{uuid.uuid4().hex}:"
        try:
            yield f"{url}?prefix={prefix}"
        finally:
            keys = [k async for k in admin.scan_iter(match=f"{prefix}*", count=1000)]
            for i in range(0, len(keys), 1000):
                await admin.unlink(*keys[i : i + 1000])
    finally:
        await admin.aclose()


async def checkpoint(chaos: Chaos) -> int:
    assert chaos.read_model is not None
    return await chaos.read_model.checkpoint()


async def catch_up(chaos: Chaos, target: int, timeout: float = CATCH_UP_TIMEOUT_S) -> float:
    """Seconds until the store's checkpoint reaches `target`; AssertionError (with the
    projector's log) at the deadline or when the projector exits."""
    began = time.monotonic()
    while True:
        if await checkpoint(chaos) >= target:
            return time.monotonic() - began
        role = projector(chaos)
        if not role.alive:
            raise AssertionError(
                f"the projector exited by itself (code {role.proc.returncode}) at checkpoint "
                f"{await checkpoint(chaos)} of {target}:\n{role.tail()}"
            )
        if time.monotonic() - began > timeout:
            raise AssertionError(
                f"the projector did not reach sequence {target} within {timeout:.0f}s "
                f"(checkpoint {await checkpoint(chaos)}):\n{role.tail()}"
            )
        await asyncio.sleep(POLL_S)


def projector(chaos: Chaos) -> Role:
    """The newest projector process (there is one at a time)."""
    return [r for r in chaos.roles.all if r.kind == "projector"][-1]


@dataclass
class Projection:
    last_seq: int
    checkpoint: int
    catch_up: float | None  # seconds after the workload drained (None: it did not)
    differences: list[str] = field(default_factory=list)
    left_out: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self) -> str:
        caught = "-" if self.catch_up is None else f"{self.catch_up:.2f}s"
        verdict = "equal" if not self.differences else f"{len(self.differences)} differences"
        return (
            f"read model (Redis): checkpoint {self.checkpoint} of log {self.last_seq}, final "
            f"catch-up {caught}; against a fresh replay of the whole log: {verdict}"
        )


async def check(chaos: Chaos) -> Projection:
    """Once the roles stopped (nothing appends any more): wait until the store's checkpoint is
    the log's last sequence, compare the store with a fresh replay into memory, then stop the
    projector."""
    last = await chaos.backplane.events.last_seq()
    found = Projection(last_seq=last, checkpoint=await checkpoint(chaos), catch_up=None)
    try:
        found.catch_up = await catch_up(chaos, last)
    except AssertionError as exc:
        found.problems.append(str(exc))
    found.checkpoint = await checkpoint(chaos)
    if found.checkpoint == last:
        assert chaos.read_model is not None
        found.differences, found.left_out = await verify(chaos.backplane.events, chaos.read_model)
        found.problems += [
            f"read model differs from a fresh replay: {d}" for d in found.differences
        ]
        if found.left_out:
            found.problems.append(f"{found.left_out} runs left out of the comparison")
    role = projector(chaos)
    if role.alive:
        role.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.to_thread(role.proc.wait), 15)
        except TimeoutError:
            found.problems.append(f"the projector did not stop on SIGTERM:\n{role.tail()}")
            role.proc.kill()
            await asyncio.to_thread(role.proc.wait)
        else:
            if role.proc.returncode != 0:
                found.problems.append(
                    f"the projector exited {role.proc.returncode} on SIGTERM:\n{role.tail()}"
                )
    return found
