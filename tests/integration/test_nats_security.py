"""NATS security against a real nats-server: the per-role users of infra/nats/roles.conf,
credentials and TLS from the settings (services.settings, services.nats.connection).

A refused connection is one line naming the server (`cannot reach NATS at ...: authentication
failed ...`, exit code 3 from the CLI), never a traceback and never the secret; the example
permissions deny what they promise (an agent cannot publish triggers, delete streams or
consumers, or consume another queue) and allow what a real agent does (a dispatch run to its
result by an in-process Agent logged in as `agent-default`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from core.errors import Unavailable
from core.events import Dispatch, TaskSucceeded
from services.agent import Agent, AgentConfig
from services.embedded_nats import EmbeddedNats, find_nats_server
from services.nats import NatsBackplane, connect
from services.nats.connection import Connection
from services.nats.names import EVENTS_STREAM, WORK_STREAM
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
        assert conn.connection.nc.last_error is None or "permissions" not in str(
            conn.connection.nc.last_error
        )
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
