"""NATS security against a real nats-server: the per-role users of infra/nats/roles.conf,
credentials and TLS from the settings (services.settings, services.nats.connection).

A refused connection is one line naming the server (`cannot reach NATS at ...: authentication
failed ...`, exit code 3 from the CLI), never a traceback and never the secret; the example
permissions deny what they promise (an agent cannot publish triggers, delete streams or
consumers, or consume another queue; each role appends only its own event types; agents and the
projector cannot read the UI's logins; no role but the orchestrator and the operator creates a
stream) and allow what a real agent does (a dispatch run to its result by an in-process Agent
logged in as `agent-default`), and what the UI and the projector do. An nkey user logs in with
its seed file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import nkeys
import pytest

from core.errors import Unavailable
from core.events import (
    AnyEvent,
    Dispatch,
    QueuedTask,
    RunCancelRequested,
    RunScheduled,
    RunSucceeded,
    TaskQueued,
    TasksQueued,
    TaskStarted,
    TaskSucceeded,
    encode,
)
from projections.memory import MemoryReadModel
from services import commands
from services.agent import Agent, AgentConfig
from services.embedded_nats import EmbeddedNats, find_nats_server
from services.nats import NatsBackplane, connect
from services.nats.connection import Connection
from services.nats.names import (
    AUTH_BUCKET,
    EVENTS_STREAM,
    SESSIONS_BUCKET,
    WORK_STREAM,
    event_subject_of,
    kv_subject,
)
from services.nats.provisioning import stream_configs
from services.projector import replay
from services.settings import FIELDS, NatsSettings
from tests.conftest import start_nats
from tests.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
ROLES_CONF = REPO / "infra" / "nats" / "roles.conf"
PASSWORDS = {
    "operator": "op-secret-1",
    "orchestrator": "orch-secret-2",
    "agent-default": "agent-secret-3",
    "ui": "ui-secret-4",
    "projector": "proj-secret-5",
    "trigger": "trig-secret-6",
    "system": "sys-secret-7",
}
PASSWORD_ENV = {
    "operator": "CX_OPERATOR_PASSWORD",
    "orchestrator": "CX_ORCHESTRATOR_PASSWORD",
    "agent-default": "CX_AGENT_PASSWORD",
    "ui": "CX_UI_PASSWORD",
    "projector": "CX_PROJECTOR_PASSWORD",
    "trigger": "CX_TRIGGER_PASSWORD",
    "system": "CX_SYSTEM_PASSWORD",
}


NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def as_user(user: str, **tls: object) -> NatsSettings:
    return NatsSettings(user=user, password=PASSWORDS[user], **tls)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_settings_from_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in FIELDS:
        monkeypatch.delenv(field.env, raising=False)
    monkeypatch.delenv("CYCLONETIX_CONFIG", raising=False)


def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> EmbeddedNats:
    """A nats-server with the example roles (passwords through its environment) and `extra`."""
    for user, env in PASSWORD_ENV.items():
        monkeypatch.setenv(env, PASSWORDS[user])
    data = tmp_path / "nats"
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROLES_CONF, data / "roles.conf")
    return start_nats(tmp_path, extra_config=f"{extra}\ninclude roles.conf")


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    server = start(tmp_path, monkeypatch, "")
    try:
        yield server
    finally:
        server.stop()


# -- certificates (openssl CLI: the `cryptography` package is not installed) -------------------


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def make_ca(folder: Path, name: str) -> Path:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem"


def make_cert(folder: Path, name: str, ca: str, *, san: str) -> tuple[Path, Path]:
    (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}-key.pem",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}-key.pem"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path / "certs"
    folder.mkdir()
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_cert(folder, "server", "ca", san="IP:127.0.0.1,DNS:localhost")
    make_cert(folder, "client", "ca", san="DNS:agent")
    return folder


def tls_block(certs: Path, *, verify: bool = False) -> str:
    lines = [
        "tls {",
        f'  cert_file: "{certs / "server.pem"}"',
        f'  key_file: "{certs / "server-key.pem"}"',
    ]
    if verify:
        lines += [f'  ca_file: "{certs / "ca.pem"}"', "  verify: true"]
    return "\n".join([*lines, "  timeout: 2", "}"])


# -- the CLI, as a role process reads its settings ----------------------------------------------


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CYCLONETIX_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# -- authentication -----------------------------------------------------------------------------


async def test_a_wrong_password_is_one_line_naming_the_server(secured: EmbeddedNats) -> None:
    wrong = NatsSettings(user="agent-default", password="not-the-password")
    with pytest.raises(Unavailable) as caught:
        await connect(secured.url, name="pytest", security=wrong)
    message = one_line(str(caught.value))
    assert message == f"cannot reach NATS at {secured.url}: authentication failed " + (
        "(the server refused these credentials)"
    )
    assert "not-the-password" not in message


async def test_no_credentials_at_all_are_refused_too(secured: EmbeddedNats) -> None:
    with pytest.raises(Unavailable) as caught:
        await connect(secured.url, name="pytest", security=NatsSettings())
    assert "authentication failed" in one_line(str(caught.value)), caught.value


async def test_right_credentials_connect(secured: EmbeddedNats) -> None:
    async with await connect(secured.url, name="pytest", security=as_user("operator")) as bp:
        assert await bp.events.last_seq() == 0


def test_every_role_takes_the_credentials_from_its_settings(
    secured: EmbeddedNats, tmp_path: Path
) -> None:
    """A CLI command (any role: they all connect through services.nats.connect) with a wrong
    password from the environment: exit code 3 and one line; with the right one from a file
    (CYCLONETIX_NATS_PASSWORD_FILE): connected (the run does not exist: exit code 2)."""
    base = {"CYCLONETIX_NATS_URL": secured.url, "CYCLONETIX_NATS_USER": "operator"}
    done = cli("events", "no-such-run", env={**base, "CYCLONETIX_NATS_PASSWORD": "wrong-pw"})
    line = one_line(done.stderr)
    assert done.returncode == 3, done.stderr
    assert line == (
        f"cyclonetix: error: cannot reach NATS at {secured.url}: authentication failed "
        "(the server refused these credentials)"
    )
    assert "wrong-pw" not in done.stderr + done.stdout

    secret = tmp_path / "nats-password"
    secret.write_text(PASSWORDS["operator"] + "\n")
    done = cli("events", "no-such-run", env={**base, "CYCLONETIX_NATS_PASSWORD_FILE": str(secret)})
    assert "cannot reach NATS" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    assert PASSWORDS["operator"] not in done.stderr + done.stdout


async def test_a_password_in_the_url_is_not_shown(secured: EmbeddedNats) -> None:
    host = secured.url.removeprefix("nats://")
    with pytest.raises(Unavailable) as caught:
        await connect(f"nats://ui:url-secret@{host}", name="pytest", security=NatsSettings())
    assert "url-secret" not in str(caught.value)
    assert f"nats://ui:***@{host}" in str(caught.value)


# -- TLS ------------------------------------------------------------------------------------------


async def test_tls_with_the_right_ca_connects_and_a_wrong_ca_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: Path
) -> None:
    server = start(tmp_path, monkeypatch, tls_block(certs))
    try:
        good = as_user("operator", tls_ca_file=str(certs / "ca.pem"), tls_required=True)
        async with await connect(server.url, name="pytest", security=good) as bp:
            assert await bp.events.last_seq() == 0

        bad = as_user("operator", tls_ca_file=str(certs / "other-ca.pem"))
        with pytest.raises(Unavailable) as caught:
            await connect(server.url, name="pytest", security=bad)
        message = one_line(str(caught.value))
        assert message.startswith(
            f"cannot reach NATS at {server.url}: TLS certificate not trusted ("
        ), message

        wrong_name = as_user(
            "operator", tls_ca_file=str(certs / "ca.pem"), tls_hostname="elsewhere.example"
        )
        with pytest.raises(Unavailable, match="TLS certificate not trusted"):
            await connect(server.url, name="pytest", security=wrong_name)
    finally:
        server.stop()


async def test_mutual_tls_needs_the_client_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: Path
) -> None:
    server = start(tmp_path, monkeypatch, tls_block(certs, verify=True))
    try:
        with_cert = as_user(
            "operator",
            tls_ca_file=str(certs / "ca.pem"),
            tls_cert_file=str(certs / "client.pem"),
            tls_key_file=str(certs / "client-key.pem"),
        )
        async with await connect(server.url, name="pytest", security=with_cert):
            pass
        without = as_user("operator", tls_ca_file=str(certs / "ca.pem"))
        with pytest.raises(Unavailable) as caught:
            await connect(server.url, name="pytest", security=without)
        one_line(str(caught.value))
        assert str(caught.value).startswith(f"cannot reach NATS at {server.url}: ")
    finally:
        server.stop()


async def test_tls_required_refuses_a_server_without_tls(secured: EmbeddedNats) -> None:
    wants_tls = as_user("operator", tls_required=True)
    with pytest.raises(Unavailable) as caught:
        await connect(secured.url, name="pytest", security=wants_tls)
    assert one_line(str(caught.value)) == (
        f"cannot reach NATS at {secured.url}: the server does not offer TLS "
        "and nats.tls_required is set"
    )


# -- permissions ----------------------------------------------------------------------------------


@pytest.fixture
async def provisioned(secured: EmbeddedNats) -> AsyncIterator[NatsBackplane]:
    """The orchestrator's connection: it provisions streams, buckets and consumers first."""
    async with await connect(
        secured.url, name="orchestrator", security=as_user("orchestrator")
    ) as bp:
        yield bp


