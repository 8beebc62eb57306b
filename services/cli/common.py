"""Options and plumbing shared by the subcommands: NATS URL, logging, signals."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from core.definitions import Definitions
from core.events import AnyEvent
from core.run import RunState, fold
from services.cli.main import CliError
from services.cli.validate import load_or_report
from services.logging import configure_logging
from services.nats import connect as connect_nats
from services.runtime_info import resolve_nats_url
from services.settings import load_settings

if TYPE_CHECKING:
    from services.nats import NatsBackplane
    from services.ports import EventLog

T = TypeVar("T")


def add_nats_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats-url",
        metavar="URL",
        help="NATS server (default: $CYCLONETIX_NATS_URL, else the one 'cyclonetix dev' "
        "recorded in ./.cyclonetix/)",
    )


def add_shutdown_grace_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--shutdown-grace",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help=f"on SIGTERM/SIGINT, {what}; a second signal cuts it short "
        "(default: $CYCLONETIX_SHUTDOWN_GRACE, else 30)",
    )


def shutdown_grace(args: argparse.Namespace) -> float:
    """--shutdown-grace, else the shutdown_grace setting (settings: file < variable < flag)."""
    return load_settings().override(shutdown_grace=args.shutdown_grace).shutdown_grace


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:  # (also NaN)
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value


def add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        help="console for people, json for log shippers (default: $CYCLONETIX_LOG_FORMAT, "
        "else console)",
    )
    parser.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING (default: $CYCLONETIX_LOG_LEVEL, else INFO)"
    )


async def follow_state(events: EventLog, run_id: str) -> AsyncIterator[tuple[AnyEvent, RunState]]:
    """Each new event of a run with the run's state after it, until its terminal event."""
    state: RunState | None = None
    async for _seq, event in events.follow_run(run_id):
        state = fold(state, event)
        if state is not None:
            yield event, state


def configure_role_logging(args: argparse.Namespace, role: str) -> None:
    """Logging of a long-running role from --log-format/--log-level (a bad level: one line)."""
    log = load_settings().override(log_format=args.log_format, log_level=args.log_level).log
    try:
        configure_logging(json=log.format == "json", level=log.level, role=role)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def nats_url(args: argparse.Namespace, data_dir: Path | None = None) -> str:
    """--nats-url, else the nats.url setting, else what `cyclonetix dev` recorded (settings)."""
    return resolve_nats_url(getattr(args, "nats_url", None), data_dir)


async def connect(args: argparse.Namespace, name: str) -> NatsBackplane:
    """Connect to the NATS the settings name; Unavailable (exit code 3) when it cannot be."""
    settings = load_settings().nats
    return await connect_nats(
        nats_url(args),
        name=name,
        replicas=settings.stream_replicas,
        events_max_age=settings.events_max_age,
    )


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def until_stopped(
    work: Callable[[asyncio.Event], Awaitable[None]], kill: asyncio.Event | None = None
) -> None:
    """Run a long-lived role until SIGTERM or SIGINT sets the stop event it is given; a second
    signal sets `kill` (stop now: no more grace), when the role has one."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set() and kill is not None:
            kill.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await work(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def load_definitions_or_fail(folder: Path) -> Definitions:
    """The definitions in `folder`; every problem printed and exit 1 if there is any."""
    try:
        defs = load_or_report(folder)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    if defs is None:
        raise CliError(f"invalid definitions in {folder}; nothing was started or changed", 1)
    return defs


def human_duration(seconds: float) -> str:
    """`12 ms`, `3.40 s`, `2 m 05 s`: short tasks are common, so milliseconds matter."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} m {rest:02d} s"


def port_number(text: str) -> int:
    """argparse type: a TCP port (0: any free one)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value
