"""The command line as a user runs it: `cyclonetix dev` in the background, commands beside it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import child_env, from_the_caller

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "services.cli"]
EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(PYTHONPATH=str(EXAMPLES.parents[1])),
    )


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Path]:
    """`cyclonetix dev` started the way the README's first line does, in an empty folder."""
    with running_dev(tmp_path) as folder:
        yield folder


@contextlib.contextmanager
def running_dev(tmp_path: Path, *options: str) -> Iterator[Path]:
    """`cyclonetix dev [options]` in `tmp_path`, until it recorded runtime.json; stopped with
    Ctrl-C after, which must exit 0 and remove the file."""
    env = child_env(PYTHONPATH=str(EXAMPLES.parents[1]))
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen(
        [*CLI, "dev", "--port", "0", *options],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    runtime = tmp_path / ".cyclonetix" / "runtime.json"
    deadline = time.monotonic() + 60
    while not runtime.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"cyclonetix dev did not start:\n{(tmp_path / 'dev.log').read_text()}")
        time.sleep(0.05)
    try:
        yield tmp_path
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -1
        log.close()
        assert code == 0, (tmp_path / "dev.log").read_text()[-3000:]
        assert not runtime.exists()


def test_dev_then_schedule_wait_json_succeeds(dev: Path) -> None:
    done = cli("schedule", "task", "deploy_model", "--wait", "--json", cwd=dev)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    assert result["run_id"].startswith("deploy-model-")
    assert result["tasks"] == {
        "prepare_data": "succeeded",
        "train_model": "succeeded",
        "evaluate_model": "succeeded",
        "deploy_model": "succeeded",
    }
    shown = cli("runs", "show", result["run_id"], "--json", cwd=dev)
    assert json.loads(shown.stdout) == result
    events = cli("events", result["run_id"], cwd=dev)
    assert events.returncode == 0
    lines = events.stdout.splitlines()
    assert "RunScheduled" in lines[0] and "RunSucceeded" in lines[-1]
    logs = cli("logs", result["run_id"], "train_model", cwd=dev)
    assert "training" in logs.stdout


def test_dev_serves_the_web_ui_over_the_store_runs_list_reads(dev: Path) -> None:
    """`dev` starts the UI (its URL in runtime.json); the UI process holds the memory store,
    which `runs list` reads too, and its API shows what the CLI scheduled."""
    ui_url = json.loads((dev / ".cyclonetix" / "runtime.json").read_text())["ui_url"]
    assert httpx.get(f"{ui_url}/healthz", timeout=10).status_code == 200
    done = json.loads(cli("schedule", "task", "transform", "--wait", "--json", cwd=dev).stdout)
    listed = cli("runs", "list", "--json", cwd=dev)
    assert done["run_id"] in listed.stdout, listed.stderr
    deadline = time.monotonic() + 30
    while True:
        run = httpx.get(f"{ui_url}/api/v1/runs/{done['run_id']}", timeout=10)
        if run.status_code == 200 and run.json()["run"]["status"] == "succeeded":
            break
        assert time.monotonic() < deadline, run.text
        time.sleep(0.05)
    page = httpx.get(f"{ui_url}/runs/{done['run_id']}", timeout=10)
    assert page.status_code == 200 and done["run_id"] in page.text