async def open_as(url: str, user: str) -> Connection:
    return await Connection.open(
        url,
        name=f"pytest-{user}",
        connect_timeout=2.0,
        publish_timeout=2.0,
        publish_deadline=5.0,
        security=as_user(user),
    )


async def denied(conn: Connection, subject: str, payload: bytes = b"") -> str:
    """Publish and let the server answer: the permissions error it sent back ('' if none)."""
    conn.nc._err = None  # nats-py keeps the last asynchronous error here (`last_error`)
    await conn.nc.publish(subject, payload)
    await conn.nc.flush(timeout=2)
    await asyncio.sleep(0.1)  # the -ERR follows the PONG when it is late
    await conn.nc.flush(timeout=2)
    error = conn.nc.last_error
    return str(error) if error is not None else ""


async def test_an_agent_cannot_publish_triggers_nor_delete_streams_or_consumers(
    secured: EmbeddedNats, provisioned: NatsBackplane
) -> None:
    agent = await open_as(secured.url, "agent-default")
    try:
        for subject in (
            "cx.trigger.dag.nightly",
            "cx.trigger.task.deploy",
            f"$JS.API.STREAM.DELETE.{EVENTS_STREAM}",
            f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}",
            f"$JS.API.STREAM.UPDATE.{EVENTS_STREAM}",
            f"$JS.API.CONSUMER.DELETE.{WORK_STREAM}.work_default",
            f"$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.work_gpu",  # another queue's work
            "cx.work.default",  # dispatching is the orchestrator's
        ):
            error = await denied(agent, subject, b"{}")
            assert f'permissions violation for publish to "{subject.lower()}"' in error.lower(), (
                subject
            )
        # Still connected, and the streams are all still there.
        assert await denied(agent, "cx.log.r1.t.1", b"output") == ""
        info = await provisioned.connection.js.stream_info(EVENTS_STREAM)
        assert info.config.name == EVENTS_STREAM
    finally:
        await agent.close(1.0)


