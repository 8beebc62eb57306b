"""Chaos suite settings: its size (CI's, or `--long`), its seed, and the table at the end.

    just chaos                       # the CI size (what `python -m pytest` runs)
    just chaos --long                # a bigger one: more faults, runs and graphs (15+ minutes)
    just chaos --chaos-seed 1234     # replay a seed printed by an earlier run

The same through the environment, for a plain `python -m pytest`:
CYCLONETIX_CHAOS_LONG=1, CYCLONETIX_CHAOS_SEED=1234. Without a seed, one is drawn and printed
with every scenario (in its table row and in its failure message). A seed replays the same
definitions, the same sequence of scheduled targets and the same choice and spacing of faults;
the operating system's timing still varies from run to run.
"""

from __future__ import annotations

import os
import secrets
from typing import TYPE_CHECKING

import pytest

from tests.chaos.harness import Size
from tests.chaos.report import ROWS, WORKER_OUTPUT, Row, print_table, rows_out

if TYPE_CHECKING:
    from _pytest.terminal import TerminalReporter

LONG_ENV = "CYCLONETIX_CHAOS_LONG"
SEED_ENV = "CYCLONETIX_CHAOS_SEED"

# CI: the whole suite in about four minutes on two cores (five scenarios).
CI_SIZE = Size(faults=3, gap=(1.5, 4.0), open_runs=8, graphs=10, max_tasks=6)
LONG_SIZE = Size(
    faults=12,
    gap=(2.0, 8.0),
    open_runs=16,
    graphs=40,
    max_tasks=10,
    agents=4,
    drain_timeout=240.0,
)
LONG_TIMEOUT_S = 3600  # per scenario, instead of the project's 300

_seed = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos suite (tests/chaos)")
    group.addoption(
        "--long",
        action="store_true",
        default=False,
        help=f"run the chaos suite at its long size (or set {LONG_ENV}=1)",
    )
    group.addoption(
        "--chaos-seed",
        type=int,
        default=None,
        metavar="N",
        help=f"seed of the chaos suite's randomness (or set {SEED_ENV}); printed when drawn",
    )


def is_long(config: pytest.Config) -> bool:
    return bool(config.getoption("long", default=False)) or os.environ.get(LONG_ENV) == "1"


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("chaos_seed", default=None)
    if seed is None and os.environ.get(SEED_ENV):
        seed = int(os.environ[SEED_ENV])
    config.stash[_seed] = secrets.randbelow(2**31) if seed is None else int(seed)
    config.stash[ROWS] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not is_long(config):
        return
    for item in items:
        if item.get_closest_marker("chaos") and "scenario" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(LONG_TIMEOUT_S))


@pytest.fixture
def chaos_size(request: pytest.FixtureRequest) -> Size:
    return LONG_SIZE if is_long(request.config) else CI_SIZE


@pytest.fixture
def chaos_seed(request: pytest.FixtureRequest) -> int:
    return request.config.stash[_seed]


@pytest.fixture
def chaos_rows(request: pytest.FixtureRequest) -> list[Row]:
    return request.config.stash[ROWS]


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)  # (a pytest-xdist worker)
    if output is not None:
        output[WORKER_OUTPUT] = rows_out(session.config.stash[ROWS], is_long(session.config))


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    print_table(terminalreporter, config.stash.get(ROWS, []), is_long(config))
