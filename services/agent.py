"""The agent process: takes dispatches from its queues and runs their commands.

What it does:
1. starts its guardian (services.guardian), a small process that, if the agent dies (even by
   SIGKILL), kills what its commands left running at once and hands the dispatches it held back
   to the queue, so they start again on another agent within a second instead of after the
   ack_wait; registers a heartbeat in `cx_agents` (and refreshes it every few seconds);
2. binds to the shared durable pull consumer of each queue it serves (all agents of a queue share
   it: that is the queue group) and keeps one pull request outstanding per queue, so an idle
   agent receives a dispatch the moment it is stored. It never holds more than `concurrency`
   dispatches in total: a pull asks for at most as many messages as there are free slots;
3. for each dispatch: spawns the command (services.process) with the merged environment in the
   work directory at once, but holds it while it claims the start: it reads the run's newest
   event, terminates a dispatch whose attempt is no longer current (core.attempts: run ended or
   being cancelled, attempt ended or superseded) unrun, leaves one that another agent holds
   (the same delivery handed out twice after a NATS restart) to that agent, and otherwise
   appends `TaskStarted` on condition that the event it read is still the newest, so nothing
   can slip in between. It releases the command once the start is stored: an execution is
   always recorded, and process start-up overlaps both round trips.
   Then streams its output to CX_LOGS, tells JetStream the message is still in progress every
   ack_wait/3, appends `TaskSucceeded` or `TaskFailed`, waits until that is stored, and only
   then acks the message. A crash anywhere before means redelivery to another agent
   (delivery + 1), never a lost result or an unrecorded execution. Every command's process
   group and every held dispatch is registered with the guardian until it is settled, and
   every command gets `CYCLONETIX_AGENT_ID` (which the guardian looks for);
4. on stop (SIGTERM/SIGINT): fetches nothing more, lets running commands finish for
   `shutdown_grace` seconds, kills what still runs and hands those dispatches back (nak) for
   another agent, then leaves its queues and deletes its heartbeat. `kill` (a second signal)
   skips the grace and kills at once. Stopping is bounded also while NATS is away: a task
   whose result cannot be stored is handed back once the kill grace is over, and the
   heartbeat's delete waits SHUTDOWN_WRITE_S at most (the entry expires by itself).

`cancel_run(run_id)` kills the commands of a cancelled run and reports them as TaskCancelled,
when the orchestrator announces the cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from core.agents import AgentInfo
from core.attempts import held_elsewhere, why_not_current
from core.env_policy import DEFAULT_ENV_POLICY, EnvPolicy, dispatch_env_problem, value_problem
from core.errors import Conflict, CyclonetixError, Unavailable
from core.events import (
    TERMINAL,
    AnyEvent,
    Dispatch,
    EvaluationResult,
    FailureReason,
    RunCancelRequested,
    TaskCancelled,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
)
from core.secrets import (
    StreamMasker,
    Unresolved,
    mask,
    mask_tail,
    mask_value,
    resolve_references,
)
from services.background import alongside
from services.guardian import MARKER_ENV, Guardian
from services.logging import logs_json
from services.process import DEFAULT_MAX_OUTPUT_BYTES, CommandResult, run_command
from services.retrying import backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from services.ports import Backplane, WorkConsumer, WorkItem

log = structlog.get_logger("cyclonetix.agent")

FETCH_TIMEOUT = 1.0  # an idle pull is renewed this often
BACKLOG_FETCH_TIMEOUT = 0.05  # a batch pull under backlog: bounds a wait for an unfilled batch
HEARTBEAT_INTERVAL = 5.0
ERROR_BACKOFF = 1.0  # after a failed fetch / append, before trying again
# How long a write of the shutdown (the heartbeat's delete, a result, a hand-back) may wait for
# NATS: stopping takes the grace periods plus this, not a publish's full retry deadline.
SHUTDOWN_WRITE_S = 2.0
REPORT_TIMEOUT_S = 10.0  # reporting a dispatch of a cancelled run as cancelled, at most
KILL_MARGIN_S = 1.5  # after kill_grace: a killed command's group is reaped (services.process)
CANCELLED_RUNS_KEPT = 10_000  # announced cancellations remembered
# A start is retried for this share of the ack_wait at most: its dispatch must be handed back
# (or run) before JetStream could redeliver it to another agent.
CLAIM_SHARE = 0.6
LOG_STREAM = "stdout"  # stderr is merged into stdout by services.process (terminal order)
# `${secret:NAME}` resolves from the agent's $CYCLONETIX_SECRET_NAME (before its secrets file);
# these variables are not passed on to commands.
SECRET_ENV_PREFIX = "CYCLONETIX_SECRET_"  # noqa: S105 - a name, not a secret


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 4
    workdir: Path = field(default_factory=Path.cwd)
    ack_wait: float = 30.0
    max_deliver: int = 5
    shutdown_grace: float = 30.0
    kill_grace: float = 5.0  # SIGTERM -> SIGKILL for timeouts and shutdown kills
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    guardian: bool = True  # commands die with the agent, its dispatches go back at once
    # A dispatch whose environment sets a denied name is refused (spawn_error), never run.
    env_policy: EnvPolicy = DEFAULT_ENV_POLICY
    # Secrets by name (the agent's secrets file), for `${secret:NAME}` (core.secrets).
    secrets: Mapping[str, str] = field(default_factory=dict)


def new_agent_id() -> str:
    host = socket.gethostname().split(".")[0] or "agent"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cyclonetix")
    except PackageNotFoundError:
        return ""


class Agent:
    def __init__(
        self, backplane: Backplane, config: AgentConfig, *, agent_id: str | None = None
    ) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not config.queues:
            raise ValueError("an agent needs at least one queue")
        self.backplane = backplane
        self.config = config
        self.id = agent_id or new_agent_id()
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = dt.datetime.now(dt.UTC)
        self.version = agent_version()
        self._slots = _Slots(config.concurrency)
        self._running: dict[asyncio.Task[None], _Running] = {}
        self._stopping = asyncio.Event()  # no new work
        self._eval_dir: Path | None = None
        self._guardian: Guardian | None = None
        # Runs whose cancellation was announced (the newest, in order): a dispatch of one is not
        # started even when the run's newest event does not tell (other events came after).
        self._cancelled_runs: dict[str, None] = {}
        self._claims: dict[str, _RunClaims] = {}  # runs with a claim in progress
        # A snapshot: reading os.environ decodes every variable again (measurable per task).
        base_env = dict(os.environ)
        self._env_secrets = {
            name[len(SECRET_ENV_PREFIX) :]: base_env.pop(name)
            for name in [n for n in base_env if n.startswith(SECRET_ENV_PREFIX)]
        }
        base_env.pop("CYCLONETIX_SECRETS_FILE", None)
        self._base_env = base_env

    def cancel_run(self, run_id: str) -> int:
        """Kill the commands this agent runs for `run_id` (SIGTERM, SIGKILL after kill_grace);
        each is reported as TaskCancelled. Returns how many were running.

        Called when the orchestrator announces a cancellation (CancelSignals.listen).
        """
        self._cancelled_runs[run_id] = None  # (its dispatches still to come: not started)
        while len(self._cancelled_runs) > CANCELLED_RUNS_KEPT:
            del self._cancelled_runs[next(iter(self._cancelled_runs))]
        hits = [r for r in self._running.values() if r.run_id == run_id and not r.kill.is_set()]
        for running in hits:
            running.cancelled = True
            running.kill.set()
        return len(hits)

    @property
    def running(self) -> list[str]:
        """The attempts being executed, as "run_id/task_id/attempt"."""
        return [r.key for r in self._running.values()]

    # -- the process --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, kill: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set, then shut down (see the module doc); `kill` cuts it short."""
        kill = kill or asyncio.Event()
        self._eval_dir = Path(tempfile.mkdtemp(prefix="cyclonetix-agent-"))
        consumers: dict[str, WorkConsumer] = {}
        if self.config.guardian:
            self._guardian = Guardian(self.id, nats_url=self.backplane.url, log_json=logs_json())
            self._guardian.start()  # before the first command can exist
        try:
            with contextlib.suppress(CyclonetixError):  # (the heartbeat loop tries again)
                await self._heartbeat()  # visible at once (`cyclonetix dev` waits for it)
            for queue in self.config.queues:
                if (consumer := await self._bind(queue, stop)) is None:
                    return  # stopped before NATS answered
                consumers[queue] = consumer
            # Heartbeats, in-progress signals and cancellations go on until the last command
            # has ended; the fetchers only until `stop`.
            async with alongside(
                self._heartbeat_loop(), self._progress_loop(), self._cancel_loop()
            ):
                log.info(
                    "agent.started",
                    agent_id=self.id,
                    queues=list(self.config.queues),
                    concurrency=self.config.concurrency,
                    workdir=str(self.config.workdir),
                )
                async with asyncio.TaskGroup() as fetching:
                    fetchers = [
                        fetching.create_task(self._fetch_loop(queue, consumer))
                        for queue, consumer in consumers.items()
                    ]
                    await stop.wait()
                    log.info("agent.stopping", running=len(self._running))
                    self._stopping.set()
                    self._slots.close()
                    # A fetcher ends after its current fetch (at most one fetch timeout)...
                    await _wait_any(asyncio.wait(fetchers), kill)
                    for fetcher in fetchers:
                        fetcher.cancel()  # ...unless `kill` came first
                await self._finish_running(kill)
            # (Loops awaited: no heartbeat put can land after the delete below.)
        finally:
            self._stopping.set()
            self._slots.close()
            if self._running:  # only when run() itself failed or was cancelled
                for task in self._running:
                    task.cancel()
                await asyncio.wait(list(self._running))
            for consumer in consumers.values():
                await consumer.close()
            # Best effort, and bounded: NATS may be away (the heartbeat expires by itself).
            with contextlib.suppress(CyclonetixError, TimeoutError):
                await asyncio.wait_for(self.backplane.agents.remove(self.id), SHUTDOWN_WRITE_S)
            if self._guardian is not None:  # nothing left to clean up: it just exits
                await self._guardian.stop()
            shutil.rmtree(self._eval_dir, ignore_errors=True)
            log.info("agent.stopped", agent_id=self.id)

    async def _bind(self, queue: str, stop: asyncio.Event) -> WorkConsumer | None:
        """The queue's shared consumer, asked for until NATS answers (a restart or a stream
        leader election makes it time out for a while); None when `stop` comes first."""
        delays = backoff(0.1, cap=2.0)
        while not stop.is_set():
            try:
                return await self.backplane.work.consumer(
                    queue, ack_wait=self.config.ack_wait, max_deliver=self.config.max_deliver
                )
            except Unavailable as exc:
                log.warning("agent.queue_unavailable", queue=queue, error=str(exc))
                await _wait_any(asyncio.sleep(next(delays)), stop)
        return None

    async def _finish_running(self, kill: asyncio.Event) -> None:
        """Let running commands finish within the grace, then kill them and hand them back."""
        if self._running:
            log.info(
                "agent.waiting_for_tasks",
                running=self.running,
                grace_seconds=self.config.shutdown_grace,
            )
            await _wait_any(
                asyncio.wait(list(self._running)), kill, timeout=self.config.shutdown_grace
            )
        if self._running and not kill.is_set():
            log.warning("agent.killing_tasks", running=self.running)
            for running in self._running.values():
                running.kill.set()  # SIGTERM, SIGKILL after kill_grace, then nak
            # Bounded: a task whose result NATS does not take (away) would keep retrying.
            killing = self.config.kill_grace + KILL_MARGIN_S + SHUTDOWN_WRITE_S
            await _wait_any(asyncio.wait(list(self._running)), kill, timeout=killing)
        if self._running:
            for task in self._running:
                task.cancel()  # SIGKILL at once (services.process), then nak
            await asyncio.wait(list(self._running))

    # -- taking work --------------------------------------------------------------------------

    async def _fetch_loop(self, queue: str, consumer: WorkConsumer) -> None:
        """Keep a pull request outstanding on `queue` while a slot is free.

        Idle, the pull asks for one dispatch and waits up to FETCH_TIMEOUT: nats-py's batch
        fetch can sit on a message it already received until its timeout when the batch is not
        filled, which would delay pickup. With a backlog (the last item said more are
        pending), it asks for as many as there are free slots, with a short timeout.
        """
        backlog = 0
        while wanted := await self._slots.reserve(backlog):
            timeout = FETCH_TIMEOUT if wanted == 1 else BACKLOG_FETCH_TIMEOUT
            try:
                items = await consumer.fetch(wanted, timeout=timeout)
            except Unavailable as exc:
                self._slots.release(wanted)
                backlog = 0
                log.warning("agent.fetch_failed", queue=queue, error=str(exc))
                await _wait_any(asyncio.sleep(ERROR_BACKOFF), self._stopping)
                continue
            except BaseException:
                self._slots.release(wanted)
                raise
            self._slots.release(wanted - len(items))
            backlog = items[-1].pending if items else 0
            for item in items:
                if self._stopping.is_set():
                    await self._hand_back(item, reason="agent stopping")
                    self._slots.release()
                else:
                    self._start(queue, item)

    def _start(self, queue: str, item: WorkItem) -> None:
        d = item.dispatch
        running = _Running(
            item=item, queue=queue, key=f"{d.run_id}/{d.task_id}/{d.attempt}", run_id=d.run_id
        )
        if self._guardian is not None:
            self._guardian.hold(item.token)  # handed back by the guardian if we die
        task = asyncio.create_task(self._execute(running))
        self._running[task] = running
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        running = self._running.pop(task)
        if self._guardian is not None:  # settled (acked or handed back), or given up on
            self._guardian.release(running.item.token)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("agent.task_crashed", key=running.key, error=repr(exc), exc_info=exc)

    # -- running one dispatch -----------------------------------------------------------------

    async def _execute(self, running: _Running) -> None:
        item = running.item
        d = item.dispatch
        delivery = item.delivery
        # The command is spawned at once but held (run_command's gate) until its start is
        # claimed (see _claim: a read of the run's newest event, then the append of
        # TaskStarted expecting that event to be still the newest); the round trips overlap
        # the command's start-up.
        start = TaskStarted(
            run_id=d.run_id,
            ts=dt.datetime.now(dt.UTC),  # (taken: the start of its handling)
            task_id=d.task_id,
            attempt=d.attempt,
            agent_id=self.id,
            host=self.host,
            pid=self.pid,
            delivery=delivery,
        )
        gate = asyncio.ensure_future(self._claim(item, start))
        with structlog.contextvars.bound_contextvars(
            run_id=d.run_id, task_id=d.task_id, attempt=d.attempt
        ):
            if delivery > 1:
                log.info("task.redelivered", delivery=delivery)
            eval_path = self._eval_path(d)
            try:
                # Two loop turns (the claim's request, then nats-py's flusher) put the read on
                # the socket before the spawn blocks the loop: the round trips then overlap
                # the command's start-up instead of following it.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                masker = StreamMasker(())
                try:
                    refused = dispatch_env_problem(d.env, self.config.env_policy)
                    env: dict[str, str] = {}
                    if refused is None:
                        refused, env, secret_values = self._resolve_secrets(d)
                        masker = StreamMasker(secret_values)
                    if refused is not None:
                        # Defence in depth (an older or hostile writer): nothing is spawned,
                        # but the attempt is claimed and reported failed like any other.
                        result = await _refuse(gate, refused)
                    else:
                        write = self._log_writer(d, masker)
                        result = await run_command(
                            d.command,
                            env=self._environment(d, env, eval_path),
                            cwd=self.config.workdir,
                            timeout=d.timeout_seconds,
                            on_output=write,
                            max_output_bytes=self.config.max_output_bytes,
                            kill_grace=self.config.kill_grace,
                            eval_result_path=eval_path,
                            cancel=running.kill,
                            gate=gate,
                            guard=self._guardian,
                        )
                        if rest := masker.finish():  # held back: it might have been a secret
                            write(rest)
                        result = _masked(result, masker.secrets)
                except HeldElsewhere as exc:  # its holder settles the message, not us
                    log.warning("task.held_elsewhere", reason=str(exc), delivery=delivery)
                    running.settled = True
                    return
                except NotCurrent as exc:  # nothing ran; no result for it, ever...
                    log.info("task.not_current", reason=str(exc), delivery=delivery)
                    running.settled = True
                    if exc.cancelling and delivery > 1:
                        # ...but the cancellation waits for this attempt if an agent that died
                        # had started it: report it cancelled (a no-op for the log otherwise).
                        await self._report_cancelled(d)
                    with contextlib.suppress(Unavailable):
                        await item.term()
                    return
                except Unavailable as exc:  # the start could not be confirmed: nothing ran
                    log.warning("task.start_not_stored", error=str(exc))
                    await self._hand_back(item, reason="its start could not be recorded")
                    return
                if result.reason == "killed" and not running.cancelled:  # shutdown
                    await self._hand_back(item, reason="agent stopped")
                    return
                await self._report(running, result)
            except asyncio.CancelledError:
                # Killed (second signal) before the result was stored: another agent runs it.
                if not running.settled:
                    await self._hand_back(item, reason="agent killed")
                raise
            finally:
                gate.cancel()  # (a no-op once it is done)
                if eval_path is not None:
                    eval_path.unlink(missing_ok=True)

    async def _claim(self, item: WorkItem, start: TaskStarted) -> int:
        """Record the start of the dispatch's attempt if it may still run: its sequence.

        The run's newest event decides (core.attempts: the run ended or is being cancelled, the
        attempt ended or was superseded, or another agent holds this very delivery), and the
        start is appended only while that event is still the newest (expected sequence): no
        cancellation, end of the run or other start can land between the judgement and the
        start. Someone else's event in between (a conflict) means judging again.

        Raises NotCurrent or HeldElsewhere (nothing appended), or Unavailable when NATS did
        not confirm the start within CLAIM_SHARE of the ack_wait (then the dispatch is handed
        back before it could be redelivered to another agent under us). Retrying until then,
        not giving up at the first timeout, is what keeps a start that was stored but whose
        acknowledgement was lost from being recorded without running.
        """
        d = item.dispatch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ack_wait * CLAIM_SHARE
        claims = self._claims.get(d.run_id)
        if claims is None:
            claims = self._claims[d.run_id] = _RunClaims()
        claims.users += 1
        try:
            async with claims.lock:
                return await self._claim_in_turn(d, start, claims, deadline)
        finally:
            claims.users -= 1
            if not claims.users:
                del self._claims[d.run_id]

    async def _claim_in_turn(
        self, d: Dispatch, start: TaskStarted, claims: _RunClaims, deadline: float
    ) -> int:
        events = self.backplane.events
        loop = asyncio.get_running_loop()
        delays = backoff(0.05, ERROR_BACKOFF)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    # Our own previous start of this run, if nothing is known to have come
                    # since (a conflict says otherwise), else a read.
                    last, claims.newest = claims.newest, None
                    if last is None:
                        last = await events.last_event(d.run_id)
                    newest = None if last is None else last[1]
                    if why := held_elsewhere(d, start.delivery, self.id, newest):
                        raise HeldElsewhere(why)
                    if why := why_not_current(d, newest):
                        raise NotCurrent(why, cancelling=isinstance(newest, RunCancelRequested))
                    if d.run_id in self._cancelled_runs:
                        raise NotCurrent("its run is being cancelled (announced)", cancelling=True)
                    if last is None and await events.first_seq(d.run_id) is not None:
                        # The newest event does not decode (a newer writer): nothing to
                        # expect, and nothing it says can be judged here.
                        return await events.append(start)
                    seq = await events.append_expected(start, 0 if last is None else last[0])
                    claims.newest = (seq, start)
                    return seq
            except Conflict:
                continue  # someone appended after the read: judge again
            except NotCurrent:  # (HeldElsewhere too): a judgement, not a failure
                raise
            except Exception as exc:  # NATS away, or a rejection we do not know
                if self.backplane.closed or loop.time() >= deadline:
                    raise Unavailable(f"the start was not confirmed: {exc!r}") from exc
                log.warning("task.start_retrying", error=repr(exc))
                await asyncio.sleep(min(next(delays), max(0.0, deadline - loop.time())))

    def _resolve_secrets(self, d: Dispatch) -> tuple[str | None, dict[str, str], list[str]]:
        """The dispatch's environment with its `${secret:NAME}` replaced, and the secrets'
        values; or why it must not run (one line naming the secret, never a value)."""
        try:
            env, values = resolve_references(d.env, self._secret)
        except Unresolved as exc:
            return f"refused to run the command: {exc}", {}, []
        for name, value in env.items():
            if value != d.env[name] and (problem := value_problem(value)):
                return f"refused to run the command: {name} (with its secret): {problem}", {}, []
        return None, env, values

    def _secret(self, name: str) -> str | None:
        found = self._env_secrets.get(name)
        return found if found is not None else self.config.secrets.get(name)

    def _environment(
        self, d: Dispatch, dispatch_env: Mapping[str, str], eval_path: Path | None
    ) -> dict[str, str]:
        """agent environment < dispatch env (context, parameters, secrets resolved) <
        CYCLONETIX_* of the attempt."""
        env = {**self._base_env, **dispatch_env}
        env["CYCLONETIX_RUN_ID"] = d.run_id
        env["CYCLONETIX_TASK_ID"] = d.task_id
        env["CYCLONETIX_ATTEMPT"] = str(d.attempt)
        env[MARKER_ENV] = self.id  # how the guardian finds what the command started
        if eval_path is not None:
            env["CYCLONETIX_EVAL_RESULT"] = str(eval_path)
        else:
            env.pop("CYCLONETIX_EVAL_RESULT", None)  # never a stale path from our own env
        return env

    def _eval_path(self, d: Dispatch) -> Path | None:
        if not d.evaluation_point:
            return None
        assert self._eval_dir is not None
        return self._eval_dir / f"{secrets.token_hex(8)}.json"

    def _log_writer(self, d: Dispatch, masker: StreamMasker) -> Callable[[bytes], None]:
        logs = self.backplane.logs

        def write(chunk: bytes) -> None:
            if masker.active:  # a secret's value is never stored
                chunk = masker.feed(chunk)
                if not chunk:
                    return
            # Publish errors are logged by the adapter; a lost chunk must not fail the task.
            logs.write_nowait(
                d.run_id, d.task_id, d.attempt, chunk, stream=LOG_STREAM
            ).add_done_callback(_retrieve)

        return write

    async def _report(self, running: _Running, result: CommandResult) -> None:
        """Append the result, wait until it is stored, then ack the dispatch."""
        d = running.item.dispatch
        event: TaskSucceeded | TaskFailed | TaskCancelled
        if running.cancelled and result.reason == "killed":
            event = self._cancelled(d)
        else:
            event = self._result_event(d, result)
        # Pipelined behind this task's log chunks, so the log is complete once the result shows.
        events = self.backplane.events
        while True:
            try:
                await events.append_nowait(event)
                break
            except Unavailable as exc:
                if self.backplane.closed:
                    raise
                # Keep the dispatch (in progress) and keep trying: acking without a stored
                # result would lose it, giving up would run the command again elsewhere.
                log.warning("task.result_not_stored", error=str(exc))
                await asyncio.sleep(ERROR_BACKOFF)
        try:
            # It follows the result on this connection; if it is lost, JetStream redelivers
            # and the orchestrator fences the duplicate attempt.
            running.settled = True
            await running.item.ack()
        except Unavailable as exc:
            log.warning("task.ack_failed", error=str(exc))
        if isinstance(event, TaskSucceeded):
            outcome = "succeeded"
        elif isinstance(event, TaskCancelled):
            outcome = "cancelled"
        else:
            outcome = event.reason
        log.info(
            "task.finished",
            outcome=outcome,
            exit_code=result.exit_code,
            duration_ms=round(result.duration_ms, 1),
        )

    async def _report_cancelled(self, d: Dispatch) -> None:
        """Append TaskCancelled for an attempt of a run being cancelled, unless the run ends
        first (nothing may follow its end): conditional on the newest event read."""
        cancelled = self._cancelled(d)
        events = self.backplane.events
        try:
            async with asyncio.timeout(REPORT_TIMEOUT_S):
                while (last := await events.last_event(d.run_id)) is not None:
                    if isinstance(last[1], TERMINAL):
                        return
                    with contextlib.suppress(Conflict):  # someone appended: read again
                        await events.append_expected(cancelled, last[0])
                        return
        except (Unavailable, TimeoutError) as exc:  # the dispatch is terminated regardless
            log.warning("task.cancel_not_reported", error=str(exc))

    def _cancelled(self, d: Dispatch) -> TaskCancelled:
        return TaskCancelled(
            run_id=d.run_id,
            ts=dt.datetime.now(dt.UTC),
            task_id=d.task_id,
            attempt=d.attempt,
            agent_id=self.id,
        )

    def _result_event(self, d: Dispatch, r: CommandResult) -> TaskSucceeded | TaskFailed:
        ts = dt.datetime.now(dt.UTC)
        duration_ms = round(r.duration_ms, 3)
        spawned_at = r.spawned_at if r.reason != "spawn_error" else None
        if r.ok and r.evaluation_error is None:
            return TaskSucceeded(
                run_id=d.run_id,
                ts=ts,
                task_id=d.task_id,
                attempt=d.attempt,
                agent_id=self.id,
                exit_code=0,
                duration_ms=duration_ms,
                spawned_at=spawned_at,
                output_tail=r.output_tail,
                evaluation=r.evaluation,
            )
        if r.ok:  # the command succeeded but wrote an unusable decision
            reason: FailureReason = "invalid_evaluation"
            message = r.evaluation_error or ""
        elif r.reason == "exit":
            reason, message = "exit", r.message or f"exit code {r.exit_code}"
        else:
            reason, message = r.reason, r.message
        return TaskFailed(
            run_id=d.run_id,
            ts=ts,
            task_id=d.task_id,
            attempt=d.attempt,
            reason=reason,
            agent_id=self.id,
            exit_code=r.exit_code,
            duration_ms=duration_ms,
            spawned_at=spawned_at,
            output_tail=r.output_tail,
            message=message,
        )

    async def _hand_back(self, item: WorkItem, *, reason: str) -> None:
        """Return a dispatch to its queue at once (nak) for another agent."""
        d = item.dispatch
        note = f"\n[cyclonetix: {reason} ({self.id}); task handed back for another agent]\n"
        self.backplane.logs.write_nowait(
            d.run_id, d.task_id, d.attempt, note.encode(), stream=LOG_STREAM
        ).add_done_callback(_retrieve)
        log.warning("task.handed_back", reason=reason)
        with contextlib.suppress(Unavailable):
            await item.nak()

    # -- staying alive ------------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        """Tell JetStream every running dispatch is in progress, well within ack_wait."""
        interval = max(self.config.ack_wait / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            for running in list(self._running.values()):
                with contextlib.suppress(Unavailable):
                    await running.item.in_progress()

    async def _cancel_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                async for run_id in self.backplane.cancels.listen():
                    if killed := self.cancel_run(run_id):
                        log.info("agent.cancelled", run_id=run_id, tasks=killed)
            except Exception as exc:  # noqa: BLE001 - keep listening (NATS away and back)
                log.warning("agent.cancellations_failed", error=repr(exc))
            await _wait_any(asyncio.sleep(ERROR_BACKOFF), self._stopping)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            if self._guardian is not None and self._guardian.ensure_running():
                log.warning("agent.guardian_restarted", restarts=self._guardian.restarts)
            try:
                await self._heartbeat()
            except CyclonetixError as exc:
                log.warning("agent.heartbeat_failed", error=str(exc))

    async def _heartbeat(self) -> None:
        await self.backplane.agents.heartbeat(
            AgentInfo(
                id=self.id,
                host=self.host,
                pid=self.pid,
                queues=list(self.config.queues),
                running=self.running,
                version=self.version,
                started_at=self.started_at,
                seen_at=dt.datetime.now(dt.UTC),
            )
        )


@dataclass(eq=False)
class _Running:
    item: WorkItem
    queue: str
    key: str  # "run_id/task_id/attempt"
    run_id: str
    kill: asyncio.Event = field(default_factory=asyncio.Event)  # SIGTERM, SIGKILL after grace
    cancelled: bool = False  # killed because its run was cancelled (else: handed back)
    settled: bool = False  # acked: the result is stored, nothing to hand back


@dataclass(eq=False)
class _RunClaims:
    """The claims of one run's dispatches on this agent, made one at a time: concurrent claims
    of one run would void each other's expected sequence (each conflict costs two round trips,
    so a wide fan-out would spend most of its time re-judging)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # claims holding or waiting for the lock (the entry goes at 0)
    newest: tuple[int, AnyEvent] | None = None  # our last start: the next claim's expectation


class _Slots:
    """The agent's concurrency: running dispatches plus slots reserved by outstanding pulls.

    An idle queue's pull holds a slot, so with several queues a busy one can use at most
    `concurrency - (queues - 1)` slots while the others are idle; that keeps a pull outstanding
    on every queue (sub-millisecond pickup everywhere) without ever holding more than
    `concurrency` dispatches.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._changed = asyncio.Event()
        self._closed = False

    async def reserve(self, wanted: int) -> int:
        """Wait for a free slot, take up to `wanted` free ones; 0 once closed."""
        while not self._closed:
            free = self.total - self.used
            if free > 0:
                n = min(max(wanted, 1), free)
                self.used += n
                return n
            self._changed.clear()
            await self._changed.wait()
        return 0

    def release(self, n: int = 1) -> None:
        if n > 0:
            self.used -= n
            self._changed.set()

    def close(self) -> None:
        self._closed = True
        self._changed.set()


class NotCurrent(Exception):
    """The dispatch's attempt must not start (core.attempts): fails the held start's gate.
    `cancelling`: because its run is being cancelled (not ended yet)."""

    def __init__(self, why: str, *, cancelling: bool = False) -> None:
        super().__init__(why)
        self.cancelling = cancelling


class HeldElsewhere(NotCurrent):
    """Another agent holds this very delivery (core.attempts.held_elsewhere): it settles it."""


async def _refuse(gate: asyncio.Future[int], message: str) -> CommandResult:
    """The result of a dispatch that must not run: once its start is claimed (`gate` raises
    NotCurrent, HeldElsewhere or Unavailable as for a command), a spawn error, nothing spawned."""
    await gate
    log.warning("task.refused", message=message)
    return CommandResult(
        reason="spawn_error", exit_code=None, spawned_at=dt.datetime.now(dt.UTC), message=message
    )


def _masked(result: CommandResult, secrets: list[str]) -> CommandResult:
    """The result with its secrets' values masked (its output tail, message and an evaluation
    point's decision go into the result event)."""
    if not secrets:
        return result
    tail = result.output_tail
    cut = result.total_output_bytes > len(tail.encode("utf-8", "surrogatepass"))
    evaluation = result.evaluation
    if evaluation is not None:
        builtins = mask_value(msgspec.to_builtins(evaluation), secrets)
        evaluation = msgspec.convert(builtins, EvaluationResult)
    return msgspec.structs.replace(
        result,
        output_tail=mask_tail(tail, secrets) if cut else mask(tail, secrets),
        message=mask(result.message, secrets),
        evaluation=evaluation,
        evaluation_error=None
        if result.evaluation_error is None
        else mask(result.evaluation_error, secrets),
    )


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen (the adapter already logged it)."""
    if not future.cancelled():
        future.exception()


async def _wait_any(
    work: Awaitable[Any], event: asyncio.Event, timeout: float | None = None
) -> None:
    """Wait for `work`, until `event` is set, or `timeout`, whichever comes first.

    Work still going on then is cancelled (cancelling `asyncio.wait(tasks)` leaves the tasks).
    """
    work_task = asyncio.ensure_future(work)
    event_task = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait(
            {work_task, event_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        event_task.cancel()
        work_task.cancel()
        work_task.add_done_callback(_retrieve)