async def test_only_the_trigger_user_publishes_triggers(
    secured: EmbeddedNats, provisioned: NatsBackplane
) -> None:
    for user in ("orchestrator", "ui", "projector"):
        conn = await open_as(secured.url, user)
        try:
            error = await denied(conn, "cx.trigger.dag.nightly", b"{}")
            assert "permissions violation" in error.lower(), user
        finally:
            await conn.close(1.0)
    trigger = await open_as(secured.url, "trigger")
    try:
        assert await denied(trigger, "cx.trigger.dag.nightly", b"{}") == ""
        assert "permissions violation" in (await denied(trigger, "cx.ev.00.r1", b"{}")).lower()
        assert "permissions violation" in (await denied(trigger, "$JS.API.INFO")).lower()
    finally:
        await trigger.close(1.0)
    stored = await provisioned.connection.js.stream_info("CX_TRIGGERS")
    assert stored.state.messages + stored.state.consumer_count >= 1


async def test_an_agent_logged_in_as_its_queue_runs_a_dispatch(
    secured: EmbeddedNats, provisioned: NatsBackplane, tmp_path: Path
) -> None:
    """The agent's allow list is enough for what a real agent does: connect (and provision),
    register, consume its queue, append TaskStarted/TaskSucceeded, write output."""
    conn = await connect(secured.url, name="agent", security=as_user("agent-default"))
    agent = Agent(
        conn, AgentConfig(workdir=tmp_path, guardian=False, shutdown_grace=1.0, kill_grace=0.5)
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(agent.run(stop))
    try:
        await provisioned.work.dispatch(
            Dispatch(run_id="r-sec", task_id="t", attempt=1, queue="default", command="echo hi")
        )

        async def succeeded() -> TaskSucceeded | None:
            for _, event in await provisioned.events.history("r-sec"):
                if isinstance(event, TaskSucceeded):
                    return event
            return None

        await eventually(succeeded, timeout=20, what="TaskSucceeded from the agent")
        # Nothing it did was refused (but what it expected: looking up the UI's logins).
        assert list(conn.connection.refused) == []
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 15)
        finally:
            await conn.close()


