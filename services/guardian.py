"""The agent's guardian: a tiny process that cleans up after its agent when the agent dies.

Why it exists. A SIGKILLed agent's commands used to keep running while their dispatches went to
other agents (after the work queue's ack_wait, ~30 s): the same task ran twice at once, and
its restart waited for the ack_wait. Every agent therefore starts one guardian (see `Guardian`).
The agent holds the write end of a pipe whose read end is the guardian's stdin, and tells it
through the pipe what to clean up: the process groups of its commands and the work-queue
deliveries it holds. When the agent ends — returning, crashing, OOM-killed, SIGKILLed — the
kernel closes its descriptors, the guardian reads EOF, and at once:

1. SIGKILLs every process group the agent registered and every process whose environment carries
   `CYCLONETIX_AGENT_ID=<the agent's id>` (the agent puts it in every command's environment, and
   children inherit it), with that process's group, again until none is left: the whole tree of
   every command, also what it started in a session of its own (`setsid`, daemons) and what
   scrubbed its environment but stayed in its group. Only a process that both left the session
   and dropped the variable is let go: that is how a command deliberately starts something that
   outlives it;
2. once they are gone, hands the deliveries still held back to the work queue (nak, from a
   connection of its own, see `services.nats.hand_back`), so another agent starts the task at
   once instead of after the ack_wait, and never while the old command still runs;
3. exits. After a clean stop there is nothing registered and nothing held: it just exits.

Why not PR_SET_PDEATHSIG on the commands (the usual answer): (a) it needs code between fork and
exec, which rules out posix_spawn (the agent's hot path, ~0.2 ms against ~1 ms for fork with a
preexec_fn, which is also unsafe once threads exist); (b) it reaches only the process that set
it, not the rest of its group, nor what left the session; (c) it fires when the *thread* that
forked exits, and is cleared by a set-uid exec. A pipe's EOF has none of these limits: it comes
whatever ends the agent, costs the agent one small write per registration, and works on any
POSIX system. Why a process of its own and not a thread, a subreaper or a state file read at
the next start: only something outside the agent's process survives a SIGKILL, and only
something that acts at the moment of the death keeps a command from outliving its agent by more
than a moment and lets its task restart at once.

Robustness of the guardian itself: it runs in a session of its own (a signal to the agent's
process group or a terminal's Ctrl-C does not reach it) and ignores SIGINT, SIGTERM and SIGHUP:
its life is bound to the pipe, nothing else. If it dies anyway, the agent starts a new one and
registers everything again (`Guardian.ensure_running`). Not covered: a SIGKILL of the guardian
together with its agent (a whole container or machine going away), where the commands go with
them or not, and the work queue redelivers after its ack_wait.

A blocked agent (a stalled event loop, SIGSTOP) keeps its pipe open: the guardian does nothing,
so a slow agent never causes a redelivery; only a dead one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

__all__ = ["MARKER_ENV", "Guardian", "main"]

MARKER_ENV = "CYCLONETIX_AGENT_ID"  # in every command's environment: the agent's id
KILL_DEADLINE_S = 5.0  # keep killing (processes that fork while killed) for at most this
HAND_BACK_TIMEOUT_S = 10.0  # trying to reach NATS to hand deliveries back (then: ack_wait)
STOP_WAIT_S = 5.0  # a clean stop waits this long for the guardian to exit
PIPE_SIZE = 1 << 20  # the registration pipe's buffer (Linux lets a user have 1 MiB)
_POLL_S = 0.01
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # where `services` can be imported from


class Guardian:
    """The agent's side: starts the guardian process and keeps it informed.

    Registrations are lines on a pipe. Those of one event-loop turn go out in one write at the
    end of the turn (one wake-up of the guardian, not one per line: it shares the CPU with the
    agent), before a command spawned in that turn can be released from its gate. A pipe that is
    full (a guardian starved of CPU) is written when it drains: nothing is dropped, the agent
    never blocks. Everything registered is also kept here, so a guardian that had to be
    restarted learns it again.
    """

    def __init__(self, marker: str, *, nats_url: str | None = None, log_json: bool = False):
        if not marker or any(c.isspace() for c in marker):
            raise ValueError(f"a guardian marker is one word, not {marker!r}")
        self.marker = marker
        self.nats_url = nats_url
        self.log_json = log_json
        self.groups: set[int] = set()
        self.tokens: set[str] = set()
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._fd: int | None = None
        self._out = bytearray()  # lines not written yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flushing = False  # a flush is scheduled (end of turn, or when writable)
        self._warned = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the guardian process (again, after it died) and register everything known."""
        read_fd, write_fd = os.pipe()  # both close-on-exec: no command ever holds the write end
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "services.guardian"],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                stderr=None,  # the agent's: its report lands in the agent's log
                cwd=_PACKAGE_ROOT,  # `-m` imports from the working directory first
                start_new_session=True,
            )
        except BaseException:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        with contextlib.suppress(AttributeError, OSError):  # Linux: room for bursts
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(write_fd, False)
        self._fd = write_fd
        self._out.clear()  # (what a dead guardian did not read: everything follows again)
        lines = [f"marker {self.marker}", f"log {'json' if self.log_json else 'console'}"]
        if self.nats_url:
            lines.append(f"nats {self.nats_url}")
        lines += [f"+g {pgid}" for pgid in self.groups]
        lines += [f"+d {token}" for token in self.tokens]
        self._send("\n".join(lines))

    def ensure_running(self) -> bool:
        """Start a new guardian if this one died (True when it had to)."""
        if self._process is None or self._process.poll() is None:
            return False
        self._close_pipe()
        self.restarts += 1
        self.start()
        return True

    # -- registrations (services.process.GroupGuard, and the agent's deliveries) --------------

    def watch(self, pgid: int) -> None:
        self.groups.add(pgid)
        self._send(f"+g {pgid}")

    def forget(self, pgid: int) -> None:
        self.groups.discard(pgid)
        self._send(f"-g {pgid}")

    def hold(self, token: str) -> None:
        if token:
            self.tokens.add(token)
            self._send(f"+d {token}")

    def release(self, token: str) -> None:
        if token in self.tokens:
            self.tokens.discard(token)
            self._send(f"-d {token}")

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        self._out += line.encode() + b"\n"
        if self._flushing:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a plain caller): write now
            self._flush()
            return
        self._flushing = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is pending; the rest when the pipe has room again."""
        if self._flushing and self._loop is not None and self._fd is not None:
            self._loop.remove_writer(self._fd)
        self._flushing = False
        if self._fd is None or not self._out:
            return
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            written = 0
        except BrokenPipeError:  # the guardian died: a new one learns everything again
            if self._process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(0.1)
            self.ensure_running()
            return
        del self._out[:written]
        if not self._out:
            return
        if not self._warned:  # (its pipe holds a megabyte: it is far behind)
            self._warned = True
            sys.stderr.write("cyclonetix: the agent's guardian is slow to read its pipe\n")
        if self._loop is not None:
            self._flushing = True
            self._loop.add_writer(self._fd, self._flush)

    # -- stopping -----------------------------------------------------------------------------

    def close(self) -> subprocess.Popen[bytes] | None:
        """Write what is pending, close the pipe (the guardian cleans up what is still
        registered, then exits); the process, to wait for (`stop`)."""
        if self._fd is not None and self._out:
            deadline = time.monotonic() + STOP_WAIT_S
            while self._out and self._process is not None and self._process.poll() is None:
                if time.monotonic() > deadline:
                    break
                with contextlib.suppress(BlockingIOError, BrokenPipeError):
                    del self._out[: os.write(self._fd, self._out)]
                if self._out:
                    select.select([], [self._fd], [], _POLL_S)
        self._close_pipe()
        process, self._process = self._process, None
        return process

    async def stop(self) -> int | None:
        """Close and wait (up to STOP_WAIT_S) for the guardian to exit; its exit code."""
        process = self.close()
        if process is None:
            return None
        deadline = time.monotonic() + STOP_WAIT_S
        while process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)
        return process.returncode

    def _close_pipe(self) -> None:
        if self._fd is not None:
            if self._flushing and self._loop is not None:
                self._loop.remove_writer(self._fd)
            self._flushing = False
            os.close(self._fd)
            self._fd = None


# -- the guardian process ---------------------------------------------------------------------


class _Orders:
    def __init__(self) -> None:
        self.marker = ""
        self.nats_url = ""
        self.log_json = False
        self.groups: set[int] = set()
        self.tokens: dict[str, None] = {}  # in the order they came

    def apply(self, line: str) -> None:
        verb, _, arg = line.strip().partition(" ")
        if verb == "marker":
            self.marker = arg
        elif verb == "nats":
            self.nats_url = arg
        elif verb == "log":
            self.log_json = arg == "json"
        elif verb == "+g" and arg.isdigit():
            self.groups.add(int(arg))
        elif verb == "-g" and arg.isdigit():
            self.groups.discard(int(arg))
        elif verb == "+d" and arg:
            self.tokens[arg] = None
        elif verb == "-d":
            self.tokens.pop(arg, None)


def _read_orders(stream: IO[bytes]) -> _Orders:
    """Follow the agent's orders until EOF: the agent has ended, one way or another."""
    orders = _Orders()
    for raw in stream:
        orders.apply(raw.decode(errors="replace"))
    return orders


