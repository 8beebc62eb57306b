"""services.process.run_command against real subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import msgspec
import pytest

from core.events import EvaluationResult
from services import process
from services.process import (
    EVALUATION_MAX_BYTES,
    FLUSH_BYTES,
    CommandResult,
    run_command,
    seal_inherited_fds,
)

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class Sink:
    """Collects output batches; can fire an event when some text shows up."""

    def __init__(self, wait_for: bytes | None = None) -> None:
        self.chunks: list[bytes] = []
        self.seen = asyncio.Event()
        self._wait_for = wait_for

    def __call__(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self._wait_for is not None and self._wait_for in self.data:
            self.seen.set()

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def run(command: str, **kwargs: object) -> tuple[CommandResult, Sink]:
    sink = Sink()
    opts: dict[str, object] = {"env": BASE_ENV, "cwd": None, "timeout": 30.0, "on_output": sink}
    opts.update(kwargs)
    result = await run_command(command, **opts)  # type: ignore[arg-type]
    return result, sink


def process_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an unreaped orphan is dead for our purposes)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


# -- exit status ------------------------------------------------------------------------------


async def test_success() -> None:
    result, sink = await run("echo hello")
    assert result.ok
    assert (result.reason, result.exit_code, result.signal) == ("exit", 0, None)
    assert result.output_tail == "hello\n"
    assert sink.data == b"hello\n"
    assert result.pid is not None and result.pid > 0
    assert result.spawned_at.tzinfo is not None
    assert result.duration_ms > 0


@pytest.mark.parametrize("code", [1, 3, 127, 255])
async def test_exit_codes(code: int) -> None:
    result, _ = await run(f"exit {code}")
    assert not result.ok
    assert (result.reason, result.exit_code) == ("exit", code)


async def test_killed_by_signal_reports_128_plus_n() -> None:
    result, _ = await run("kill -SEGV $$")
    assert not result.ok
    assert (result.reason, result.exit_code, result.signal) == ("exit", 128 + 11, 11)
    assert "SIGSEGV" in result.message


async def test_unknown_command_is_an_exit_127_not_a_spawn_error() -> None:
    result, sink = await run("definitely-not-a-command-xyz")
    assert (result.reason, result.exit_code) == ("exit", 127)
    assert b"not found" in sink.data


# -- environment and working directory --------------------------------------------------------


# cwd=None spawns with posix_spawn, another directory with subprocess.Popen: both must behave
# the same.
BOTH_SPAWNERS = pytest.mark.parametrize("elsewhere", [False, True], ids=["posix_spawn", "popen"])


def where(elsewhere: bool, tmp_path: Path) -> Path | None:
    return tmp_path if elsewhere else None


@BOTH_SPAWNERS
async def test_env_is_exactly_what_is_passed(elsewhere: bool, tmp_path: Path) -> None:
    env = {"FOO": "bar baz", "EMPTY": "", "UNICODE": "häßlich ✓", "PATH": BASE_ENV["PATH"]}
    result, sink = await run("env", env=env, cwd=where(elsewhere, tmp_path))
    assert result.ok
    seen = dict(line.split("=", 1) for line in sink.data.decode().splitlines())
    seen.pop("PWD", None)  # the shell itself exports its working directory
    assert seen == env


async def test_cwd(tmp_path: Path) -> None:
    result, sink = await run("pwd", cwd=tmp_path)
    assert result.ok
    assert sink.data.decode().strip() == str(tmp_path.resolve())


@BOTH_SPAWNERS
async def test_stdin_is_dev_null(elsewhere: bool, tmp_path: Path) -> None:
    result, sink = await run("cat; echo done", cwd=where(elsewhere, tmp_path))
    assert result.ok
    assert sink.data == b"done\n"


@BOTH_SPAWNERS
async def test_sigpipe_has_its_default_action(elsewhere: bool, tmp_path: Path) -> None:
    # Python ignores SIGPIPE; a command inheriting that would see `yes` fail on EPIPE instead.
    result, sink = await run("yes | head -n 2", cwd=where(elsewhere, tmp_path))
    assert result.ok
    assert sink.data == b"y\ny\n"


@BOTH_SPAWNERS
async def test_runs_in_a_new_session(elsewhere: bool, tmp_path: Path) -> None:
    # Field 6 of /proc/<pid>/stat is the session id ("(sh)" has no spaces).
    result, sink = await run("cut -d' ' -f6 /proc/$$/stat", cwd=where(elsewhere, tmp_path))
    assert result.ok
    assert int(sink.data) == result.pid
    assert int(sink.data) != os.getsid(0)


async def test_sealed_descriptors_do_not_reach_commands() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        os.set_inheritable(fd, True)
        seal_inherited_fds()
        assert not os.get_inheritable(fd)
        _, sink = await run(f"[ -e /proc/$$/fd/{fd} ] && echo leaked || echo sealed")
        assert sink.data == b"sealed\n"
    finally:
        os.close(fd)


# -- output -----------------------------------------------------------------------------------


async def test_stdout_and_stderr_merged_in_order() -> None:
    result, sink = await run("echo one; echo two >&2; echo three; echo four >&2")
    assert result.ok
    assert sink.data == b"one\ntwo\nthree\nfour\n"


async def test_huge_output_is_bounded_and_the_command_still_exits_normally() -> None:
    total = 20_000_000
    limit = 10 * 1024 * 1024
    result, sink = await run(f"head -c {total} /dev/zero | tr '\\0' x; echo; echo end")
    assert result.ok
    assert result.truncated
    assert result.total_output_bytes == total + 5
    note = (
        f"\n[cyclonetix: output truncated after {limit} bytes; "
        f"{total + 5 - limit} more bytes discarded]\n"
    ).encode()
    assert sink.data == b"x" * limit + note
    assert sink.chunks[-1] == note
    # Batches stay near the flush size (one read past the threshold at most).
    assert max(len(c) for c in sink.chunks) < 2 * FLUSH_BYTES
    # The tail is the real end of the output, not the end of what was forwarded.
    assert result.output_tail.endswith("x\nend\n")
    assert len(result.output_tail) <= 4096


async def test_custom_limit_and_no_note_under_the_limit() -> None:
    result, sink = await run("printf 0123456789", max_output_bytes=4)
    assert result.truncated
    assert sink.data.startswith(b"0123\n[cyclonetix: output truncated after 4 bytes; 6 more")
    result, sink = await run("printf 0123", max_output_bytes=4)
    assert not result.truncated
    assert sink.data == b"0123"


async def test_binary_output_is_byte_exact(tmp_path: Path) -> None:
    payload = os.urandom(100_000) + b"\xff\xfe\x00\xc3(" + os.urandom(1000)
    (tmp_path / "blob").write_bytes(payload)
    result, sink = await run("cat blob", cwd=tmp_path)
    assert result.ok
    assert not result.truncated
    assert sink.data == payload
    assert result.total_output_bytes == len(payload)
    result.output_tail.encode("utf-8")  # decoded with replacement: always valid text


async def test_unicode_output() -> None:
    text = "héllo ✓ 日本語 🚀\n"
    result, sink = await run(f"printf '%s\\n' '{text.strip()}'")
    assert result.ok
    assert sink.data.decode() == text
    assert result.output_tail == text


async def test_tail_does_not_start_with_a_broken_character() -> None:
    result, _ = await run("i=0; while [ $i -lt 3000 ]; do printf '✓'; i=$((i+1)); done")
    assert result.ok
    assert "\ufffd" not in result.output_tail
    assert set(result.output_tail) == {"✓"}


async def test_batches_are_sent_while_running_and_end_on_a_line_break(tmp_path: Path) -> None:
    # The command waits for the test to see its first batch, which only the time-based flush can
    # deliver: the command has not exited and wrote far less than the size threshold.
    go = tmp_path / "go"

    def on_output(chunk: bytes) -> None:
        chunks.append(chunk)
        go.touch()

    chunks: list[bytes] = []
    result = await run_command(
        "printf 'a\\nb'; while [ ! -e go ]; do sleep 0.01; done; printf 'c\\n'",
        env=BASE_ENV,
        cwd=tmp_path,
        timeout=20,
        on_output=on_output,
    )
    assert result.ok
    assert chunks[0] == b"a\n"
    assert b"".join(chunks) == b"a\nbc\n"


async def test_a_failing_output_callback_does_not_break_the_command() -> None:
    def broken(chunk: bytes) -> None:
        raise RuntimeError("sink down")

    result = await run_command(
        "echo hi; echo there", env=BASE_ENV, cwd=None, timeout=10, on_output=broken
    )
    assert result.ok
    assert result.output_tail == "hi\nthere\n"
    assert "sink down" in result.message


async def test_no_output_callback() -> None:
    result = await run_command("echo hi", env=BASE_ENV, cwd=None, timeout=10)
    assert result.ok
    assert result.output_tail == "hi\n"


# -- timeout, cancel, leftovers ---------------------------------------------------------------


@BOTH_SPAWNERS
async def test_timeout_kills_a_sigterm_ignoring_command_and_its_grandchild(
    elsewhere: bool, tmp_path: Path
) -> None:
    sink = Sink(wait_for=b"\n")
    command = run_command(
        "trap '' TERM; sleep 100 & echo $!; wait",
        env=BASE_ENV,
        cwd=where(elsewhere, tmp_path),
        timeout=0.5,
        kill_grace=0.3,
        on_output=sink,
    )
    # Without the kill it would run 100 s: the deadline only stops waiting for that.
    result = await asyncio.wait_for(command, 30)
    grandchild = int(sink.data.split()[0])
    assert result.reason == "timeout"
    assert not result.ok
    assert (result.exit_code, result.signal) == (128 + 9, signal.SIGKILL)  # SIGTERM was ignored
    assert "timed out after 0.5 s" in result.message
    assert not process_running(grandchild)


async def test_timeout_with_a_command_that_stops_on_sigterm() -> None:
    # SIGTERM was enough: the command ended by it, and nothing waits out the hour-long grace
    # before SIGKILL (the deadline only stops waiting for a run_command that would).
    result, _ = await asyncio.wait_for(run("sleep 100", timeout=0.2, kill_grace=3600), 30)
    assert result.reason == "timeout"
    assert (result.exit_code, result.signal) == (128 + 15, signal.SIGTERM)


async def test_cancel_kills_the_group() -> None:
    cancel = asyncio.Event()
    sink = Sink(wait_for=b"\n")
    task = asyncio.create_task(
        run_command(
            "sleep 100 & echo $!; wait",
            env=BASE_ENV,
            cwd=None,
            timeout=60,
            on_output=sink,
            cancel=cancel,
        )
    )
    await asyncio.wait_for(sink.seen.wait(), 10)
    cancel.set()
    result = await asyncio.wait_for(task, 20)
    assert result.reason == "killed"
    assert not result.ok
    assert result.message == "killed on request"
    assert not process_running(int(sink.data.split()[0]))


async def test_cancel_already_set_before_start() -> None:
    cancel = asyncio.Event()
    cancel.set()
    result, _ = await run("sleep 100", cancel=cancel)
    assert result.reason == "killed"


async def test_a_cancel_after_the_command_exited_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cancel that arrives once the command has exited, while run_command is still putting the
    result together, must not turn a success into "killed". run_command is held in its output
    drain by a process outside the command's group that keeps the pipe open."""
    monkeypatch.setattr(process, "_EOF_GRACE_SECONDS", 60.0)
    cancel = asyncio.Event()
    sink = Sink(wait_for=b"outsider")
    ready = tmp_path / "ready"  # the outsider has left the group: the shell may exit
    task = asyncio.create_task(
        run_command(
            f"echo shell $$; setsid sh -c 'echo outsider $$; touch {ready}; exec sleep 60' & "
            f"while [ ! -e {ready} ]; do sleep 0.01; done",
            env=BASE_ENV,
            cwd=None,
            timeout=60,
            on_output=sink,
            cancel=cancel,
        )
    )
    await asyncio.wait_for(sink.seen.wait(), 10)
    while not sink.data.endswith(b"\n"):
        await asyncio.sleep(0.01)
    pids = {name: int(pid) for name, pid in (line.split() for line in sink.data.splitlines())}
    try:
        while Path(f"/proc/{pids[b'shell']}").exists():  # until exited and reaped by run_command
            await asyncio.sleep(0.001)
        assert not task.done()  # still draining the pipe the outsider holds
        cancel.set()
        await asyncio.sleep(0.1)  # whatever listens to the cancel has heard it
        assert not task.done()
    finally:
        os.kill(pids[b"outsider"], signal.SIGKILL)
    result = await asyncio.wait_for(task, 10)
    assert (result.reason, result.exit_code, result.signal, result.message) == ("exit", 0, None, "")
    assert result.ok


