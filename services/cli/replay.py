"""`cyclonetix replay`: rebuild a read model from the event log, or verify one against the log.

    cyclonetix replay --into URL [--reset] [--run RUN_ID] [--from-seq N]
    cyclonetix replay --verify URL

--into applies the log to the store (from its checkpoint, or from the start with --reset) with a
progress line on stderr and prints the rate at the end. --verify reads the store's checkpoint,
replays the log up to it into a fresh in-memory store and compares every run and task run: each
difference is printed as `run <id> <field>: live <value> replayed <value>`; the exit code is 1
when there is any, 0 when there is none.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from projections.memory import MemoryReadModel
from projections.stores import SCHEMES, open_read_model
from projections.views import ALL_RUNS, RunRow, TaskRunRow
from services.cli.common import add_nats_option, connect, human_duration, run
from services.cli.main import CliError
from services.cli.projector import positive_int
from services.projector import REPLAY_BATCH, Progress, Replayed, replay

if TYPE_CHECKING:
    from projections.protocol import ReadModel
    from services.ports import EventLog

PAGE = 500


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="rebuild a read model from the event log, or verify one against it",
        description="--into URL: apply the event log to a read model (memory://, redis://, "
        "postgresql://), with a progress line on stderr. --verify URL: replay the log up to "
        "the store's checkpoint into memory and print every run or task-run field that "
        "differs; exit 1 if any does.",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--into", metavar="URL", help=f"the store to rebuild: {SCHEMES}")
    what.add_argument("--verify", metavar="URL", help="the store to check (redis:// or postgres)")
    parser.add_argument(
        "--reset",
        action="store_true",
        help="forget every row and the checkpoint first, then replay the whole log",
    )
    parser.add_argument("--run", metavar="RUN_ID", help="replay only this run's events")
    parser.add_argument(
        "--from-seq",
        type=positive_int,
        metavar="N",
        help="start at this stream sequence (default: after the store's checkpoint; 1 with "
        "--reset or --run)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=REPLAY_BATCH,
        metavar="N",
        help=f"events per store write (default {REPLAY_BATCH})",
    )
    add_nats_option(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.verify is not None:
        if args.reset or args.run or args.from_seq:
            raise CliError("--verify compares the whole store: no --reset, --run or --from-seq")
        if args.verify.startswith("memory:"):
            raise CliError(
                "--verify needs a store another process wrote (redis:// or "
                "postgresql://): a memory:// store lives inside one process"
            )
        return run(_verify(args))
    return run(_into(args))


async def _into(args: argparse.Namespace) -> int:
    store = open_read_model(args.into)
    backplane = await connect(args, "cyclonetix-replay")
    try:
        if args.reset:
            await store.reset()
        before = await store.checkpoint()
        from_seq = args.from_seq or (1 if args.run else before + 1)
        with ProgressLine() as line:
            done = await replay(
                backplane.events,
                store,
                from_seq=from_seq,
                run_id=args.run,
                batch=args.batch,
                progress=line.show,
                every=line.every,
            )
        print(summary(done))
        if before and from_seq <= before and not args.reset:
            print(
                f"note: the store had applied up to sequence {before}; events at or below it "
                "change nothing (--reset rebuilds it from the start)",
                file=sys.stderr,
            )
        counts = await store.count_runs()
        print("runs: " + (", ".join(f"{s.value} {n}" for s, n in counts.items() if n) or "none"))
        if not done.complete:
            print(
                "warning: the log ended before the sequence to replay up to (messages deleted?)",
                file=sys.stderr,
            )
    finally:
        await store.close()
        await backplane.close()
    return 0


async def _verify(args: argparse.Namespace) -> int:
    live = open_read_model(args.verify)
    backplane = await connect(args, "cyclonetix-replay")
    try:
        with ProgressLine() as line:
            found, left_out = await verify(backplane.events, live, progress=line.show)
    finally:
        await live.close()
        await backplane.close()
    for difference in found:
        print(difference)
    if left_out:
        print(
            f"note: {left_out} runs changed after the checkpoint while verifying; not compared",
            file=sys.stderr,
        )
    print(f"{len(found)} differences" if found else "no differences", file=sys.stderr)
    return 1 if found else 0


def summary(done: Replayed) -> str:
    return (
        f"replayed {done.applied:,} events in {human_duration(done.seconds)}: "
        f"{done.rate:,.0f} events/s (checkpoint {done.checkpoint})"
    )


# -- verify ---------------------------------------------------------------------------------


async def verify(
    events: EventLog, live: ReadModel, *, progress: Callable[[Progress], None] | None = None
) -> tuple[list[str], int]:
    """Replay the log up to `live`'s checkpoint into memory and compare: (the differences, how
    many runs were left out because the live store changed them past that checkpoint)."""
    upto = await live.checkpoint()
    replayed = MemoryReadModel()
    await replay(events, replayed, upto=upto, progress=progress)
    return await differences(live, replayed, upto)


async def differences(live: ReadModel, replayed: ReadModel, upto: int) -> tuple[list[str], int]:
    """Every field of every run and task run that differs, as `run <id> <field>: live <value>
    replayed <value>`; runs the live store changed after `upto` are counted, not compared."""
    mine, theirs = await _runs(live), await _runs(replayed)
    found: list[str] = []
    left_out = 0
    for run_id in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(run_id), theirs.get(run_id)
        if a is not None and a.last_seq > upto:
            left_out += int(a.scheduled_seq <= upto)
            continue
        if a is None or b is None:
            found.append(_line(run_id, "run", _present(a), _present(b)))
            continue
        found.extend(_fields(run_id, "", a, b))
        found.extend(await _tasks(run_id, live, replayed))
    return found, left_out


async def _runs(store: ReadModel) -> dict[str, RunRow]:
    out: dict[str, RunRow] = {}
    cursor: str | None = None
    while True:
        page = await store.list_runs(ALL_RUNS, PAGE, cursor)
        out.update((r.run_id, r) for r in page.items)
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor


async def _tasks(run_id: str, live: ReadModel, replayed: ReadModel) -> list[str]:
    a, b = await live.get_run(run_id), await replayed.get_run(run_id)
    mine = {t.task_id: t for t in (a.tasks if a else ())}
    theirs = {t.task_id: t for t in (b.tasks if b else ())}
    found: list[str] = []
    for task_id in sorted(mine.keys() | theirs.keys()):
        x, y = mine.get(task_id), theirs.get(task_id)
        where = f"tasks[{task_id}]"
        if x is None or y is None:
            found.append(_line(run_id, where, _present(x), _present(y)))
        else:
            found.extend(_fields(run_id, where + ".", x, y))
    return found


def _fields(run_id: str, prefix: str, a: RunRow | TaskRunRow, b: RunRow | TaskRunRow) -> list[str]:
    out: list[str] = []
    for name in a.__struct_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if x != y:
            out.append(_line(run_id, prefix + name, _show(x), _show(y)))
    return out


def _line(run_id: str, field: str, live: str, replayed: str) -> str:
    return f"run {run_id} {field}: live {live} replayed {replayed}"


def _present(row: object) -> str:
    return "absent" if row is None else "present"


def _show(value: object) -> str:
    plain = msgspec.to_builtins(value)
    if isinstance(plain, str) and plain:
        return plain
    return msgspec.json.encode(plain).decode()


# -- progress -------------------------------------------------------------------------------


class ProgressLine:
    """`events done / total (pct)  rate  ETA` on stderr: redrawn in place on a terminal, a line
    every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.every = 0.25 if self.tty else 5.0
        self.shown = False

    def show(self, p: Progress) -> None:
        pct = f" ({100 * p.done / p.total:.0f}%)" if p.total else ""
        eta = "" if p.eta is None else f"  ETA {human_duration(p.eta)}"
        text = f"replay: {p.done:,} / {p.total:,}{pct}  {p.rate:,.0f} events/s{eta}"
        if self.tty:
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)
        self.shown = True

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *_: object) -> None:
        if self.tty and self.shown:
            print(file=sys.stderr, flush=True)
