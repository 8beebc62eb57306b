"""`cyclonetix replay --verify` against the Postgres read model that `cyclonetix dev --read-model
postgresql://…` kept up to date through a mixed workload: nothing differs (exit 0); after rows are
changed by hand, each change is one readable line (exit 1). dev runs with
`nats.events_max_age: 30d` in its cyclonetix.yaml, which its stream then has.

Talks to the machine's Postgres (postgresql://postgres@127.0.0.1:5432, or
$CYCLONETIX_TEST_POSTGRES): a fresh database for the test run, a fresh schema in it (given as
`?schema=`), dropped after. Without a server the test skips; under CYCLONETIX_REQUIRE_SERVICES=1
it fails.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from projections.stores import open_read_model
from services.nats import connect
from services.nats.names import EVENTS_STREAM
from tests.contract.test_read_model_postgres import postgres_db, schema  # noqa: F401 - fixtures
from tests.e2e.test_cli import EXAMPLES, cli, running_dev
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def acli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, cwd=cwd, timeout=120)


async def scheduled(*args: str, cwd: Path, code: int = 0) -> str:
    done = await acli("schedule", *args, "--json", cwd=cwd)
    assert done.returncode == code, done.stderr
    run_id: str = json.loads(done.stdout)["run_id"]
    return run_id


SLOW_TASKS = {
    # Runs until cancelled, however slow the machine (a fixed sleep could end before the
    # cancel arrives on a loaded machine); the timeout only bounds a broken test.
    "slow_start.yaml": (
        "id: slow_start\ncommand: 'until [ -e never ]; do sleep 0.1; done'\ntimeout_seconds: 120\n"
    ),
    "after_slow.yaml": "id: after_slow\ncommand: echo done\ndependencies: [slow_start]\n",
}


def definitions_with_a_slow_chain(folder: Path) -> Path:
    """The bundled examples plus a chain whose first task runs until cancelled (a run to cancel)."""
    defs = folder / "defs"
    shutil.copytree(EXAMPLES, defs)
    for name, text in SLOW_TASKS.items():
        (defs / "tasks" / name).write_text(text)
    return defs


async def mixed_workload(folder: Path) -> dict[str, str]:
    """Runs that succeed, fail after retries, pass an evaluation point, run a DAG, and one
    cancelled while its first task runs: their ids by what they are, every one ended."""
    cancelled = await scheduled("task", "after_slow", cwd=folder)  # not waited for
    stop = await acli("runs", "cancel", cancelled, "--reason", "test", cwd=folder)
    assert stop.returncode == 0, stop.stderr
    ok, failed, evaluated, dag = await asyncio.gather(
        scheduled("task", "extract", "--wait", cwd=folder),
        scheduled(
            "task",
            "flaky_fetch",
            "--param",
            "flaky_fetch.FAIL_ATTEMPTS=9",
            "--wait",
            cwd=folder,
            code=1,
        ),
        scheduled("task", "deploy_model", "--wait", cwd=folder),
        scheduled("dag", "nightly_etl", "--wait", cwd=folder),
    )
    runs = {
        "ok": ok,
        "failed": failed,
        "evaluated": evaluated,
        "dag": dag,
        "cancelled": cancelled,
    }

    async def every_run_ended() -> bool | None:
        done = await acli("runs", "list", "--json", "--limit", "50", cwd=folder)
        if done.returncode != 0:
            return None
        items = json.loads(done.stdout)["items"]
        statuses = {item["run_id"]: item["status"] for item in items}
        ended = {"succeeded", "failed", "cancelled"}
        ok = statuses.keys() == set(runs.values()) and set(statuses.values()) <= ended
        return True if ok else None

    await eventually(every_run_ended, timeout=60, what="every run ended in the read model")
    return runs


async def status_of(folder: Path, run_id: str) -> str:
    done = await acli("runs", "list", "--json", "--limit", "50", cwd=folder)
    assert done.returncode == 0, done.stderr
    status: str = next(
        i["status"] for i in json.loads(done.stdout)["items"] if i["run_id"] == run_id
    )
    return status


async def test_verify_finds_nothing_after_a_mixed_workload_then_each_hand_edit(
    tmp_path: Path,
    postgres_db: str,  # noqa: F811 - the fixture imported above
    schema: str,  # noqa: F811 - the fixture imported above
) -> None:
    url = f"{postgres_db}?schema={schema}"
    defs = definitions_with_a_slow_chain(tmp_path)
    # dev and every command beside it read this: CX_EVENTS keeps events 30 days.
    (tmp_path / "cyclonetix.yaml").write_text("nats:\n  events_max_age: 30d\n")
    with running_dev(tmp_path, "-d", str(defs), "--read-model", url) as folder:
        runtime = json.loads((folder / ".cyclonetix" / "runtime.json").read_text())
        assert runtime["read_model"] == url
        runs = await mixed_workload(folder)
        assert await status_of(folder, runs["cancelled"]) == "cancelled"
        assert await status_of(folder, runs["evaluated"]) == "succeeded"

        # The projector applied everything the log holds.
        async with await connect(runtime["nats_url"], name="pytest", provision=False) as nats:
            last = await nats.events.last_seq()
            info = await nats.connection.js.stream_info(EVENTS_STREAM)
            assert info.config.max_age == 30 * 86_400.0
        store = open_read_model(url)
        try:

            async def applied() -> int | None:
                return last if await store.checkpoint() >= last else None

            await eventually(applied, timeout=30, what=f"the store to apply up to {last}")
            detail = await store.get_run(runs["failed"])
            assert detail is not None
            assert detail.run.status == "failed"
            name = detail.run.name
        finally:
            await store.close()

        same = await acli("replay", "--verify", url, cwd=folder)
        assert (same.returncode, same.stdout) == (0, ""), same.stderr
        assert "no differences" in same.stderr

        # Two rows changed by hand: a run's and one of another run's task runs.
        admin = await asyncpg.connect(postgres_db)
        try:
            changed = await admin.execute(
                f'UPDATE "{schema}".runs SET name = $1 WHERE run_id = $2',
                "edited-by-hand",
                runs["failed"],
            )
            assert changed == "UPDATE 1"
            changed = await admin.execute(
                f"UPDATE \"{schema}\".task_runs SET status = 'failed' "
                "WHERE run_id = $1 AND task_id = 'extract'",
                runs["ok"],
            )
            assert changed == "UPDATE 1"
        finally:
            await admin.close()
        diff = await acli("replay", "--verify", url, cwd=folder)
    assert diff.returncode == 1, diff.stderr
    assert sorted(diff.stdout.splitlines()) == sorted(
        [
            f"run {runs['failed']} name: live edited-by-hand replayed {name}",
            f"run {runs['ok']} tasks[extract].status: live failed replayed succeeded",
        ]
    )