async def test_processes_left_in_the_group_are_stopped_after_exit() -> None:
    sink = Sink()
    result = await run_command(
        "sleep 100 & echo $!", env=BASE_ENV, cwd=None, timeout=30, on_output=sink
    )
    assert result.ok  # the command itself succeeded; only its leftovers were stopped
    assert not process_running(int(sink.data.split()[0]))


async def test_cancelling_the_coroutine_kills_the_command() -> None:
    sink = Sink(wait_for=b"\n")
    task = asyncio.create_task(
        run_command("echo $$; sleep 100", env=BASE_ENV, cwd=None, timeout=60, on_output=sink)
    )
    await asyncio.wait_for(sink.seen.wait(), 10)
    shell = int(sink.data.split()[0])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 10
    while process_running(shell) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not process_running(shell)


@BOTH_SPAWNERS
async def test_no_thread_per_command(elsewhere: bool, tmp_path: Path) -> None:
    before = threading.active_count()
    results = await asyncio.gather(
        *(run("true", cwd=where(elsewhere, tmp_path)) for _ in range(10))
    )
    assert all(r.ok for r, _ in results)
    assert threading.active_count() == before


async def test_concurrent_commands_do_not_mix_output() -> None:
    results = await asyncio.gather(
        *(run(f"echo task{i}; sleep 0.05; echo end{i}") for i in range(8))
    )
    for i, (result, sink) in enumerate(results):
        assert result.ok
        assert sink.data == f"task{i}\nend{i}\n".encode()


