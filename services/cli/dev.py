"""`cyclonetix dev`: the whole system on this machine, in one command.

Starts an embedded NATS server (data in ./.cyclonetix/), publishes the definitions, and runs
the orchestrator, agents and the web UI (which holds a memory:// read model; another store gets
a projector process) as separate processes whose logs share this console. Records where it
runs (NATS, the read model, the UI's URL) in
./.cyclonetix/runtime.json so other commands in this folder find it. Ctrl-C stops
everything cleanly and in order (services.cluster: agents, which finish or hand back their
running tasks within the shutdown grace, then the orchestrator, then NATS); a second Ctrl-C
cuts the graces short. The data folder keeps the event log for the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from projections.stores import SCHEMES, open_read_model
from services.cli.agent import read_secrets_file
from services.cli.common import (
    add_shutdown_grace_option,
    load_definitions_or_fail,
    port_number,
    run,
    shutdown_grace,
    until_stopped,
)
from services.cli.main import CliError
from services.cluster import LocalCluster, queues_of
from services.definitions_files import default_definitions_dir
from services.read_model_client import recorded_url
from services.runtime_info import (
    clear_runtime_info,
    read_runtime_info,
    write_runtime_info,
)
from services.settings import load_settings

COLOURS = ("\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m", "\033[31m")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "dev",
        help="run everything locally: NATS, orchestrator, agents, web UI",
        description="Run the whole system on this machine with an embedded NATS server. "
        "Without --definitions it runs the examples in infra/examples/.",
    )
    parser.add_argument(
        "-d",
        "--definitions",
        type=Path,
        default=None,
        metavar="DIR",
        help="definitions folder (default: $CYCLONETIX_DEFINITIONS, else the bundled examples)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=8420,
        help="web UI port on 127.0.0.1 (default 8420; 0: a free one)",
    )
    parser.add_argument("--no-ui", action="store_true", help="run without the web UI")
    parser.add_argument("--agents", type=int, default=2, help="agent processes (default 2)")
    parser.add_argument(
        "--concurrency", type=int, default=4, help="tasks each agent runs at once (default 4)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where NATS keeps the event log and where runtime.json is written "
        "(default: $CYCLONETIX_DATA_DIR, else ./.cyclonetix)",
    )
    parser.add_argument(
        "--nats-url",
        metavar="URL",
        help="use this NATS server instead of starting an embedded one",
    )
    parser.add_argument(
        "--read-model",
        default="memory://",
        metavar="URL",
        help=f"the read model the UI reads: {SCHEMES} (default memory://, held by the UI "
        "process and read over NATS by 'runs list'; any other store gets a projector "
        "process); recorded in runtime.json",
    )
    parser.add_argument(
        "--secrets-file",
        type=Path,
        default=os.environ.get("CYCLONETIX_SECRETS_FILE") or None,
        metavar="FILE",
        help="the agents' secrets for ${secret:NAME} (see 'cyclonetix agent --help'; "
        "default: $CYCLONETIX_SECRETS_FILE)",
    )
    add_shutdown_grace_option(
        parser, "how long the agents' running tasks may finish (given to every role)"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    settings = load_settings().override(data_dir=args.data_dir)
    args.data_dir = settings.data_path
    folder = args.definitions or default_definitions_dir(settings)
    defs = load_definitions_or_fail(folder)
    if args.agents < 1:
        raise CliError("--agents must be at least 1")
    grace = shutdown_grace(args)
    store = open_read_model(args.read_model)  # a bad URL: one line, before anything starts
    agent_args: list[str] = []
    if args.secrets_file:
        read_secrets_file(args.secrets_file)  # a bad file: one line, before anything starts
        agent_args = ["--secrets-file", str(args.secrets_file.resolve())]
    run(store.close())
    kill = asyncio.Event()  # a second Ctrl-C
    running = read_runtime_info(args.data_dir)
    if running:
        raise CliError(
            f"cyclonetix dev is already running from {args.data_dir} (pid {running.get('pid')}, "
            f"NATS {running.get('nats_url')}); stop it first or pass --data-dir"
        )
    colour = sys.stdout.isatty()
    roles: dict[str, str] = {}

    def printer(role: str, line: str) -> None:
        prefix = f"{role:<13}|"
        if colour:
            code = roles.setdefault(role, COLOURS[len(roles) % len(COLOURS)])
            prefix = f"{code}{prefix}\033[0m"
        print(f"{prefix} {line}", flush=True)

    async def serve(stop: asyncio.Event) -> None:
        cluster = LocalCluster(
            definitions=defs,
            data_dir=args.data_dir,
            agents=args.agents,
            concurrency=args.concurrency,
            nats_url=args.nats_url,
            replicas=settings.nats.stream_replicas,
            events_max_age=settings.nats.events_max_age,
            printer=printer,
            shutdown_grace=grace,
            read_model=args.read_model,
            agent_args=agent_args,
            ui_port=None if args.no_ui else args.port or _free_port(),
        )
        try:
            url = await cluster.start()
            read_model = recorded_url(args.read_model)
            write_runtime_info(
                args.data_dir,
                nats_url=url,
                ui_url=cluster.ui_url,
                pid=os.getpid(),
                read_model=read_model,
            )
            printer("dev", f"NATS at {url}; data in {args.data_dir.resolve()}")
            if cluster.ui_url is not None:
                printer("dev", f"web UI at {cluster.ui_url}")
            where = urlsplit(args.read_model)
            printer(
                "dev",
                f"read model {where.scheme}://{where.hostname or where.path or ''}; "
                "try: cyclonetix runs list",
            )
            printer(
                "dev",
                f"{len(defs.tasks)} tasks, {len(defs.dags)} dags from {folder}; "
                f"{args.agents} agents on queues {', '.join(queues_of(defs))}",
            )
            printer("dev", "try: cyclonetix schedule task deploy_model --wait   (Ctrl-C stops)")
            await stop.wait()
            printer("dev", "stopping")
        finally:
            clear_runtime_info(args.data_dir)
            stopping = asyncio.ensure_future(cluster.stop())
            hurry = asyncio.ensure_future(kill.wait())
            await asyncio.wait({stopping, hurry}, return_when=asyncio.FIRST_COMPLETED)
            if hurry.done():
                printer("dev", "stopping now")
                cluster.hurry()
            hurry.cancel()
            await stopping

    run(until_stopped(serve, kill))
    return 0


def _free_port() -> int:
    """A port nothing listens on now (the UI process binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