def test_the_example_secure_config_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: Path
) -> None:
    """infra/nats/secure.conf (with its include) passes `nats-server -t` once its certificate
    paths and store exist; without the passwords in the environment it is refused."""
    folder = tmp_path / "conf"
    folder.mkdir()
    shutil.copy(ROLES_CONF, folder / "roles.conf")
    text = (REPO / "infra" / "nats" / "secure.conf").read_text()
    text = text.replace("/etc/nats/tls/server-cert.pem", str(certs / "server.pem"))
    text = text.replace("/etc/nats/tls/server-key.pem", str(certs / "server-key.pem"))
    text = text.replace("/var/lib/nats", str(tmp_path / "store"))
    (folder / "secure.conf").write_text(text)

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [find_nats_server(), "-t", "-c", "secure.conf"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=30,
        )

    for env in PASSWORD_ENV.values():
        monkeypatch.delenv(env, raising=False)
    refused = check()
    assert refused.returncode != 0 and "CX_OPERATOR_PASSWORD" in refused.stderr, refused
    for user, env in PASSWORD_ENV.items():
        monkeypatch.setenv(env, PASSWORDS[user])
    done = check()
    assert done.returncode == 0, done.stderr + done.stdout
    assert "is valid" in done.stderr + done.stdout


# -- what each role may append, read and create -----------------------------------------------


def scheduled(run_id: str) -> RunScheduled:
    return RunScheduled(run_id=run_id, ts=NOW, kind="dag", target="d", name="d", graph=())


def started(run_id: str) -> TaskStarted:
    return TaskStarted(run_id=run_id, ts=NOW, task_id="t", attempt=1, agent_id="a1")


def succeeded(run_id: str) -> TaskSucceeded:
    return TaskSucceeded(run_id=run_id, ts=NOW, task_id="t", attempt=1, agent_id="a1")


def orchestrators_events(run_id: str) -> list[AnyEvent]:
    """Events only the orchestrator appends: its decisions and a run's end."""
    return [
        RunSucceeded(run_id=run_id, ts=NOW),
        TaskQueued(run_id=run_id, ts=NOW, task_id="t", attempt=2, queue="default"),
        TasksQueued(
            run_id=run_id, ts=NOW, tasks=(QueuedTask(task_id="t", attempt=2, queue="default"),)
        ),
    ]


async def refused_and_not_stored(
    conn: Connection, events: list[AnyEvent], reader: NatsBackplane
) -> None:
    """Each event's append is refused by the server, and nothing of the run is stored for it."""
    run_id = events[0].run_id
    before = await reader.events.history(run_id)
    for event in events:
        subject = event_subject_of(event)
        error = await denied(conn, subject, encode(event))
        assert f'permissions violation for publish to "{subject.lower()}"' in error.lower(), subject
    assert await reader.events.history(run_id) == before


async def test_an_agent_appends_its_attempts_results_and_nothing_else(
    secured: EmbeddedNats, provisioned: NatsBackplane
) -> None:
    """Through the adapter (conditional appends too): TaskStarted and TaskSucceeded go in; a
    RunSucceeded, TaskQueued or TasksQueued (or a command) is refused and stored nowhere."""
    run_id = "r-agent"
    await provisioned.events.schedule_run(scheduled(run_id))
    async with await connect(secured.url, name="agent", security=as_user("agent-default")) as bp:
        last = await bp.events.last_event(run_id)
        assert last is not None
        start = await bp.events.append_expected(started(run_id), last[0])
        await bp.events.append_expected(succeeded(run_id), start)
        await refused_and_not_stored(
            bp.connection,
            [
                *orchestrators_events(run_id),
                RunCancelRequested(run_id=run_id, ts=NOW),
                scheduled("r-agent-2"),
            ],
            provisioned,
        )
    assert [type(e) for _, e in await provisioned.events.history(run_id)] == [
        RunScheduled,
        TaskStarted,
        TaskSucceeded,
    ]
    assert await provisioned.events.history("r-agent-2") == []