def test_rerun_a_finished_run_and_from_one_task(dev: Path) -> None:
    first = json.loads(cli("schedule", "task", "transform", "--wait", "--json", cwd=dev).stdout)
    assert first["status"] == "succeeded"
    again = cli("runs", "rerun", first["run_id"], "--run-id", "again-1", "--wait", cwd=dev)
    assert again.returncode == 2 and "unrecognized arguments: --wait" in again.stderr
    again = cli("runs", "rerun", first["run_id"], "--run-id", "again-1", "--json", cwd=dev)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"run_id": "again-1", "status": "scheduled"}
    part = cli("runs", "rerun", first["run_id"], "--task", "transform", cwd=dev)
    assert part.returncode == 0, part.stderr
    part_id = part.stdout.strip()
    alias = cli("runs", "rerun", first["run_id"], "--from", "transform", "--run-id", "old", cwd=dev)
    assert alias.returncode == 0, alias.stderr  # --from: the old spelling of --task
    for run_id, tasks in (
        ("again-1", set(first["tasks"])),
        (part_id, {"transform"}),
        ("old", {"transform"}),
    ):
        assert wait_for_end(dev, run_id) == {"run_id": run_id, "status": "succeeded"} | {
            "tasks": dict.fromkeys(tasks, "succeeded")
        }
        # A new run linked to the earlier one, whose own history is untouched.
        scheduled = first_event(dev, run_id)
        assert (scheduled["rerun_of"], scheduled["trigger"]) == (first["run_id"], "rerun")
    assert first_event(dev, first["run_id"])["rerun_of"] is None
    shown = json.loads(cli("runs", "show", first["run_id"], "--json", cwd=dev).stdout)
    assert shown == first
    nothing = cli("runs", "rerun", first["run_id"], "--from-failure", cwd=dev)
    assert nothing.returncode == 2
    assert one_line_error(nothing).endswith(
        f"run {first['run_id']!r} has nothing to rerun from failure: all its 2 tasks succeeded"
    )
    both = cli("runs", "rerun", first["run_id"], "--from-failure", "--task", "extract", cwd=dev)
    assert both.returncode == 2
    assert "argument --task: not allowed with argument --from-failure" in both.stderr
    unknown = cli("runs", "rerun", first["run_id"], "--task", "zzz", cwd=dev)
    assert unknown.returncode == 2
    assert f"run {first['run_id']!r} has no task 'zzz' (its tasks: " in one_line_error(unknown)
    taken = cli("runs", "rerun", first["run_id"], "--run-id", "again-1", cwd=dev)
    assert taken.returncode == 1
    assert one_line_error(taken).endswith("run id 'again-1' is already taken; choose another")
    missing = cli("runs", "rerun", "no-such-run", cwd=dev)
    assert missing.returncode == 2
    assert one_line_error(missing).endswith("no run 'no-such-run'")


def test_rerun_from_failure_runs_only_what_did_not_succeed(dev: Path, tmp_path: Path) -> None:
    """A failed run, the cause fixed outside it, then a rerun from failure: the task that
    succeeded is not run again, the failed one and the one it skipped run and succeed."""
    folder = tmp_path / "defs"
    (folder / "tasks").mkdir(parents=True)
    fixed = tmp_path / "fixed"
    for task_id, deps, command in (
        ("prep", [], "echo prepared"),
        ("flaky", ["prep"], 'test -f "$FIXED" || { echo "not fixed yet" >&2; exit 3; }'),
        ("report", ["flaky"], "echo reported"),
    ):
        parameters = {"FIXED": str(fixed)}
        spec = {"id": task_id, "command": command, "dependencies": deps, "parameters": parameters}
        (folder / "tasks" / f"{task_id}.yaml").write_text(json.dumps(spec))  # (JSON is YAML)
    failed = cli("schedule", "task", "report", "-d", str(folder), "--wait", "--json", cwd=dev)
    assert failed.returncode == 1, failed.stderr
    first = json.loads(failed.stdout)
    assert first["tasks"] == {"prep": "succeeded", "flaky": "failed", "report": "skipped"}
    fixed.touch()
    done = cli("runs", "rerun", first["run_id"], "--from-failure", "--run-id", "ff-1", cwd=dev)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ff-1"
    scheduled = first_event(dev, "ff-1")
    assert scheduled["rerun_of"] == first["run_id"]
    graph = [(n["id"], n["dependencies"]) for n in scheduled["graph"]]
    assert graph == [("flaky", []), ("report", ["flaky"])]  # prep's success is reused
    assert wait_for_end(dev, "ff-1") == {
        "run_id": "ff-1",
        "status": "succeeded",
        "tasks": {"flaky": "succeeded", "report": "succeeded"},
    }
    # The earlier run is a record: it stays failed.
    assert json.loads(cli("runs", "show", first["run_id"], "--json", cwd=dev).stdout) == first


def wait_for_end(dev: Path, run_id: str, timeout: float = 60) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while shown.get("status") not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, shown
        shown = json.loads(cli("runs", "show", run_id, "--json", cwd=dev).stdout)
    return shown


def first_event(dev: Path, run_id: str) -> dict[str, Any]:
    """The run's RunScheduled, as stored."""
    events = cli("events", run_id, "--json", cwd=dev)
    assert events.returncode == 0, events.stderr
    first: dict[str, Any] = json.loads(events.stdout.splitlines()[0])
    assert first["type"] == "RunScheduled"
    return first


def test_schedule_without_wait_and_a_dag_with_params(dev: Path) -> None:
    started = cli("schedule", "dag", "nightly_etl", "--json", cwd=dev)
    assert started.returncode == 0, started.stderr
    first = json.loads(started.stdout)
    assert first["status"] == "scheduled"
    waited = cli(
        "schedule", "dag", "nightly_etl", "--param", "transform.MODE=fast", "--wait", cwd=dev
    )
    assert waited.returncode == 0, waited.stderr
    assert "succeeded" in waited.stdout


