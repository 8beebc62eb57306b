"""A whole Cyclonetix on one machine: embedded NATS plus every role as its own process.

`cyclonetix dev`, `cyclonetix bench` and the end-to-end tests all run the system this way, so
what they exercise is what an operator deploys: separate processes talking only through NATS.

Stopping is ordered (`stop`): the agents first, all at once, each finishing its running commands
within `shutdown_grace` or handing them back; once every agent has exited, the orchestrator,
which decides what the agents' last results call for and stores it; NATS last, so that every
one of those writes has somewhere to go. `hurry` (a second Ctrl-C) cuts the graces short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from core.definitions import Definitions
from core.errors import Unavailable
from services.embedded_nats import EmbeddedNats, die_with_parent
from services.nats import NatsBackplane, connect
from services.nats.queries import NatsReadModelQueries
from services.read_model_client import is_memory

if TYPE_CHECKING:
    from services.ports import AgentRegistry

log = structlog.get_logger("cyclonetix.cluster")

Printer = Callable[[str, str], None]  # (role, line)
RESTART_DELAY_S = 1.0
# A role still running this long after its grace is killed: an agent's commands get their
# kill grace (5 s) after the shutdown grace, then it hands them back and closes.
STOP_MARGIN_S = 15.0


def queues_of(defs: Definitions) -> list[str]:
    """Every queue some task or DAG entry of the definitions uses, `default` always included."""
    queues = {"default"}
    queues.update(task.queue for task in defs.tasks.values())
    for dag in defs.dags.values():
        queues.update(entry.queue for entry in dag.tasks if entry.queue)
    return sorted(queues)


@dataclass
class Role:
    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    pump: asyncio.Task[None] | None = None
    signalled: bool = False  # told to stop (SIGTERM)


@dataclass
class LocalCluster:
    definitions: Definitions
    data_dir: Path
    agents: int = 2
    concurrency: int = 4
    queues: Sequence[str] | None = None
    nats_url: str | None = None  # given: use that server instead of an embedded one
    replicas: int = 1  # copies of each stream and bucket (3 on a three-node NATS cluster)
    events_max_age: float = 0.0  # seconds CX_EVENTS keeps an event (0: forever)
    printer: Printer | None = None
    log_format: str = "console"
    restart: bool = True  # bring a role that died back (dev); off for benchmarks
    shutdown_grace: float = 30.0  # given to every role (--shutdown-grace), see `stop`
    agent_args: Sequence[str] = ()
    # Given: a projector role keeps this read model up to date; for memory:// it also answers
    # queries over NATS (the store lives in that process: services/read_model_client.py).
    read_model: str | None = None
    # Given: a `ui` role serves the web UI on this port (127.0.0.1). With a memory:// read
    # model it holds the store itself (and answers the queries): no projector role then.
    ui_port: int | None = None
    roles: list[Role] = field(default_factory=list)
    nats: EmbeddedNats | None = None
    stopping: bool = False
    supervisor: asyncio.Task[None] | None = None

    async def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.nats_url is None:
            self.nats = EmbeddedNats(self.data_dir / "nats")
            self.nats_url = await asyncio.to_thread(self.nats.start)
        # Publish the definitions before any role starts, so a run can be scheduled the moment
        # start() returns.
        connecting = connect(
            self.nats_url,
            name="cyclonetix-cluster",
            replicas=self.replicas,
            events_max_age=self.events_max_age,
        )
        async with await connecting as backplane:
            await backplane.definitions.put(self.definitions)
            self._plan_roles()
            for role in self.roles:
                await self._spawn(role)
            await self._wait_for_agents(backplane.agents)
            if self.read_model is not None and is_memory(self.read_model):
                await self._wait_for_queries(backplane)
            if self.ui_port is not None:
                await self._wait_for_ui()
        self.supervisor = asyncio.ensure_future(self._supervise())
        return self.nats_url

    def _plan_roles(self) -> None:
        assert self.nats_url is not None
        cli = [sys.executable, "-m", "services.cli"]
        common = ["--nats-url", self.nats_url, "--log-format", self.log_format]
        common += ["--shutdown-grace", repr(self.shutdown_grace)]
        orchestrator = [*cli, "orchestrator", *common]
        self.roles = [Role("orchestrator", orchestrator)]
        queues = list(self.queues or queues_of(self.definitions))
        for i in range(self.agents):
            argv = [*cli, "agent", *common, "--concurrency", str(self.concurrency)]
            for queue in queues:
                argv += ["--queue", queue]
            argv += list(self.agent_args)
            self.roles.append(Role(f"agent-{i + 1}", argv))
        read_model = self.read_model
        held_by_ui = self.ui_port is not None and (read_model is None or is_memory(read_model))
        if read_model is not None and not held_by_ui:
            argv = [*cli, "projector", "--nats-url", self.nats_url]
            argv += ["--log-format", self.log_format, "--read-model", read_model]
            if is_memory(read_model):
                argv.append("--serve-queries")
            self.roles.append(Role("projector", argv))
        if self.ui_port is not None:
            argv = [*cli, "ui", "--nats-url", self.nats_url, "--log-format", self.log_format]
            argv += ["--port", str(self.ui_port), "--read-model", read_model or "memory://"]
            if held_by_ui:
                argv.append("--serve-queries")
            self.roles.append(Role("ui", argv))

    @property
    def ui_url(self) -> str | None:
        return None if self.ui_port is None else f"http://127.0.0.1:{self.ui_port}"

    def _query_server(self) -> Role:
        """The role that holds a memory store and answers its queries."""
        return next(r for r in self.roles if r.name in ("projector", "ui"))

    async def _spawn(self, role: Role) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        role.process = await asyncio.create_subprocess_exec(
            *role.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop them in order
            preexec_fn=die_with_parent(),  # a killed dev/bench/test run leaves no role behind
        )
        role.pump = asyncio.ensure_future(self._pump(role, role.process))

    async def _pump(self, role: Role, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            if self.printer is not None:
                self.printer(role.name, raw.decode(errors="replace").rstrip("\n"))

    async def _wait_for_agents(self, agents: AgentRegistry, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(await agents.list()) < self.agents:
            for role in self.roles:
                if role.process is not None and role.process.returncode is not None:
                    raise RuntimeError(f"{role.name} exited with code {role.process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents did not register within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def _wait_for_queries(self, backplane: NatsBackplane, timeout: float = 30.0) -> None:
        """Until the projector answers read-model queries (`runs list` works from then on)."""
        queries = NatsReadModelQueries(backplane.connection, timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                await queries.checkpoint()
                return
            except Unavailable:
                server = self._query_server()
                self._check_alive(server)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the {server.name} did not answer within {timeout:.0f}s"
                    ) from None
                await asyncio.sleep(0.05)

    async def _wait_for_ui(self, timeout: float = 30.0) -> None:
        """Until the web UI answers /healthz (NATS and its read model reachable)."""
        import httpx  # (litestar's own dependency; only dev and tests start a UI)

        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.ui_url}/healthz")).status_code == 200:
                        return
                self._check_alive(self.role("ui"))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the web UI did not answer within {timeout:.0f}s")
                await asyncio.sleep(0.05)

    @staticmethod
    def _check_alive(role: Role) -> None:
        if role.process is not None and role.process.returncode is not None:
            raise RuntimeError(f"{role.name} exited with code {role.process.returncode}")

    async def _supervise(self) -> None:
        """A role that dies is started again: its state comes back from the log."""
        while not self.stopping:
            waits = {
                asyncio.ensure_future(role.process.wait()): role
                for role in self.roles
                if role.process is not None
            }
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            for future in done:
                role = waits[future]
                if self.is_stopping():  # (a call: mypy must not narrow the flag)
                    return
                code = future.result()
                if not self.restart:
                    log.error("cluster.role_died", role=role.name, code=code)
                    continue
                role.restarts += 1
                log.warning("cluster.role_restarting", role=role.name, code=code)
                await asyncio.sleep(RESTART_DELAY_S)
                if not self.is_stopping():
                    await self._spawn(role)

    def is_stopping(self) -> bool:
        return self.stopping

    def role(self, name: str) -> Role:
        return next(r for r in self.roles if r.name == name)

    async def stop(self) -> None:
        """Agents first (they finish or hand back their work), then the orchestrator (it decides
        what their results call for), then the projector and the UI (they apply what the
        orchestrator wrote last), then NATS; each role gets SIGTERM and its grace."""
        self.stopping = True
        if self.supervisor is not None:
            self.supervisor.cancel()
        agents = [r for r in self.roles if r.name.startswith("agent")]
        readers = [r for r in self.roles if r.name in ("projector", "ui")]
        others = [r for r in self.roles if r not in agents and r not in readers]
        timeout = self.shutdown_grace + STOP_MARGIN_S
        for group in (agents, others, readers):
            await asyncio.gather(*(self._terminate(role, timeout) for role in group))
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
            self._say("nats stopped")

    def hurry(self) -> None:
        """Stopping: signal the roles told to stop and still running again, so they stop
        without their grace (agents kill their commands at once and hand them back)."""
        for role in self.roles:
            process = role.process
            if role.signalled and process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()

    def _say(self, line: str) -> None:
        if self.printer is not None:
            self.printer("cluster", line)

    async def _terminate(self, role: Role, timeout: float) -> None:
        process = role.process
        if process is None or process.returncode is not None:
            return
        role.signalled = True
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if role.pump is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(role.pump, 2)
        self._say(f"{role.name} stopped (exit code {process.returncode})")
