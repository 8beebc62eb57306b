"""Run one task command: `sh -c` in its own session, output streamed and bounded, killed on time.

No NATS here. The agent passes a callback for output batches and turns the `CommandResult` into
an event. What this module guarantees:

- The command runs in a new session (its own process group) with stdin from /dev/null, stdout and
  stderr merged into one pipe (so the order is the order a terminal would show), and exactly the
  environment it is given.
- Output reaches `on_output` as bytes, untouched (binary and invalid UTF-8 pass through), in
  batches that end on a line break where possible: a batch goes out once ~64 KiB have accumulated
  or ~50 ms after its first byte, and at exit. After `max_output_bytes` nothing more is forwarded;
  the pipe is still drained (a child blocked on a full pipe would never exit) and one truncation
  note is forwarded at the end.
- Timeout and `cancel` stop the whole process group: SIGTERM, then SIGKILL after `kill_grace`.
- Processes the command leaves behind in its group (`sleep 100 &`) are stopped the same way once
  the command exits: a finished task leaves nothing running on the agent. A process that starts
  its own session (`setsid`, daemons) is outside the group and is not tracked here.
- With a `guard` (the agent's guardian, services.guardian), the process group is registered with
  it from the spawn until it is gone, so the group dies with the agent even when the agent is
  killed with SIGKILL. That costs one pipe write each way, and keeps the spawn a posix_spawn.
- Nothing raises for a command that cannot start: that is a result with reason "spawn_error".
- With a `gate` (a future, e.g. the acknowledgement of the event that records the start), the
  process is spawned at once but runs nothing of the command until the gate is done: its shell
  first blocks reading one line from a pipe on stdin (then stdin is /dev/null again), so fork
  and exec overlap whatever the gate waits for, and releasing it costs one pipe write. A
  process whose releaser dies (the pipe closes) exits without running the command.

Exit codes: a command killed by signal N reports `exit_code = 128 + N` (the shell convention, so
`timeout` results read 143 or 137) and `signal = N`.

An evaluation point's decision file is read only after exit 0 (a failed command decides
nothing); it is capped at 1 MiB, and a bad one is reported in `evaluation_error`.

Speed (this runs once per task): the spawn call blocks the event loop, so it is posix_spawn
(~0.2 ms) when the command runs in our own working directory and vfork-based Popen (~0.3 ms)
otherwise; see `_spawn`. Process exit is watched through a pidfd on the event loop: no thread per
task (asyncio's default child watcher on Python 3.11 starts one thread per subprocess). Without
pidfds (non-Linux) a thread-pool wait is the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from core.errors import Invalid
from core.evaluation import parse_decision
from core.events import EvaluationResult

Reason = Literal["exit", "timeout", "spawn_error", "killed"]

SHELL = "/bin/sh"  # an absolute path: no PATH search, and the command's env may have no PATH
_USE_POSIX_SPAWN = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_OPEN")
_RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(signal, name)
)
FLUSH_BYTES = 64 * 1024
FLUSH_SECONDS = 0.05
TAIL_BYTES = 4 * 1024
EVALUATION_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 10 * 1024 * 1024

_READ_SIZE = FLUSH_BYTES  # so a batch stays under ~128 KiB
_GROUP_POLL_SECONDS = 0.01
# Once the process group is gone, how long a process outside it (one that called setsid) may keep
# the pipe open before we stop reading.
_EOF_GRACE_SECONDS = 1.0
_PROC = Path("/proc")
_STATUS_LOST = 255  # the exit status when someone else reaped our child


class GroupGuard(Protocol):
    """Something that kills a command's process group if its agent dies before the group ends
    (services.guardian.Guardian)."""

    def watch(self, pgid: int) -> None: ...

    def forget(self, pgid: int) -> None: ...


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    reason: Reason
    exit_code: int | None  # 128 + N when killed by signal N; None when it never started
    signal: int | None = None  # the signal that ended the command, if one did
    duration_ms: float = 0.0  # from spawn to the command's exit
    pid: int | None = None
    spawned_at: dt.datetime
    output_tail: str = ""  # the last ~4 KiB of output, decoded with errors="replace"
    total_output_bytes: int = 0  # everything the command wrote, including discarded bytes
    truncated: bool = False
    message: str = ""  # why it failed, in one line (spawn error text, timeout, signal)
    evaluation: EvaluationResult | None = None
    evaluation_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "exit" and self.exit_code == 0


async def run_command(
    command: str,
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    timeout: float | None,
    on_output: Callable[[bytes], None] | None = None,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    kill_grace: float = 5.0,
    eval_result_path: Path | None = None,
    cancel: asyncio.Event | None = None,
    gate: asyncio.Future[Any] | None = None,
    guard: GroupGuard | None = None,
) -> CommandResult:
    """Run `command` to completion (or timeout/cancel) and report what happened.

    `env` is the complete environment of the command; the caller merges. `eval_result_path` is
    read after a successful exit (the caller creates and removes it). Cancelling the coroutine
    itself kills the process group with SIGKILL and re-raises.

    `gate`: hold the command until this future is done (see the module doc); `spawned_at`, the
    duration and the timeout count from the release. If the gate fails, the held process is
    ended without having run anything and the gate's exception is raised. A cancel while held
    ends it the same way, reported as "killed".

    `guard`: told the command's process group right after the spawn, and again once the group
    is gone (see the module doc).
    """
    loop = asyncio.get_running_loop()
    spawned_at = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    try:
        spawned = _spawn(command, env, cwd, gated=gate is not None)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        return CommandResult(
            reason="spawn_error",
            exit_code=None,
            spawned_at=spawned_at,
            message=_spawn_error_message(exc, cwd),
        )

    if guard is not None:
        guard.watch(spawned.pid)  # a new session: its process group id is the shell's pid
    output = _Output(loop, on_output, max_output_bytes)
    child = _Child(loop, spawned, output, kill_grace)
    cancel_watch: asyncio.Task[bool] | None = None
    if cancel is not None:
        if cancel.is_set():
            child.terminate("killed")
        else:
            cancel_watch = asyncio.ensure_future(cancel.wait())
            cancel_watch.add_done_callback(lambda _: child.terminate("killed"))
    timer: asyncio.TimerHandle | None = None
    try:
        if gate is not None and await child.hold_until(gate):
            assert child.released_at is not None
            spawned_at, started = child.released_at
        if timeout is not None:
            timer = loop.call_later(timeout, child.terminate, "timeout")
        # Shielded: cancelling us must not cancel the future the pidfd callback resolves.
        returncode = await asyncio.shield(child.exited)
        duration_ms = (time.perf_counter() - started) * 1000
        if timer is not None:
            timer.cancel()
        if cancel_watch is not None:
            cancel_watch.cancel()
        await child.clean_up_group()
        await child.drain_output()
    except asyncio.CancelledError:
        child.kill_now()
        # Reap it before re-raising: SIGKILL is quick and a zombie must not outlive us.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(child.exited), _EOF_GRACE_SECONDS)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        if cancel_watch is not None:
            cancel_watch.cancel()
        child.close()
        if guard is not None and (child.group_gone or not _group_alive(child.pid)):
            guard.forget(child.pid)
    output.finish()

    sig = -returncode if returncode < 0 else None
    reason: Reason = child.kill_reason or "exit"
    if reason == "timeout":
        message = f"timed out after {timeout:g} s"
    elif reason == "killed":
        message = "killed on request"
    elif sig is not None:
        message = f"terminated by signal {_signal_name(sig)}"
    else:
        message = ""
    if output.callback_error:
        message = "; ".join(m for m in (message, output.callback_error) if m)
    evaluation: EvaluationResult | None = None
    evaluation_error: str | None = None
    if eval_result_path is not None and reason == "exit" and returncode == 0:
        evaluation, evaluation_error = read_evaluation(eval_result_path)
    return CommandResult(
        reason=reason,
        exit_code=128 + sig if sig is not None else returncode,
        signal=sig,
        duration_ms=duration_ms,
        pid=spawned.pid,
        spawned_at=spawned_at,
        output_tail=output.tail_text(),
        total_output_bytes=output.total,
        truncated=output.truncated,
        message=message,
        evaluation=evaluation,
        evaluation_error=evaluation_error,
    )


def read_evaluation(path: Path) -> tuple[EvaluationResult | None, str | None]:
    """Parse an evaluation point's decision file: (result, None), (None, error) or (None, None).

    A missing or empty file means "no decision" (the run does not grow). Blocking file I/O on
    purpose: one small local file per evaluation point.
    """
    try:
        with path.open("rb") as f:
            data = f.read(EVALUATION_MAX_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read evaluation result {path}: {exc.strerror or exc}"
    if len(data) > EVALUATION_MAX_BYTES:
        return None, f"evaluation result is larger than {EVALUATION_MAX_BYTES} bytes"
    if not data.strip():
        return None, None
    try:
        return parse_decision(data), None
    except Invalid as exc:  # strict: a misspelt key fails the evaluation point, naming the key
        return None, f"invalid evaluation result: {exc}"


class _Spawned(NamedTuple):
    pid: int
    fd: int  # read end of the merged stdout/stderr pipe; ours to close
    gate: int | None = None  # write end of the gate pipe (gated commands); ours to close


# Prepended to a gated command, on its first line (line numbers in the shell's messages stay
# the same): wait for the release line on stdin (EOF: the releaser is gone, run nothing), then
# give the command the /dev/null stdin it would have had.
_GATE_PREFIX = "read _cx_gate || exit 125; unset _cx_gate; exec </dev/null; "


def _spawn(
    command: str, env: Mapping[str, str], cwd: Path | None, *, gated: bool = False
) -> _Spawned:
    """Start `sh -c command` in a new session, stdin /dev/null, stdout+stderr into one pipe
    (`gated`: stdin is the gate pipe until the release, see `_GATE_PREFIX`).

    posix_spawn (clone+vfork in glibc) when the command runs in our own working directory:
    about half the cost of subprocess.Popen, and this call blocks the event loop. Popen (also
    vfork-based: no preexec_fn) when it needs another directory, which posix_spawn cannot set
    before Python 3.13.
    """
    read_fd, write_fd = os.pipe()  # both close-on-exec; the child gets dup2'd copies
    gate_read, gate_write = os.pipe() if gated else (None, None)
    argv = [SHELL, "-c", _GATE_PREFIX + command if gated else command]
    try:
        if _USE_POSIX_SPAWN and _is_current_dir(cwd):
            stdin: tuple[Any, ...] = (
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
                if gate_read is None
                else (os.POSIX_SPAWN_DUP2, gate_read, 0)
            )
            pid = os.posix_spawn(
                SHELL,
                argv,
                env,
                file_actions=[
                    stdin,
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ],
                setsid=True,
                # Python ignores SIGPIPE (and SIGXFSZ); commands expect the defaults.
                setsigdef=_RESTORED_SIGNALS,
            )
        else:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if gate_read is None else gate_read,
                stdout=write_fd,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
            # We reap it ourselves: tell Popen, so it neither warns nor waits for it later.
            proc.returncode = 0
            pid = proc.pid
    except BaseException:
        os.close(read_fd)
        if gate_write is not None:
            os.close(gate_write)
        raise
    finally:
        os.close(write_fd)
        if gate_read is not None:
            os.close(gate_read)
    return _Spawned(pid, read_fd, gate_write)


def _is_current_dir(cwd: Path | None) -> bool:
    if cwd is None:
        return True
    try:
        return cwd == Path.cwd()
    except OSError:  # our own working directory is gone
        return False


def seal_inherited_fds() -> None:
    """Make every open descriptor above stderr close-on-exec.

    The posix_spawn path does not close descriptors (Popen's close_fds does): call this once at
    startup so nothing a parent process leaked to us reaches task commands.
    """
    try:
        fds = [int(entry.name) for entry in Path("/proc/self/fd").iterdir()]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)


def _spawn_error_message(exc: BaseException, cwd: Path | None) -> str:
    if isinstance(exc, FileNotFoundError) and cwd is not None and not cwd.is_dir():
        return f"cannot start command: working directory {cwd} does not exist"
    if isinstance(exc, OSError):
        where = f" in {cwd}" if cwd is not None else ""
        return f"cannot start command{where}: {exc.strerror or exc}"
    return f"cannot start command: {exc}"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


class _Output:
    """Batches, bounds and tails the merged output of one command."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_output: Callable[[bytes], None] | None,
        max_bytes: int,
    ) -> None:
        self._loop = loop
        self._on_output = on_output
        self._max = max(0, max_bytes)
        self._buf = bytearray()
        self._accepted = 0  # bytes taken for forwarding (sent or still in _buf)
        self._timer: asyncio.TimerHandle | None = None
        self._tail = bytearray()
        self.total = 0
        self.callback_error = ""

    @property
    def truncated(self) -> bool:
        return self.total > self._max

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._tail += data
        if len(self._tail) > 2 * TAIL_BYTES:
            del self._tail[:-TAIL_BYTES]
        if self._on_output is None:
            return
        room = self._max - self._accepted
        if room <= 0:
            return  # over the limit: read and discard, so the child never blocks on the pipe
        if len(data) > room:
            data = data[:room]
        self._accepted += len(data)
        self._buf += data
        if len(self._buf) >= FLUSH_BYTES:
            self._flush(final=False)
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_SECONDS, self._flush, False)

    def finish(self) -> None:
        self._flush(final=True)
        if self.truncated:
            discarded = self.total - self._max
            self._emit(
                f"\n[cyclonetix: output truncated after {self._max} bytes; "
                f"{discarded} more bytes discarded]\n".encode()
            )

    def tail_text(self) -> str:
        tail = bytes(self._tail[-TAIL_BYTES:])
        if self.total > len(tail):
            # The cut may land inside a UTF-8 sequence: drop its continuation bytes.
            i = 0
            while i < 3 and i < len(tail) and 0x80 <= tail[i] < 0xC0:
                i += 1
            tail = tail[i:]
        return tail.decode("utf-8", errors="replace")

    def _flush(self, final: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buf:
            return
        cut = len(self._buf) if final else self._buf.rfind(b"\n") + 1
        if cut == 0:
            cut = len(self._buf)  # no line break (one long line, a prompt): send what there is
        chunk = bytes(self._buf[:cut])
        del self._buf[:cut]
        self._emit(chunk)
        if self._buf and self._timer is None:
            self._timer = self._loop.call_later(FLUSH_SECONDS, self._flush, False)

    def _emit(self, chunk: bytes) -> None:
        if self._on_output is None:
            return
        try:
            self._on_output(chunk)
        except Exception as exc:  # noqa: BLE001 - a broken sink must not break the command
            # Stop forwarding; the command keeps running and the result says why logs stop.
            self._on_output = None
            self.callback_error = f"output forwarding failed: {exc!r}"


class _Child:
    """One spawned command: its exit, its output pipe and its process group."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spawned: _Spawned,
        output: _Output,
        kill_grace: float,
    ) -> None:
        self._loop = loop
        self.pid = spawned.pid
        self._output = output
        self._kill_grace = max(0.0, kill_grace)
        self._pgid = spawned.pid  # a new session: the shell leads its own group
        self._kill_timer: asyncio.TimerHandle | None = None
        self._terminating = False
        self.kill_reason: Literal["timeout", "killed"] | None = None
        self._gate: int | None = spawned.gate
        self.group_gone = False  # known to have no live member left (clean_up_group)
        self.released_at: tuple[dt.datetime, float] | None = None  # (wall clock, perf counter)

        self._fd: int | None = spawned.fd
        os.set_blocking(spawned.fd, False)
        self.eof: asyncio.Future[None] = loop.create_future()
        loop.add_reader(spawned.fd, self._on_readable)

        self.exited: asyncio.Future[int] = loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            # No pidfds (not Linux, or an old kernel): wait in the default thread pool.
            waiter = loop.run_in_executor(None, _wait, self.pid, 0)
            waiter.add_done_callback(self._on_waited)
        else:
            loop.add_reader(self._pidfd, self._on_exit)

    # -- exit -------------------------------------------------------------------------------

    def _on_exit(self) -> None:
        # The pidfd is readable: the child is a zombie and waitpid(WNOHANG) returns at once.
        self._close_pidfd()
        returncode = _wait(self.pid, os.WNOHANG)
        if returncode is None:
            returncode = _wait(self.pid, 0)
        if not self.exited.done():
            self.exited.set_result(-signal.SIGKILL if returncode is None else returncode)

    def _on_waited(self, fut: asyncio.Future[int | None]) -> None:
        if not self.exited.done():
            code = fut.result() if not fut.cancelled() and fut.exception() is None else None
            self.exited.set_result(-signal.SIGKILL if code is None else code)

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    # -- output -----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._output.feed(data)
            return
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if not self.eof.done():
            self.eof.set_result(None)

    async def drain_output(self) -> None:
        """Read to EOF; give up after a grace when a process outside the group holds the pipe."""
        try:
            await asyncio.wait_for(asyncio.shield(self.eof), _EOF_GRACE_SECONDS)
        except TimeoutError:
            self._close_pipe()

    # -- killing ----------------------------------------------------------------------------

    def terminate(self, reason: Literal["timeout", "killed"] | None) -> None:
        """SIGTERM the group now and SIGKILL it after the grace (once per command)."""
        if self._terminating:
            return
        if reason is not None and self.exited.done():
            return  # the command already finished: a late timeout/cancel changes nothing
        self._terminating = True
        if reason is not None:
            self.kill_reason = reason
        self._signal_group(signal.SIGTERM)
        self._kill_timer = self._loop.call_later(
            self._kill_grace, self._signal_group, signal.SIGKILL
        )

    def kill_now(self) -> None:
        self._signal_group(signal.SIGKILL)

    async def clean_up_group(self) -> None:
        """After the command exited: stop what it left running in its group, wait until gone."""
        if not _group_alive(self._pgid):
            self.group_gone = True
            return
        self.terminate(None)  # a no-op when a timeout/cancel already started the sequence
        deadline = self._loop.time() + self._kill_grace + 1.0
        # Polling: nothing signals the death of processes that are not our children.
        while alive := _group_alive(self._pgid):
            if self._loop.time() >= deadline:
                break
            await asyncio.sleep(_GROUP_POLL_SECONDS)
        self.group_gone = not alive

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, sig)

    # -- the gate -------------------------------------------------------------------------------

    async def hold_until(self, gate: asyncio.Future[Any]) -> bool:
        """Keep the command held until `gate` is done, then release it: True (`released_at`
        says when). False when the held process ended first (killed by a cancel). A failed gate
        ends the held process without running anything and raises the gate's exception."""
        if not gate.done():
            waiter: asyncio.Future[None] = self._loop.create_future()

            def wake(_: object) -> None:
                self._release(gate)  # at once, not a loop turn later in this coroutine
                if not waiter.done():
                    waiter.set_result(None)

            gate.add_done_callback(wake)
            self.exited.add_done_callback(wake)
            try:
                await waiter
            finally:
                gate.remove_done_callback(wake)
                self.exited.remove_done_callback(wake)
        else:
            self._release(gate)
        if self.released_at is not None:
            return True
        self._close_gate()  # EOF: the shell exits without running the command
        if not self.exited.done():
            self.kill_now()
        if gate.done() and (gate.cancelled() or gate.exception() is not None):
            gate.result()  # raises
        return False

    def _release(self, gate: asyncio.Future[Any]) -> None:
        """Let the held command run, if the gate succeeded and the process still waits."""
        if self._gate is None or self.exited.done() or not gate.done():
            return
        if gate.cancelled() or gate.exception() is not None:
            return
        with contextlib.suppress(OSError):  # (the held shell was killed meanwhile: EPIPE)
            os.write(self._gate, b"\n")
        self.released_at = (dt.datetime.now(dt.UTC), time.perf_counter())
        self._close_gate()

    def _close_gate(self) -> None:
        if self._gate is not None:
            os.close(self._gate)
            self._gate = None

    def close(self) -> None:
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self._close_gate()
        self._close_pipe()
        # Cancelled before the exit was seen: the pidfd stays watched, so the zombie is reaped.
        if self._pidfd is not None and self.exited.done():
            self._close_pidfd()


def _wait(pid: int, options: int) -> int | None:
    """Reap `pid`: its returncode (-N when killed by signal N), or None if it still runs."""
    try:
        done, status = os.waitpid(pid, options)
    except ChildProcessError:
        return _STATUS_LOST  # reaped elsewhere (a waitpid(-1) child watcher)
    return os.waitstatus_to_exitcode(status) if done else None


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies do not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg succeeds for zombies too; orphans wait in that state until their new parent reaps
    # them, which some container init processes never do. Look for a member that is not one.
    if not _PROC.is_dir():
        return True
    return any(state != "Z" for state in _group_member_states(pgid))


def _group_member_states(pgid: int) -> list[str]:
    states: list[str] = []
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:  # noqa: PTH123 - hot loop, cheap
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may contain spaces and parens, so split after ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid:
            states.append(fields[0].decode())
    return states
