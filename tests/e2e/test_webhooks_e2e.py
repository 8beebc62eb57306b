"""Completion webhooks from a real orchestrator process: the notifier starts with it, reads the
secret from its environment and the retry policy from its settings, and `cyclonetix events`
shows every attempt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.definitions import Definitions
from core.definitions.model import DagDef, DagTask, NotifyDef, TaskDef
from core.events import NotificationDelivered, NotificationEvent, RunFailed
from tests.e2e.conftest import System, child_env
from tests.integration.test_webhooks import SECRET, Receiver, receiver, verify
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

__all__ = ["receiver"]  # (the fixture, imported for the tests below)


async def test_a_failed_dag_run_posts_its_signed_summary_after_one_retry(
    system: System, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The orchestrator process inherits this environment: its secret and its settings.
    monkeypatch.setenv("CX_E2E_HOOK_SECRET", SECRET)
    monkeypatch.setenv("CYCLONETIX_NOTIFY_FIRST_DELAY", "0.2")
    receiver.scripts["/hook"] = [500, 200]
    hook = NotifyDef(url=receiver.url("/hook"), on=("failed",), secret_env="CX_E2E_HOOK_SECRET")
    definitions = Definitions(
        tasks={
            "extract": TaskDef(id="extract", command="true"),
            "load": TaskDef(id="load", command="exit 3", dependencies=("extract",)),
        },
        dags={
            "etl": DagDef(
                id="etl", tasks=(DagTask(id="extract"), DagTask(id="load")), notify=(hook,)
            )
        },
    )
    async with system(definitions) as sys_:
        run_id = await sys_.schedule("etl", kind="dag")
        events = await sys_.until_end(run_id)
        assert isinstance(events[-1], RunFailed)

        async def delivered() -> list[NotificationEvent] | None:
            found: list[NotificationEvent] = [
                e
                for _, e in await sys_.backplane.events.history(run_id)
                if isinstance(e, NotificationEvent)
            ]
            return found if any(isinstance(e, NotificationDelivered) for e in found) else None

        records = await eventually(delivered, timeout=30)
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "services.cli",
                "events",
                run_id,
                "--nats-url",
                sys_.backplane.url,
            ],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
            check=False,
        )
    assert [(type(e).__name__, e.attempt, e.status) for e in records] == [
        ("NotificationFailed", 1, 500),
        ("NotificationDelivered", 2, 200),
    ]
    first, second = receiver.at("/hook")
    assert first.body == second.body
    assert verify(SECRET.encode(), second.headers, second.body)
    body = json.loads(second.body)
    assert (body["run_id"], body["kind"], body["target"], body["status"]) == (
        run_id,
        "dag",
        "etl",
        "failed",
    )
    assert body["failed_tasks"] == ["load"] and body["tasks"]["succeeded"] == 1
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "NotificationFailed" in lines[-2] and "error=HTTP 500" in lines[-2]
    assert "retrying=True" in lines[-2] and "attempt=1" in lines[-2]
    assert "NotificationDelivered" in lines[-1] and "attempt=2" in lines[-1]
    assert f"url={receiver.url('/hook')}" in lines[-1]