async def test_the_ui_appends_commands_and_nothing_else(
    secured: EmbeddedNats, provisioned: NatsBackplane
) -> None:
    """What the web UI does (services.commands): schedule (RunScheduled), cancel
    (RunCancelRequested), rerun (RunScheduled of a new run); a task's result or a run's end is
    refused and stored nowhere."""
    run_id = "r-ui"
    async with await connect(secured.url, name="ui", security=as_user("ui")) as bp:
        await bp.events.schedule_run(scheduled(run_id))
        await commands.cancel(bp.events, run_id, reason="test", by="api")
        again = await commands.rerun(bp.events, run_id)
        await refused_and_not_stored(
            bp.connection, [succeeded(run_id), started(run_id), *orchestrators_events(run_id)],
            provisioned,
        )  # fmt: skip
    assert [type(e) for _, e in await provisioned.events.history(run_id)] == [
        RunScheduled,
        RunCancelRequested,
    ]
    assert [type(e) for _, e in await provisioned.events.history(again.run_id)] == [RunScheduled]


async def test_the_projector_reads_the_log_and_appends_nothing(
    secured: EmbeddedNats, provisioned: NatsBackplane
) -> None:
    await provisioned.events.schedule_run(scheduled("r-proj"))
    async with await connect(secured.url, name="projector", security=as_user("projector")) as bp:
        store = MemoryReadModel()
        await replay(bp.events, store)
        assert await store.get_run("r-proj") is not None
        await refused_and_not_stored(
            bp.connection, [scheduled("r-proj"), started("r-proj")], provisioned
        )


async def test_agents_and_the_projector_cannot_read_the_uis_logins(
    secured: EmbeddedNats, provisioned: NatsBackplane
) -> None:
    """cx_auth (users, tokens) and cx_sessions: no direct or stored-message get, no consumer,
    no stream info for the agent and the projector (who still connect: those buckets are
    not looked up for them); the UI reads them."""
    await provisioned.events.schedule_run(scheduled("r-logins"))
    auth = await provisioned.provisioner.bucket(AUTH_BUCKET)
    await auth.put("user.alice", b"argon2-hash-of-alice")
    sessions = await provisioned.provisioner.bucket(SESSIONS_BUCKET)
    await sessions.put("session.abc", b"alice")
    for user in ("agent-default", "projector"):
        async with await connect(secured.url, name=user, security=as_user(user)) as bp:
            conn = bp.connection
            for bucket, key in ((AUTH_BUCKET, "user.alice"), (SESSIONS_BUCKET, "session.abc")):
                stream = f"KV_{bucket}"
                for subject in (
                    f"$JS.API.DIRECT.GET.{stream}",
                    f"$JS.API.DIRECT.GET.{stream}.{kv_subject(bucket, key)}",
                    f"$JS.API.STREAM.MSG.GET.{stream}",
                    f"$JS.API.CONSUMER.CREATE.{stream}",
                    f"$JS.API.CONSUMER.CREATE.{stream}.c1.{kv_subject(bucket, key)}",
                    f"$JS.API.STREAM.INFO.{stream}",
                ):
                    error = await denied(conn, subject, b"{}")
                    assert "permissions violation" in error.lower(), (user, subject)
            assert await bp.events.last_seq() >= 1  # connected, and reading the log
    ui = await open_as(secured.url, "ui")
    try:
        got = await ui.js.get_last_msg(
            f"KV_{AUTH_BUCKET}", kv_subject(AUTH_BUCKET, "user.alice"), direct=True
        )
        assert got.data == b"argon2-hash-of-alice"
    finally:
        await ui.close(1.0)


