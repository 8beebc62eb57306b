"""`cyclonetix runs list` as a user runs it, beside `cyclonetix dev`: from dev's in-memory read
model (asked over NATS through its projector) and from a Redis one (opened directly)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_cli import cli, one_line_error, running_dev
from tests.e2e.test_replay_cli import redis_url  # noqa: F401 - a fixture
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


async def acli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, cwd=cwd)


async def listed(*args: str, cwd: Path) -> dict[str, Any]:
    done = await acli("runs", "list", "--json", *args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    page: dict[str, Any] = json.loads(done.stdout)
    return page


def ids(page: dict[str, Any]) -> list[str]:
    return [item["run_id"] for item in page["items"]]


async def one_ok_one_failed(folder: Path) -> tuple[str, str]:
    ok = await acli("schedule", "task", "extract", "--wait", "--json", cwd=folder)
    assert ok.returncode == 0, ok.stderr
    failed = await acli(
        "schedule", "task", "flaky_fetch", "--param", "flaky_fetch.FAIL_ATTEMPTS=9",
        "--wait", "--json", cwd=folder,
    )  # fmt: skip
    assert failed.returncode == 1, failed.stderr
    return json.loads(ok.stdout)["run_id"], json.loads(failed.stdout)["run_id"]


async def test_runs_list_reads_the_memory_read_model_of_dev(tmp_path: Path) -> None:
    with running_dev(tmp_path) as folder:
        runtime = json.loads((folder / ".cyclonetix" / "runtime.json").read_text())
        assert runtime["read_model"] == "nats+memory://"
        ok, failed = await one_ok_one_failed(folder)

        async def only_the_failed_one() -> dict[str, Any] | None:
            page = await listed("--status", "failed", cwd=folder)
            return page if ids(page) == [failed] else None

        page = await eventually(only_the_failed_one, timeout=30, what="the failed run listed")
        assert page["items"][0]["status"] == "failed" and page["next_cursor"] is None

        async def both_ended() -> str | None:
            done = await acli("runs", "list", cwd=folder)
            lines = done.stdout.splitlines()
            rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
            return done.stdout if rows == {ok: "succeeded", failed: "failed"} else None

        table = await eventually(both_ended, timeout=30, what="both runs in the table")
        assert table.splitlines()[0].split()[:2] == ["RUN", "STATUS"]

        first = await listed("--limit", "1", cwd=folder)
        assert ids(first) == [failed]  # newest first
        assert first["next_cursor"] is not None
        second = await listed("--limit", "1", "--cursor", first["next_cursor"], cwd=folder)
        assert ids(second) == [ok]
        assert second["next_cursor"] is None
        paged = await acli("runs", "list", "--limit", "1", cwd=folder)
        assert paged.stdout.splitlines()[-1] == f"more: --cursor {first['next_cursor']}"

        assert ids(await listed("--task", "extract", cwd=folder)) == [ok]
        assert ids(await listed("--since", "1h", cwd=folder)) == [failed, ok]
        assert ids(await listed("--until", "1h", cwd=folder)) == []

        bad = await acli("runs", "list", "--status", "exploded", cwd=folder)
        assert "use one of scheduled, running, succeeded, failed, cancelled" in one_line_error(bad)
        shown = await acli("runs", "show", failed, "--json", cwd=folder)  # still from the log
        assert json.loads(shown.stdout)["status"] == "failed"


async def test_dev_projects_into_redis_and_runs_list_opens_it(
    tmp_path: Path,
    redis_url: str,  # noqa: F811 - the fixture imported above
) -> None:
    (tmp_path / "dev").mkdir()
    elsewhere = tmp_path / "elsewhere"  # no runtime.json here: only the flag says where
    elsewhere.mkdir()
    with running_dev(tmp_path / "dev", "--read-model", redis_url) as folder:
        runtime = json.loads((folder / ".cyclonetix" / "runtime.json").read_text())
        assert runtime["read_model"] == redis_url
        ok, failed = await one_ok_one_failed(folder)

        async def both() -> list[str] | None:
            got = ids(await listed("--read-model", redis_url, cwd=elsewhere))
            return got if got == [failed, ok] else None

        await eventually(both, timeout=30, what="both runs in the Redis read model")
        assert ids(
            await listed("--status", "failed", "--read-model", redis_url, cwd=elsewhere)
        ) == [failed]
        assert ids(await listed("--status", "succeeded", cwd=folder)) == [ok]  # as recorded


async def test_no_read_model_anywhere_is_one_line(tmp_path: Path) -> None:
    done = await acli("runs", "list", cwd=tmp_path)
    assert "no read model: pass --read-model URL" in one_line_error(done)
    assert done.returncode == 2