# -- spawn errors -----------------------------------------------------------------------------


async def test_missing_cwd_is_a_spawn_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result, sink = await run("true", cwd=missing)
    assert result.reason == "spawn_error"
    assert not result.ok
    assert result.exit_code is None
    assert result.pid is None
    assert str(missing) in result.message
    assert "does not exist" in result.message
    assert sink.chunks == []


@BOTH_SPAWNERS
async def test_env_with_nul_byte_is_a_spawn_error(elsewhere: bool, tmp_path: Path) -> None:
    result, _ = await run("true", env={"BAD": "a\0b"}, cwd=where(elsewhere, tmp_path))
    assert result.reason == "spawn_error"
    assert "null" in result.message


# -- evaluation points ------------------------------------------------------------------------


async def test_evaluation_result_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    decision = {
        "next_tasks": ["train", "score"],
        "parameters": {"train": {"EPOCHS": "3"}},
        "context_updates": {"MODEL": "m1"},
    }
    body = msgspec.json.encode(decision).decode()
    result, _ = await run(
        f"printf '%s' '{body}' > \"$CYCLONETIX_EVAL_RESULT\"",
        env={**BASE_ENV, "CYCLONETIX_EVAL_RESULT": str(path)},
        eval_result_path=path,
    )
    assert result.ok
    assert result.evaluation_error is None
    assert result.evaluation == EvaluationResult(
        next_tasks=("train", "score"),
        parameters={"train": {"EPOCHS": "3"}},
        context_updates={"MODEL": "m1"},
    )


