"""`cyclonetix agent`: run the commands of one or more queues."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from core.definitions.yaml import read_yaml
from core.secrets import parse_secrets, secrets_from_mapping
from services.agent import Agent, AgentConfig, new_agent_id
from services.cli.common import (
    add_log_options,
    add_nats_option,
    add_shutdown_grace_option,
    configure_role_logging,
    connect,
    nats_url,
    run,
    shutdown_grace,
    until_stopped,
)
from services.cli.main import CliError
from services.cli.validate import env_policy
from services.process import DEFAULT_MAX_OUTPUT_BYTES, seal_inherited_fds


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "agent",
        help="run the agent role: execute the tasks of some queues",
        description="Take dispatched tasks from the given queues and run their commands, "
        "streaming output to the log store. SIGTERM/SIGINT: finish running tasks (up to "
        "--shutdown-grace), hand back the rest, exit; a second signal kills at once.",
    )
    parser.add_argument(
        "-q",
        "--queue",
        dest="queues",
        action="append",
        metavar="QUEUE",
        help="queue to serve; repeat for several (default: default)",
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=_positive_int,
        default=4,
        help="tasks run at once, across all queues (default 4)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="working directory of the commands (default: the current directory)",
    )
    parser.add_argument(
        "--ack-wait",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="a task whose agent stops answering is redelivered after this (default 30); "
        "shared by every agent of a queue, so give them all the same value",
    )
    parser.add_argument(
        "--max-deliver",
        type=_positive_int,
        default=5,
        metavar="N",
        help="deliveries of one dispatch before it counts as lost (default 5)",
    )
    add_shutdown_grace_option(parser, "how long running tasks may finish")
    parser.add_argument(
        "--kill-grace",
        type=_non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="between SIGTERM and SIGKILL when a command times out or is killed (default 5)",
    )
    parser.add_argument(
        "--max-output-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_OUTPUT_BYTES,
        metavar="BYTES",
        help="output stored per task attempt; the rest is discarded with a note (default 10 MiB)",
    )
    parser.add_argument(
        "--secrets-file",
        type=Path,
        default=os.environ.get("CYCLONETIX_SECRETS_FILE") or None,
        metavar="FILE",
        help="secrets for ${secret:NAME} in parameters: a .yaml/.yml mapping NAME: value, or "
        "NAME=VALUE lines (default: $CYCLONETIX_SECRETS_FILE); $CYCLONETIX_SECRET_<NAME> "
        "comes first",
    )
    add_nats_option(parser)
    add_log_options(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    configure_role_logging(args, "agent")
    workdir = (args.workdir or Path.cwd()).resolve()
    if not workdir.is_dir():
        raise CliError(f"--workdir {args.workdir} is not a directory")
    # Resolved here: ./.cyclonetix/runtime.json is relative to where we were started.
    args.nats_url = nats_url(args)
    # Commands run in the agent's own directory take the fast spawn path (services.process),
    # which needs no descriptor of ours to be inheritable.
    os.chdir(workdir)
    seal_inherited_fds()
    agent_id = new_agent_id()
    config = AgentConfig(
        queues=tuple(dict.fromkeys(args.queues or ["default"])),
        concurrency=args.concurrency,
        workdir=workdir,
        ack_wait=args.ack_wait,
        max_deliver=args.max_deliver,
        shutdown_grace=shutdown_grace(args),
        kill_grace=args.kill_grace,
        max_output_bytes=args.max_output_bytes,
        env_policy=env_policy(),  # $CYCLONETIX_DENY_ENV
        secrets=read_secrets_file(args.secrets_file) if args.secrets_file else {},
    )

    kill = asyncio.Event()  # a second signal: kill running commands now

    async def serve(stop: asyncio.Event) -> None:
        backplane = await connect(args, f"cyclonetix-agent-{agent_id}")
        try:
            await Agent(backplane, config, agent_id=agent_id).run(stop, kill)
        finally:
            await backplane.close()

    run(until_stopped(serve, kill))
    return 0


def read_secrets_file(path: Path) -> dict[str, str]:
    """The agent's secrets file (see --secrets-file); CliError in one line naming the file,
    never a value."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise CliError(f"--secrets-file {path}: cannot read it: {exc.strerror or exc}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            document, problem = read_yaml(content)
            if problem:
                raise ValueError(problem)
            return secrets_from_mapping(document)
        return parse_secrets(content.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        what = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise CliError(f"--secrets-file {path}: {what}") from None


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    return value
