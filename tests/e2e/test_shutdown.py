"""Stopping gracefully, with real processes: `cyclonetix dev` stops its agents first (a running
task finishes within the shutdown grace, or is handed back), then the orchestrator (which still
decides what the agents' last results call for), then the projector, then NATS; the grace comes
from the flag or the setting; a second signal cuts it short. The order shows in the outcome: a
task that finished during the agents' grace has its run ended, which needs the orchestrator and
NATS still up."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.events import AnyEvent, RunSucceeded, TaskStarted, TaskSucceeded
from services.embedded_nats import EmbeddedNats
from services.nats import connect
from tests.e2e.conftest import child_env
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

CLI = [sys.executable, "-m", "services.cli"]
SLOW = "touch started; while [ ! -e go ]; do sleep 0.02; done; echo finished"
STOPPED = re.compile(r"^cluster\s*\| (\S+) stopped")


class Dev:
    """`cyclonetix dev` in `folder` (one agent, the definitions in ./defs), output in a file."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.log_file = folder / f"dev-{len(list(folder.glob('dev-*.log')))}.log"
        with self.log_file.open("wb") as out:
            self.proc = subprocess.Popen(
                [*CLI, "dev", "-d", "defs", "--agents", "1", "--port", "0", *args],
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(**(env or {})),
            )

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def started(self) -> None:
        runtime = self.folder / ".cyclonetix" / "runtime.json"

        async def probe() -> bool | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"dev exited with {self.proc.returncode}:\n{self.log}")
            return True if runtime.exists() else None

        await eventually(probe, timeout=60, what="cyclonetix dev to start")

    async def says(self, text: str) -> None:
        async def probe() -> bool | None:
            return True if text in self.log else None

        await eventually(probe, timeout=60, what=f"{text!r} in the dev output")

    async def exited(self) -> int:
        async def probe() -> int | None:
            return self.proc.poll()

        return await eventually(probe, timeout=90, what="cyclonetix dev to exit")

    def stop_order(self) -> list[str]:
        return [m[1] for line in self.log.splitlines() if (m := STOPPED.match(line))]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    tasks = tmp_path / "defs" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "slow.yaml").write_text(f"id: slow\ncommand: '{SLOW}'\n")
    return tmp_path


def schedule(folder: Path, task: str) -> str:
    done = subprocess.run(
        [*CLI, "schedule", "task", task, "-d", "defs", "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    run_id: str = json.loads(done.stdout)["run_id"]
    return run_id


async def stored_history(folder: Path, run_id: str) -> list[AnyEvent]:
    """The run's events, read from the data folder after dev has stopped (its NATS too)."""
    server = EmbeddedNats(folder / ".cyclonetix" / "nats")
    server.start()
    try:
        async with await connect(server.url, name="pytest-shutdown") as backplane:
            return [e for _, e in await backplane.events.history(run_id)]
    finally:
        server.stop()


async def wait_for(path: Path) -> None:
    async def probe() -> bool | None:
        return True if path.exists() else None

    await eventually(probe, timeout=60, what=f"{path.name} to exist")


async def test_dev_stops_agents_then_the_orchestrator_then_nats_and_a_running_task_finishes(
    folder: Path,
) -> None:
    dev = Dev(folder, "--shutdown-grace", "120")
    try:
        await dev.started()
        run_id = schedule(folder, "slow")
        await wait_for(folder / "started")

        dev.proc.send_signal(signal.SIGTERM)
        await dev.says("agent.waiting_for_tasks")  # the agent is in its grace, with the task
        (folder / "go").touch()

        assert await dev.exited() == 0, dev.log
    finally:
        dev.proc.kill()
    assert "grace_seconds=120.0" in dev.log  # the flag reached the agent
    assert dev.stop_order() == ["agent-1", "orchestrator", "ui", "nats"]
    events = await stored_history(folder, run_id)
    done = [e for e in events if isinstance(e, TaskSucceeded)]
    assert [d.output_tail for d in done] == ["finished\n"]
    # Stored after the agent's result: the orchestrator and NATS were still up then.
    assert isinstance(events[-1], RunSucceeded)


async def test_a_task_still_running_after_the_grace_is_handed_back(folder: Path) -> None:
    """The grace from the setting ($CYCLONETIX_SHUTDOWN_GRACE); the task runs again, and
    finishes, when dev is started again."""
    dev = Dev(folder, env={"CYCLONETIX_SHUTDOWN_GRACE": "0.5"})
    try:
        await dev.started()
        run_id = schedule(folder, "slow")
        await wait_for(folder / "started")

        dev.proc.send_signal(signal.SIGINT)

        assert await dev.exited() == 0, dev.log
    finally:
        dev.proc.kill()
    assert "grace_seconds=0.5" in dev.log
    assert "task.handed_back" in dev.log
    assert dev.stop_order() == ["agent-1", "orchestrator", "ui", "nats"]

    (folder / "go").touch()
    again = Dev(folder)
    try:
        await again.started()
        await again.says("task.finished")
        again.proc.send_signal(signal.SIGINT)
        assert await again.exited() == 0, again.log
    finally:
        again.proc.kill()
    events = await stored_history(folder, run_id)
    starts = [e for e in events if isinstance(e, TaskStarted)]
    assert [(s.attempt, s.delivery) for s in starts] == [(1, 1), (1, 2)]
    assert isinstance(events[-1], RunSucceeded)


async def test_a_second_signal_cuts_the_grace_short(folder: Path) -> None:
    dev = Dev(folder, "--shutdown-grace", "3600")
    try:
        await dev.started()
        run_id = schedule(folder, "slow")
        await wait_for(folder / "started")

        dev.proc.send_signal(signal.SIGINT)
        await dev.says("agent.waiting_for_tasks")
        dev.proc.send_signal(signal.SIGINT)

        assert await dev.exited() == 0, dev.log  # long before the hour
    finally:
        dev.proc.kill()
    assert "task.handed_back" in dev.log
    assert dev.stop_order() == ["agent-1", "orchestrator", "ui", "nats"]
    events = await stored_history(folder, run_id)
    assert not any(isinstance(e, TaskSucceeded) for e in events)