async def test_evaluation_file_missing_means_no_decision(tmp_path: Path) -> None:
    result, _ = await run("true", eval_result_path=tmp_path / "eval.json")
    assert result.ok
    assert (result.evaluation, result.evaluation_error) == (None, None)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{not json", "invalid evaluation result"),
        ('{"next_tasks": "train"}', "invalid evaluation result"),
        ('["a"]', "invalid evaluation result"),
        # Strict: a misspelt key is an error naming it, never a silent "no decision".
        (
            '{"next_task": ["train"]}',
            "invalid evaluation result: unknown key 'next_task' (did you mean 'next_tasks'?)",
        ),
        ('{"next_tasks": ["train"], "contxt_updates": {}}', "unknown key 'contxt_updates'"),
    ],
)
async def test_invalid_evaluation_result(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "eval.json"
    path.write_text(content)
    result, _ = await run("true", eval_result_path=path)
    assert result.ok  # the command succeeded; the agent turns this into invalid_evaluation
    assert result.evaluation is None
    assert result.evaluation_error is not None
    assert error in result.evaluation_error


async def test_oversized_evaluation_result(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_bytes(b" " * (EVALUATION_MAX_BYTES + 1))
    result, _ = await run("true", eval_result_path=path)
    assert result.evaluation is None
    assert result.evaluation_error is not None
    assert "larger than" in result.evaluation_error


async def test_evaluation_of_a_failed_command_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_text("{not json")
    result, _ = await run("exit 2", eval_result_path=path)
    assert (result.evaluation, result.evaluation_error) == (None, None)