def _processes() -> list[tuple[int, int, str]]:
    """(pid, pgid, state) of every process we can see."""
    found: list[tuple[int, int, str]] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:  # noqa: PTH123 - many small reads
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()  # "pid (comm) state ppid pgrp ..."
        if len(fields) >= 3:
            found.append((int(entry.name), int(fields[2]), fields[0].decode()))
    return found


def _carries(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:  # noqa: PTH123
            return needle in b"\0" + f.read()
    except OSError:  # gone, or not ours to read
        return False


def sweep(marker: str, groups: set[int], *, deadline_s: float = KILL_DEADLINE_S) -> int:
    """SIGKILL the registered groups and every process marked with `marker` (with its group),
    until none of them is left or the deadline passes. Returns how many processes were hit."""
    needle = f"\0{MARKER_ENV}={marker}\0".encode() if marker else None
    spared = {os.getpid(), os.getppid()}
    spared_groups = {os.getpgrp()}
    groups = set(groups) - spared_groups
    hit: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while True:
        alive: list[tuple[int, int]] = []
        for pid, pgid, state in _processes():
            if pid in spared or state == "Z":  # zombies are dead: their parent reaps them
                continue
            if pgid in groups or (needle is not None and _carries(pid, needle)):
                alive.append((pid, pgid))
        if not alive or time.monotonic() > deadline:
            return len(hit)
        for pid, pgid in alive:
            hit.add(pid)
            if pgid not in spared_groups:
                groups.add(pgid)
        for pgid in groups:  # whole groups first: no member gets to fork in between
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
        for pid, _ in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(_POLL_S)


def _hand_back(url: str, tokens: list[str]) -> tuple[int, str]:
    """Nak the held deliveries from a connection of our own: (how many, error or '')."""
    from services.nats import hand_back  # only now: a clean stop never pays for the import

    try:
        return asyncio.run(hand_back(url, tokens, timeout=HAND_BACK_TIMEOUT_S)), ""
    except Exception as exc:  # noqa: BLE001 - reported; the work queue's ack_wait remains
        return 0, str(exc) or type(exc).__name__


def _report(orders: _Orders, killed: int, handed_back: int, error: str) -> None:
    import structlog

    from services.logging import configure_logging

    configure_logging(json=orders.log_json, role="guardian")
    log = structlog.get_logger("cyclonetix.guardian")
    fields = {"agent_id": orders.marker, "killed": killed, "handed_back": handed_back}
    if error:
        log.warning("guardian.hand_back_failed", error=error, **fields)
    else:
        log.warning("guardian.agent_gone", **fields)


def main() -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    orders = _read_orders(sys.stdin.buffer)
    killed = sweep(orders.marker, orders.groups) if (orders.marker or orders.groups) else 0
    handed_back, error = 0, ""
    if orders.tokens and orders.nats_url:
        handed_back, error = _hand_back(orders.nats_url, list(orders.tokens))
    if killed or handed_back or error:
        with contextlib.suppress(Exception):  # a closed stderr must not hide the work done
            _report(orders, killed, handed_back, error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
