"""`cyclonetix replay` and `cyclonetix projector` as a user runs them, against a real nats-server
whose log an orchestrator and a stand-in agent (in this process) filled.

--verify needs a store that outlives a process: Redis (127.0.0.1:6379, or $CYCLONETIX_TEST_REDIS)
under a key prefix of its own per test; without a Redis server those tests skip (fail with
CYCLONETIX_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from projections.protocol import ReadModel
from projections.stores import open_read_model
from services.nats import NatsBackplane, connect
from services.ports import Backplane
from tests.conftest import requires_service
from tests.e2e.conftest import child_env
from tests.rolekit import (
    DIAMOND,
    Connect,
    running_orchestrator,
    schedule,
    stand_in_agent,
    until_end,
)
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CLI = [sys.executable, "-m", "services.cli"]
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(PYTHONPATH=str(ROOT)),
    )


async def acli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, cwd=cwd)


@pytest.fixture
async def log(backplane: NatsBackplane) -> list[str]:
    """Three runs of the diamond, to the end: their ids, newest first."""

    async def new() -> Backplane:
        return await connect(backplane.url, name="orchestrator")

    own: Connect = new
    run_ids: list[str] = []
    async with running_orchestrator(own), stand_in_agent(backplane):
        for _ in range(3):
            run_ids.append(await schedule(backplane, DIAMOND, "d"))
            await until_end(backplane, run_ids[-1])
    return run_ids[::-1]


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A read-model URL on the Redis server with a fresh key prefix; its keys deleted after."""
    server = os.environ.get("CYCLONETIX_TEST_REDIS", "redis://127.0.0.1:6379/0")
    prefix = f"cxtest:{uuid.uuid4().hex}:"
    admin = aioredis.from_url(server, socket_connect_timeout=2, socket_timeout=5)
    try:
        try:
            await admin.ping()
        except (OSError, rexc.RedisError) as exc:
            requires_service("redis", f"{server}: {exc}")
        yield f"{server}?prefix={prefix}"
        keys = [k async for k in admin.scan_iter(match=f"{prefix}*")]
        if keys:
            await admin.delete(*keys)
    finally:
        await admin.aclose()


async def test_replay_into_memory_prints_progress_and_rate(
    log: list[str], nats_url: str, tmp_path: Path, backplane: NatsBackplane
) -> None:
    last = await backplane.events.last_seq()
    done = await acli("replay", "--into", "memory://", "--nats-url", nats_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        rf"replayed {last} events in .+: [\d,]+ events/s \(checkpoint {last}\)", lines[0]
    )
    assert lines[1] == "runs: succeeded 3"
    assert f"{last:,} / {last:,} (100%)" in done.stderr

    one = await acli(
        "replay", "--into", "memory://", "--run", log[0], "--nats-url", nats_url, cwd=tmp_path
    )
    assert one.returncode == 0, one.stderr
    assert one.stdout.splitlines()[1] == "runs: succeeded 1"


async def test_a_bad_store_url_is_one_line(tmp_path: Path, nats_url: str) -> None:
    done = await acli("replay", "--into", "bogus://x", "--nats-url", nats_url, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("cyclonetix: error: not a read-model URL: bogus://x")
    assert len(done.stderr.splitlines()) == 1


async def wait_applied(store: ReadModel, last: int) -> None:
    async def probe() -> bool | None:
        return True if await store.checkpoint() >= last else None

    await eventually(probe, timeout=30, what=f"the store to apply up to {last}")


async def test_projector_process_then_verify_finds_nothing_then_a_hand_edit(
    log: list[str], nats_url: str, redis_url: str, tmp_path: Path, backplane: NatsBackplane
) -> None:
    # The projector, as a process, fills the Redis store; SIGTERM stops it cleanly.
    out = (tmp_path / "projector.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "projector", "--read-model", redis_url, "--nats-url", nats_url, "--batch", "7"],
        cwd=tmp_path,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=child_env(PYTHONPATH=str(ROOT)),
    )
    store = open_read_model(redis_url)
    try:
        await wait_applied(store, await backplane.events.last_seq())
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        out.close()
    assert code == 0, (tmp_path / "projector.log").read_text()[-3000:]
    try:
        page = await store.list_runs()
        assert [r.run_id for r in page.items] == log

        same = await acli("replay", "--verify", redis_url, "--nats-url", nats_url, cwd=tmp_path)
        assert (same.returncode, same.stdout) == (0, ""), same.stderr
        assert "no differences" in same.stderr

        # A row changed by hand in the live store.
        server, prefix = redis_url.split("?prefix=")
        admin = aioredis.from_url(server)
        try:
            stored = await admin.hget(f"{prefix}runs", log[1])
            assert stored is not None
            row = json.loads(stored)
            name = row["name"]
            row["name"] = "edited-by-hand"
            await admin.hset(f"{prefix}runs", log[1], json.dumps(row))
        finally:
            await admin.aclose()
        diff = await acli("replay", "--verify", redis_url, "--nats-url", nats_url, cwd=tmp_path)
    finally:
        await store.close()
    assert diff.returncode == 1, diff.stderr
    assert diff.stdout.splitlines() == [f"run {log[1]} name: live edited-by-hand replayed {name}"]