def test_a_failed_run_exits_1_with_json(dev: Path) -> None:
    done = cli(
        "schedule",
        "task",
        "flaky_fetch",
        "--param",
        "flaky_fetch.FAIL_ATTEMPTS=9",
        "--wait",
        "--json",
        cwd=dev,
    )
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "failed"


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("cyclonetix: error: ")
    return lines[0]


def test_unknown_task_is_one_clear_line(tmp_path: Path) -> None:
    done = cli(
        "schedule",
        "task",
        "nope",
        "-d",
        str(EXAMPLES),
        "--nats-url",
        "nats://127.0.0.1:1",
        cwd=tmp_path,
    )
    assert "unknown task 'nope'" in one_line_error(done)
    assert done.returncode == 2  # Invalid


def test_malformed_param_is_one_clear_line(tmp_path: Path) -> None:
    done = cli("schedule", "task", "extract", "-d", str(EXAMPLES), "--param", "oops", cwd=tmp_path)
    assert "--param 'oops'" in one_line_error(done)


def test_unreachable_nats_is_one_clear_line(tmp_path: Path) -> None:
    # The command gives up by itself (a few quick connection attempts): it must not retry
    # forever; the timeout only stops waiting for one that would.
    done = cli(
        "schedule", "task", "extract", "--nats-url", "nats://127.0.0.1:1", cwd=tmp_path, timeout=30
    )
    assert "cannot reach NATS at nats://127.0.0.1:1" in one_line_error(done)
    assert done.returncode == 3  # Unavailable: worth trying again later


def test_no_server_known_is_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "runs", "show", "x"], cwd=tmp_path, capture_output=True, text=True, env=child_env()
    )
    assert "no NATS server" in one_line_error(done)


def test_children_get_no_settings_from_the_caller_but_the_ci_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not any(from_the_caller(name) for name in os.environ)  # scrubbed before each test
    monkeypatch.setenv("CYCLONETIX_NATS_URL", "nats://127.0.0.1:1")
    monkeypatch.setenv("CYCLONETIX_STREAM_REPLICAS", "x")
    monkeypatch.setenv("CYCLONETIX_REQUIRE_SERVICES", "1")
    env = child_env(EXTRA="x")
    assert not any(name in env for name in ("CYCLONETIX_NATS_URL", "CYCLONETIX_STREAM_REPLICAS"))
    assert (env["CYCLONETIX_REQUIRE_SERVICES"], env["EXTRA"]) == ("1", "x")
    assert env["PATH"] == os.environ["PATH"]


def test_cyclic_definitions_name_the_whole_cycle(tmp_path: Path) -> None:
    tasks = tmp_path / "defs" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "a.yaml").write_text("id: a\ncommand: 'true'\ndependencies: [c]\n")
    (tasks / "b.yaml").write_text("id: b\ncommand: 'true'\ndependencies: [a]\n")
    (tasks / "c.yaml").write_text("id: c\ncommand: 'true'\ndependencies: [b]\n")
    done = cli("schedule", "task", "a", "-d", str(tmp_path / "defs"), cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "dependency cycle: a -> c -> b -> a" in done.stderr
    validate = cli("validate", str(tmp_path / "defs"), cwd=tmp_path)
    assert validate.returncode == 1 and "dependency cycle" in validate.stderr


def test_dev_gives_its_agents_the_secrets_file(tmp_path: Path) -> None:
    """`dev --secrets-file`: the agents resolve `${secret:NAME}` from it; the log is masked."""
    secrets = tmp_path / "secrets.env"
    secrets.write_text("DB_PASSWORD=pw-4711-xyz\n")
    folder = tmp_path / "defs"
    (folder / "tasks").mkdir(parents=True)
    spec = {
        "id": "connect",
        "command": 'test "$PW" = pw-4711-xyz && echo "using $PW"',
        "parameters": {"PW": "${secret:DB_PASSWORD}"},
    }
    (folder / "tasks" / "connect.yaml").write_text(json.dumps(spec))
    with running_dev(tmp_path, "-d", str(folder), "--secrets-file", str(secrets)) as dev:
        done = cli("schedule", "task", "connect", "--wait", "--json", cwd=dev)
        assert done.returncode == 0, done.stderr
        run_id = json.loads(done.stdout)["run_id"]
        assert cli("logs", run_id, "connect", cwd=dev).stdout == "using ***\n"


def test_dev_refuses_an_unreadable_secrets_file_in_one_line(tmp_path: Path) -> None:
    refused = cli("dev", "--secrets-file", str(tmp_path / "missing.env"), cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "--secrets-file" in one_line_error(refused)
    assert not (tmp_path / ".cyclonetix" / "runtime.json").exists()