async def test_roles_do_not_create_streams_and_say_so_when_one_is_missing(
    secured: EmbeddedNats,
) -> None:
    """Before any orchestrator ran: the agent, UI and projector stop at once with one line (not
    a timeout), and nothing is created. Once it ran, each connects without asking to create
    anything (its account may not: roles.conf; such a request would fail the connect), and one
    whose events max age differs leaves the stream as it is (a warning, not a failure)."""
    for user in ("agent-default", "ui", "projector"):
        began = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await connect(secured.url, name=user, security=as_user(user))
        assert one_line(str(caught.value)) == (
            f"stream {EVENTS_STREAM} does not exist on {secured.url} and this account may not "
            "create it: start the orchestrator first"
        ), user
        assert time.monotonic() - began < 3.0, "it waited for an answer that never comes"
    operator = await open_as(secured.url, "operator")
    try:
        assert await operator.js.streams_info() == []
    finally:
        await operator.close(1.0)

    async with await connect(secured.url, name="orch", security=as_user("orchestrator")):
        pass
    for user in ("agent-default", "ui", "projector"):
        async with await connect(secured.url, name=user, security=as_user(user)) as bp:
            assert await bp.events.last_seq() == 0
            assert list(bp.connection.refused) == []
        async with await connect(
            secured.url, name=user, security=as_user(user), events_max_age=7200.0
        ) as bp:
            assert list(bp.connection.refused) == []
    operator = await open_as(secured.url, "operator")
    try:
        assert (await operator.js.stream_info(EVENTS_STREAM)).config.max_age == 0
    finally:
        await operator.close(1.0)


def test_an_agent_started_before_the_orchestrator_says_so_in_one_line(
    secured: EmbeddedNats,
) -> None:
    done = cli(
        "agent",
        env={
            "CYCLONETIX_NATS_URL": secured.url,
            "CYCLONETIX_NATS_USER": "agent-default",
            "CYCLONETIX_NATS_PASSWORD": PASSWORDS["agent-default"],
        },
    )
    assert done.returncode == 3, done.stderr
    assert one_line(done.stderr) == (
        f"cyclonetix: error: stream {EVENTS_STREAM} does not exist on {secured.url} and this "
        "account may not create it: start the orchestrator first"
    )


async def test_an_event_stream_of_the_earlier_layout_is_the_orchestrators_to_convert(
    secured: EmbeddedNats,
) -> None:
    """CX_EVENTS as an earlier version made it (cx.ev.*.*): an agent may not add the new
    subjects and says so in one line; the orchestrator adds them, and then the agent connects."""
    operator = await open_as(secured.url, "operator")
    try:
        old = dataclasses.replace(stream_configs(1)[0], subjects=["cx.ev.*.*"])
        await operator.js.add_stream(old)
    finally:
        await operator.close(1.0)
    with pytest.raises(Unavailable) as caught:
        await connect(secured.url, name="agent", security=as_user("agent-default"))
    assert one_line(str(caught.value)) == (
        f"stream {EVENTS_STREAM} on {secured.url} lacks the subjects cx.ev.*.*.* and this "
        "account may not add them: start the orchestrator (of this version) first"
    )
    async with await connect(secured.url, name="orch", security=as_user("orchestrator")) as bp:
        info = await bp.connection.js.stream_info(EVENTS_STREAM)
        assert info.config.subjects == ["cx.ev.*.*", "cx.ev.*.*.*"]
    async with await connect(secured.url, name="agent", security=as_user("agent-default")):
        pass


# -- nkeys ----------------------------------------------------------------------------------------


def new_user_seed() -> bytes:
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


async def test_an_nkey_user_logs_in_with_its_seed_file_and_a_wrong_seed_is_refused(
    tmp_path: Path,
) -> None:
    seed = new_user_seed()
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    server = start_nats(
        tmp_path, extra_config=f'authorization: {{ users: [ {{ nkey: "{public}" }} ] }}'
    )
    try:
        right = tmp_path / "user.nk"
        right.write_bytes(seed + b"\n")
        async with await connect(
            server.url, name="nkey", security=NatsSettings(nkey_seed_file=str(right))
        ) as bp:
            assert await bp.events.last_seq() == 0

        wrong = tmp_path / "other.nk"
        wrong.write_bytes(new_user_seed() + b"\n")
        with pytest.raises(Unavailable) as caught:
            await connect(server.url, name="nkey", security=NatsSettings(nkey_seed_file=str(wrong)))
        assert one_line(str(caught.value)) == (
            f"cannot reach NATS at {server.url}: authentication failed "
            "(the server refused these credentials)"
        )
        assert seed.decode() not in str(caught.value)
    finally:
        server.stop()
