"""The Postgres read model (asyncpg): rows a projector writes and every process can query.

Schema: the numbered files in `projections/migrations/`, applied in order when a store first
connects (`schema_migrations` records them; an advisory lock keeps concurrent starters from both
applying one). Rows mirror `projections.views`; `events` keeps the raw history of every run, and a
run's graph is read from it (`graph_parts` names the events that added nodes). A task still
pending has no row: `get_run` makes it from its node, so a run starts with one row, not one per
task (a 5,000-task run's RunScheduled was the longest write of the live projector).

Writes follow `projections.rows` exactly as `projections.memory` does, in one Postgres
transaction per batch: it locks the checkpoint row and reads it (entries at or below it are
skipped, whoever wrote them), loads the open runs the batch touches and the cache lacks (rebuilt
from their `events` rows), folds, and writes. Each chunk of the batch is one statement: the
chunk's events and its last run, task and attempt rows travel as one JSON document per table
(`INSERT ... SELECT FROM jsonb_array_elements(...) ON CONFLICT`, a data-modifying CTE per
table), with the status counts and the checkpoint; the next chunk folds while the server writes
one. A failed transaction drops the cache of open runs (they are rebuilt from what was
committed). A live batch of runs already cached needs no transaction: it is one guarded
statement (`_write_alone`), one round trip.

When Postgres cannot be reached, or the connection dies mid-transaction, every method raises
`core.errors.Unavailable` with one line; the caller retries and the store catches up.
"""

# SQL here is assembled from this module's constants and a validated schema name only; every
# value travels as a query parameter.
# ruff: noqa: S608

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # (no stubs: asyncpg is Any to mypy)
import msgspec
from msgspec.structs import astuple

from core.errors import Unavailable
from core.events import decode
from core.run import RunStatus, TaskStatus
from core.snapshots import TaskNode
from projections import rows
from projections.protocol import Entry, all_statuses, parse_cursor
from projections.views import (
    ALL_RUNS,
    TERMINAL_RUN_STATUSES,
    AttemptRow,
    EventRow,
    Page,
    RunDetail,
    RunFilter,
    RunRow,
    TaskRunRow,
)

MIGRATIONS: Final = Path(__file__).with_name("migrations")
POLL_SECONDS: Final = 0.05  # how often `wait_for` reads a checkpoint another process advances

# What a lost or unreachable server looks like from asyncpg: all become `Unavailable`.
_DOWN: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # 08xxx, and the connection vanishing
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: terminated, shutting down, starting
    asyncpg.exceptions.InsufficientResourcesError,  # 53xxx: too many connections, disk full
    asyncpg.InterfaceError,  # the connection or pool is closed under us
)

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every numbered migration, in order."""
    found = []
    for path in sorted(MIGRATIONS.glob("[0-9]*.sql")):
        version = int(path.name.split("_", 1)[0])
        found.append((version, path.stem, path.read_text()))
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations in {MIGRATIONS} are not numbered 1..n: {versions}")
    return found


def _insert(
    table: str, columns: str, param: int, key: str = "", keep: str = "", where: str = ""
) -> str:
    """`INSERT ... SELECT` the rows of JSON parameter `$param` (an array of arrays, one per row,
    in column order) `[WHERE where]`; with a `key`, `ON CONFLICT (key) DO UPDATE` every column
    but the key and `keep` (set on insert only). The `definitions` of a run are kept when the
    new value is the placeholder '[]'.

    Rows travel as one JSON document per table, not one array parameter per column: asyncpg
    encodes a 500-event chunk's sixty arrays in ~10 ms, msgspec its JSON in ~0.5 ms, and the
    server reads that faster too."""
    cols = [c.split() for c in columns.split(",")]
    names = [n for n, _ in cols]
    # jsonb: parsed once, then each field is a lookup (json would parse the row per field).
    # A `json` column (an event's body) comes as a string: its text is kept as written.
    values = ", ".join(
        f"(row->{i})::{t}" if t == "jsonb" else f"(row->>{i})::{t}" for i, (_, t) in enumerate(cols)
    )
    sql = (
        f"INSERT INTO {table} ({', '.join(names)})"
        f" SELECT {values} FROM jsonb_array_elements(${param}::jsonb) AS row"
    )
    if where:
        sql += f" WHERE {where}"
    if not key:
        return sql
    fixed = {*key.split(","), *keep.split(",")} - {""}
    sets = ", ".join(
        f"{n} = CASE WHEN excluded.{n} = '[]' THEN {table}.{n} ELSE excluded.{n} END"
        if n == "definitions"
        else f"{n} = excluded.{n}"
        for n in names
        if n not in fixed
    )
    return f"{sql} ON CONFLICT ({key}) DO UPDATE SET {sets}"


# Columns in the field order of the views' rows (a record is `astuple(row)`), extras last.
_EVENT_COLUMNS = (
    "seq bigint, run_id text, type text, ts timestamptz, task_id text, attempt int, body json"
)
_RUN_COLUMNS = (
    "run_id text, kind text, target text, name text, status text, trigger text, context_id text,"
    " idempotency_key text, rerun_of text, requested_by text, counts jsonb, tasks_total int,"
    " failed_tasks jsonb, cancel_requested bool, cancel_reason text, cancelled_by text,"
    " scheduled_at timestamptz, started_at timestamptz, ended_at timestamptz,"
    " scheduled_seq bigint, last_seq bigint, definitions jsonb"
)
_TASK_COLUMNS = (
    "run_id text, task_id text, definition text, name text, queue text, status text,"
    " attempt int, max_attempts int, agent_id text, delivery int, queued_at timestamptz,"
    " started_at timestamptz, ended_at timestamptz, not_before timestamptz, exit_code int,"
    " duration_ms float8, reason text, message text, evaluation_point bool, last_seq bigint"
)
_GRAPH_COLUMNS = "run_id text, seq bigint"
_ATTEMPT_COLUMNS = (
    "run_id text, task_id text, attempt int, status text, queue text, agent_id text, host text,"
    " delivery int, queued_at timestamptz, started_at timestamptz, ended_at timestamptz,"
    " exit_code int, duration_ms float8, reason text, message text, last_seq bigint"
)


def _write_statement(*, guarded: bool = False) -> str:
    """One statement for all of a chunk's rows, the status counts they move and the
    checkpoint (one round trip): a data-modifying CTE per table, fed one JSON array of rows.

    Inside a transaction that locked the checkpoint, the last parameter is the new checkpoint.
    `guarded` is the statement that needs no transaction (a statement is atomic by itself):
    parameters new checkpoint, expected checkpoint, expected epoch; it moves the checkpoint
    only from the expected one, writes rows only if it did, and returns 1 if so, else 0 (another
    writer or a reset came in between, and nothing was written)."""
    tables = [
        ("events", _EVENT_COLUMNS, "", ""),
        ("runs", _RUN_COLUMNS, "run_id", "scheduled_seq"),
        ("task_runs", _TASK_COLUMNS, "run_id,task_id", ""),
        ("attempts", _ATTEMPT_COLUMNS, "run_id,task_id,attempt", ""),
        ("graph_parts", _GRAPH_COLUMNS, "", ""),
    ]
    # The guard takes the checkpoint row's lock first; every write waits for its verdict.
    where = "EXISTS (SELECT FROM guard)" if guarded else ""
    parts = []
    for param, (table, columns, key, keep) in enumerate(tables, 1):
        if table == "runs":  # the runs' statuses before, and the counts moved by the change
            given = f"jsonb_array_elements(${param}::jsonb)"
            parts.append(
                # `= ANY(ARRAY(...))`, not `IN (SELECT ...)`: the planner guesses 100 rows for
                # a JSON array and would hash-join a scan of every run; this is index lookups.
                "runs_before AS (SELECT status FROM runs"
                f" WHERE run_id = ANY (ARRAY(SELECT row->>0 FROM {given} AS row)))"
            )
            parts.append(
                "counts_written AS (INSERT INTO run_counts (status, runs)"
                f" SELECT status, sum(delta) FROM (SELECT row->>4 AS status, 1 AS delta"
                f" FROM {given} AS row UNION ALL SELECT status, -1 FROM runs_before) AS moved"
                f"{' WHERE ' + where if where else ''} GROUP BY status"
                " ON CONFLICT (status) DO UPDATE SET runs = run_counts.runs + excluded.runs)"
            )
        parts.append(f"{table}_written AS ({_insert(table, columns, param, key, keep, where)})")
    first = len(tables) + 1
    if not guarded:
        return f"WITH {', '.join(parts)} UPDATE checkpoint SET last_seq = ${first}"
    guard = (
        f"guard AS (UPDATE checkpoint SET last_seq = ${first}"
        f" WHERE last_seq = ${first + 1} AND epoch = ${first + 2} RETURNING 1)"
    )
    return f"WITH {', '.join([guard, *parts])} SELECT count(*) FROM guard"


WRITE: Final = _write_statement()
WRITE_GUARDED: Final = _write_statement(guarded=True)
CHUNK: Final = 500  # entries folded per statement (the next chunk folds while one is written)

_json = msgspec.json.Encoder()
_counts = msgspec.json.Decoder(dict[str, int])
_strings = msgspec.json.Decoder(tuple[str, ...])


class _GraphPart(msgspec.Struct, frozen=True):
    """What a RunScheduled (`graph`) or a GraphExtended (`nodes`) added to a run's graph; the
    rest of the event is skipped unread."""

    graph: tuple[TaskNode, ...] = ()
    nodes: tuple[TaskNode, ...] = ()

    def added(self) -> tuple[TaskNode, ...]:
        return self.graph or self.nodes


_graph_event = msgspec.json.Decoder(_GraphPart)
_nodes = msgspec.json.Decoder(tuple[TaskNode, ...])


def _graph_part(nodes: str | None, body: str | None) -> tuple[TaskNode, ...]:
    """A `graph_parts` row's nodes: its event's, or (written before version 3) its own."""
    if nodes is not None:
        return _nodes.decode(nodes)
    assert body is not None
    return _graph_event.decode(body).added()


class PostgresReadModel:
    """`projections.protocol.ReadModel` in Postgres: one pool, its own cache of open runs.

    `schema` keeps one installation's tables apart from another's in one database (tests use a
    fresh one each); the connection is made, and the migrations applied, on first use. A
    connection idle for `idle_seconds` is closed (and made again when needed).
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "public",
        max_connections: int = 4,
        idle_seconds: float = 300.0,
        timeout: float = 10.0,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"not a schema name for the read model: {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._max_connections = max_connections
        self._idle_seconds = idle_seconds
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._starting = asyncio.Lock()
        self._writing = asyncio.Lock()
        self._applied = asyncio.Condition()
        self._open: dict[str, rows.OpenRun] = {}  # cache of open runs' projection state
        self._cache_at: tuple[int, int] | None = None  # (checkpoint, epoch) the cache reflects
        where = urlsplit(dsn)
        self._where = f"{where.hostname or 'localhost'}:{where.port or 5432}{where.path}"

    @classmethod
    def from_url(cls, url: str, *, schema: str = "public") -> PostgresReadModel:
        """A store for `postgresql://user@host:port/db` (`postgres://` too)."""
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a Postgres URL: {url!r}")
        return cls(url, schema=schema)

    # -- connecting ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and apply missing migrations (every other method does it when needed)."""
        async with self._guard():
            await self._connected()

    async def _connected(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._starting:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,  # idle connections close (idle_seconds)
                    max_size=self._max_connections,
                    timeout=self._timeout,
                    command_timeout=self._timeout * 6,
                    max_inactive_connection_lifetime=self._idle_seconds,
                    server_settings={
                        "search_path": self.schema,
                        "application_name": "cyclonetix-read-model",
                        # A crash of the server may lose the last commits, never part of one:
                        # rows and checkpoint go together and the projector resumes from it.
                        "synchronous_commit": "off",
                    },
                )
                try:
                    async with pool.acquire() as con:
                        await migrate(con, self.schema)
                except BaseException:
                    pool.terminate()
                    raise
                self._pool = pool
        return self._pool

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _DOWN as exc:
            first = exc
            while isinstance(first, asyncpg.InterfaceError) and isinstance(
                first.__context__, _DOWN
            ):
                first = first.__context__  # ("the connection is closed": say what closed it)
            detail = str(first).strip().splitlines()
            why = f"{type(first).__name__}: {detail[0]}" if detail else type(first).__name__
            raise Unavailable(f"Postgres read model at {self._where} unavailable ({why})") from exc

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._guard():
            pool = await self._connected()
            async with pool.acquire() as con:
                yield con

    # -- writing ---------------------------------------------------------------------------

    async def apply_batch(self, entries: Sequence[Entry]) -> int:
        async with self._writing:
            try:
                async with self._connection() as con:
                    last = await self._write_alone(con, entries)
                    if last is None:
                        async with con.transaction():
                            last = await self._write(con, entries)
            except BaseException:
                self._open.clear()  # folded past what is committed: rebuild from the rows
                self._cache_at = None
                raise
        async with self._applied:
            self._applied.notify_all()
        return last

    async def _write_alone(self, con: asyncpg.Connection, entries: Sequence[Entry]) -> int | None:
        """The live projector's usual batch in one round trip instead of four (begin, lock and
        read the checkpoint, write, commit): one guarded statement, when the cache already
        knows the checkpoint and every run the batch touches and one chunk holds it. None when
        it cannot be written so, or when the guard found the store moved (then the cache is
        dropped and the batch is written in a transaction)."""
        if self._cache_at is None:
            return None
        last, epoch = self._cache_at
        todo = [(seq, event) for seq, event in entries if seq > last]
        if not todo or len(todo) > CHUNK:
            return None
        if any(e is not None and e.run_id not in self._open for _, e in todo):
            return None  # a run to load (or a new one): the transaction reads it
        closed: set[str] = set()

        def lookup(run_id: str) -> rows.OpenRun | rows.Finished | None:
            found = self._open.get(run_id)
            return found if found is not None else rows.FINISHED if run_id in closed else None

        staged = _Staged()
        new_last = self._fold(staged, todo, last, lookup, closed)
        applied = await con.fetchval(WRITE_GUARDED, *staged.arguments(), new_last, last, epoch)
        if applied != 1:
            self._open.clear()  # folded on a store that moved: rebuild from its rows
            self._cache_at = None
            return None
        self._cache_at = (new_last, epoch)
        return new_last

    def _fold(
        self,
        staged: _Staged,
        chunk: Sequence[Entry],
        last: int,
        lookup: rows.Lookup,
        closed: set[str],
    ) -> int:
        """Fold `chunk` into `staged` and the cache of open runs; the last sequence folded."""
        for seq, event in chunk:
            if seq <= last:
                continue  # a sequence repeated within the batch
            changes = rows.apply(lookup, seq, event)
            if changes.opened is not None:
                self._open[changes.opened.state.run_id] = changes.opened
            if changes.graph:
                assert changes.of is not None
                staged.graph(changes, changes.of)
            staged.add(changes)
            if changes.closed and event is not None:
                self._open.pop(event.run_id, None)
                closed.add(event.run_id)
            last = seq
        return last

    async def _write(self, con: asyncpg.Connection, entries: Sequence[Entry]) -> int:
        found = await con.fetchrow("SELECT last_seq, epoch FROM checkpoint FOR UPDATE")
        assert found is not None
        last, epoch = int(found[0]), int(found[1])
        if self._cache_at != (last, epoch):
            self._open.clear()  # another writer (or a reset) moved the store: start cold
        todo = [(seq, event) for seq, event in entries if seq > last]
        if not todo:
            self._cache_at = (last, epoch)
            return last
        known = await self._load(
            con, {e.run_id for _, e in todo if e is not None} - set(self._open)
        )
        closed: set[str] = set()

        def lookup(run_id: str) -> rows.OpenRun | rows.Finished | None:
            found = self._open.get(run_id)
            if found is not None:
                return found
            if run_id in closed:
                return rows.FINISHED
            return known.get(run_id)

        # Chunks are folded while the server writes the previous one (one statement each).
        writing: asyncio.Future[None] | None = None
        try:
            for start in range(0, len(todo), CHUNK):
                staged = _Staged()
                last = self._fold(staged, todo[start : start + CHUNK], last, lookup, closed)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(staged.write(con, last))
                await asyncio.sleep(0)  # sent: the server works while the next chunk folds
            assert writing is not None
            await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()
                with contextlib.suppress(BaseException):
                    await writing
        self._cache_at = (last, epoch)
        return last

    async def _load(
        self, con: asyncpg.Connection, run_ids: set[str]
    ) -> dict[str, rows.OpenRun | rows.Finished | None]:
        """What `rows.apply`'s lookup answers for runs missing from the cache."""
        if not run_ids:
            return {}
        known: dict[str, rows.OpenRun | rows.Finished | None] = dict.fromkeys(run_ids)
        stored = await con.fetch(
            "SELECT run_id, status FROM runs WHERE run_id = ANY($1::text[])", list(run_ids)
        )
        reopen = []
        for run_id, status in stored:
            if RunStatus(status) in TERMINAL_RUN_STATUSES:
                known[run_id] = rows.FINISHED
            else:
                reopen.append(run_id)
        if reopen:
            history: dict[str, list[tuple[int, Any]]] = {r: [] for r in reopen}
            for run_id, seq, body in await con.fetch(
                "SELECT run_id, seq, body FROM events WHERE run_id = ANY($1::text[])"
                " ORDER BY run_id, seq",
                reopen,
            ):
                history[run_id].append((seq, decode(body.encode())))
            for run_id, events in history.items():
                state = rows.rebuild(events)
                known[run_id] = state
                if isinstance(state, rows.OpenRun):
                    self._open[run_id] = state
        return known

    async def checkpoint(self) -> int:
        async with self._connection() as con:
            return int(await con.fetchval("SELECT last_seq FROM checkpoint"))

    async def wait_for(self, seq: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.checkpoint() < seq:
            left = deadline - loop.time()
            if left <= 0:
                return False
            # Woken at once by this instance's commits; another process's, by polling.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, POLL_SECONDS)), self._applied:
                    await self._applied.wait()
        return True

    async def reset(self) -> None:
        async with self._writing:
            self._open.clear()
            self._cache_at = None
            async with self._connection() as con, con.transaction():
                # the writers' lock order (checkpoint first): no deadlock with a batch
                await con.execute("LOCK TABLE checkpoint IN EXCLUSIVE MODE")
                await con.execute(
                    "TRUNCATE runs, run_counts, task_runs, attempts, graph_parts, events;"
                    " UPDATE checkpoint SET last_seq = 0, epoch = epoch + 1"
                )

    async def close(self) -> None:
        self._open.clear()
        self._cache_at = None
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except (*_DOWN, asyncpg.PostgresError):
                pool.terminate()

    # -- reading ---------------------------------------------------------------------------

    async def list_runs(
        self, filter: RunFilter = ALL_RUNS, limit: int = 50, cursor: str | None = None
    ) -> Page[RunRow]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        sql, args = list_runs_query(filter, limit, cursor)
        async with self._connection() as con:
            found = [_run_row(r) for r in await con.fetch(sql, *args)]
        items = tuple(found[:limit])
        more = len(found) > limit
        return Page(items=items, next_cursor=str(items[-1].scheduled_seq) if more else None)

    async def count_runs(self, filter: RunFilter = ALL_RUNS) -> dict[RunStatus, int]:
        args: list[Any] = []
        if filter == RunFilter(status=filter.status):  # every run: the counts kept with them
            sql = "SELECT status, runs FROM run_counts"
        else:
            where, args = _where(filter, with_status=False)
            sql = (
                f"SELECT status, count(*) FROM runs WHERE {' AND '.join(where) or 'true'}"
                " GROUP BY status"
            )
        counts = all_statuses()
        async with self._connection() as con:
            for status, n in await con.fetch(sql, *args):
                counts[RunStatus(status)] = n
        return counts

    async def get_run(self, run_id: str) -> RunDetail | None:
        async with (
            self._connection() as con,
            con.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await con.fetchrow(f"SELECT {_RUN_SELECT} FROM runs WHERE run_id = $1", run_id)
            if row is None:
                return None
            tasks = await con.fetch(
                f"SELECT {_TASK_SELECT} FROM task_runs WHERE run_id = $1", run_id
            )
            parts = await con.fetch(
                "SELECT g.nodes, e.body, g.seq FROM graph_parts g"
                " LEFT JOIN events e ON e.run_id = g.run_id AND e.seq = g.seq"
                " WHERE g.run_id = $1 ORDER BY g.seq",
                run_id,
            )
            as_of = await con.fetchval("SELECT last_seq FROM checkpoint")
        written = {t["task_id"]: t for t in tasks}
        graph, task_rows = [], []
        for nodes, body, seq in parts:
            for node in _graph_part(nodes, body):
                graph.append(node)
                found = written.get(node.id)
                task_rows.append(_task_row(found) if found else rows.pending_row(run_id, node, seq))
        return RunDetail(
            run=_run_row(row), tasks=tuple(task_rows), graph=tuple(graph), as_of_seq=as_of
        )

    async def task_attempts(self, run_id: str, task_id: str) -> tuple[AttemptRow, ...]:
        async with (
            self._connection() as con,
            con.transaction(isolation="repeatable_read", readonly=True),
        ):
            found = await con.fetch(
                f"SELECT {_ATTEMPT_SELECT} FROM attempts WHERE run_id = $1 AND task_id = $2",
                run_id,
                task_id,
            )
            task = await con.fetchrow(
                f"SELECT {_TASK_SELECT} FROM task_runs WHERE run_id = $1 AND task_id = $2",
                run_id,
                task_id,
            )
        return rows.with_queued(map(_attempt_row, found), _task_row(task) if task else None)

    async def recent_events(
        self, run_id: str, after_seq: int = 0, limit: int = 100
    ) -> tuple[EventRow, ...]:
        async with self._connection() as con:
            found = await con.fetch(
                "SELECT seq, run_id, type, ts, task_id, attempt, body FROM events"
                " WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                run_id,
                after_seq,
                limit,
            )
        return tuple(
            EventRow(
                seq=r[0],
                run_id=r[1],
                type=r[2],
                ts=r[3],
                task_id=r[4],
                attempt=r[5],
                body=r[6],
            )
            for r in found
        )


async def migrate(con: asyncpg.Connection, schema: str = "public") -> list[int]:
    """Apply the migrations `schema` lacks, under an advisory lock; returns those applied."""
    applied = []
    async with con.transaction():
        await con.execute(
            "SELECT pg_advisory_xact_lock(hashtext('cyclonetix.read_model'), hashtext($1))",
            schema,
        )
        await con.execute(
            f"CREATE SCHEMA IF NOT EXISTS {schema};"
            f" CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r[0] for r in await con.fetch(f"SELECT version FROM {schema}.schema_migrations")}
        for version, name, sql in migrations():
            if version in done:
                continue
            await con.execute(f"SET LOCAL search_path = {schema}; {sql}")
            await con.execute(
                f"INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)",
                version,
                name,
            )
            applied.append(version)
    return applied


# -- rows <-> records ---------------------------------------------------------------------------


class _Staged:
    """A batch's changes, the last row per key (an upsert may touch a row once per statement)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.runs: dict[str, rows.Changes] = {}  # run id -> its last change (rows.run_rows)
        self.tasks: dict[tuple[str, str], TaskRunRow] = {}
        self.attempts: dict[tuple[str, str, int], AttemptRow] = {}
        self.parts: list[tuple[str, int]] = []  # events whose nodes joined a graph: run, seq
        self.definitions: dict[str, list[str]] = {}  # run -> its graph's definitions, if grown

    def graph(self, c: rows.Changes, run: rows.OpenRun) -> None:
        run_id = run.state.run_id
        self.parts.append((run_id, c.seq))
        self.definitions[run_id] = sorted({t.node.task_id for t in run.state.tasks.values()})

    def add(self, c: rows.Changes) -> None:
        if (e := c.event) is not None:
            self.events.append((e.seq, e.run_id, e.type, e.ts, e.task_id, e.attempt, e.body))
        if c.of is not None:
            self.runs[c.of.state.run_id] = c
        # A task that joins a graph pending gets no row until it leaves pending: `get_run` makes
        # that row from the graph (a 5,000-task run starts with one row, not 5,001).
        for t in c.tasks:
            self.tasks[t.run_id, t.task_id] = t
        for a in rows.attempts_to_write(c):
            self.attempts[a.run_id, a.task_id, a.attempt] = a

    def arguments(self) -> list[str]:
        """The write statements' JSON documents, one per table."""
        return [
            _json.encode(rows).decode()
            for rows in (
                self.events,
                list(map(self._run, rows.run_rows(self.runs.values()))),
                list(map(astuple, self.tasks.values())),
                list(map(astuple, self.attempts.values())),
                self.parts,
            )
        ]

    async def write(self, con: asyncpg.Connection, checkpoint: int) -> None:
        await con.execute(WRITE, *self.arguments(), checkpoint)

    def _run(self, r: RunRow) -> tuple[Any, ...]:
        return (*astuple(r), self.definitions.get(r.run_id, ()))


_RUN_SELECT: Final = (
    "run_id, kind, target, name, status, trigger, context_id, idempotency_key, rerun_of,"
    " requested_by, counts, tasks_total, failed_tasks, cancel_requested, cancel_reason,"
    " cancelled_by, scheduled_at, started_at, ended_at, scheduled_seq, last_seq"
)
_TASK_SELECT: Final = (
    "run_id, task_id, definition, name, queue, status, attempt, max_attempts, agent_id,"
    " delivery, queued_at, started_at, ended_at, not_before, exit_code, duration_ms, reason,"
    " message, evaluation_point, last_seq"
)
_ATTEMPT_SELECT: Final = (
    "run_id, task_id, attempt, status, queue, agent_id, host, delivery, queued_at, started_at,"
    " ended_at, exit_code, duration_ms, reason, message, last_seq"
)


def list_runs_query(f: RunFilter, limit: int, cursor: str | None) -> tuple[str, list[Any]]:
    """`list_runs`' SQL and arguments: one page (and one row more) newest first, from the
    keyset cursor on; `EXPLAIN` it to see which index serves a filter."""
    before = parse_cursor(cursor)
    where, args = _where(f, with_status=True)
    if before is not None:
        args.append(before)
        where.append(f"scheduled_seq < ${len(args)}")
    args.append(limit + 1)
    sql = (
        f"SELECT {_RUN_SELECT} FROM runs WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY scheduled_seq DESC LIMIT ${len(args)}"
    )
    return sql, args


def _where(f: RunFilter, *, with_status: bool) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their arguments) selecting `f`'s runs: `protocol.matches`."""
    where: list[str] = []
    args: list[Any] = []

    def add(condition: str, value: object) -> None:
        args.append(value)
        where.append(condition.format(f"${len(args)}"))

    if with_status and f.status is not None:
        add("status = {}", f.status.value)
    if f.kind is not None:
        add("kind = {}", f.kind)
    if f.target is not None:
        add("target = {}", f.target)
    if f.trigger is not None:
        add("trigger = {}", f.trigger)
    if f.since is not None:
        add("scheduled_at >= {}", f.since)
    if f.until is not None:
        add("scheduled_at < {}", f.until)
    if f.task is not None:
        add("definitions @> {}::jsonb", _json.encode([f.task]).decode())
    return where, args


def _run_row(r: asyncpg.Record) -> RunRow:
    fields = dict(r)
    counts = _counts.decode(fields["counts"])  # (jsonb reorders keys: put back the views')
    fields["counts"] = {s.value: counts.get(s.value, 0) for s in TaskStatus}
    fields["failed_tasks"] = _strings.decode(fields["failed_tasks"])
    return msgspec.convert(fields, RunRow)


def _task_row(r: asyncpg.Record) -> TaskRunRow:
    return msgspec.convert(dict(r), TaskRunRow)


def _attempt_row(r: asyncpg.Record) -> AttemptRow:
    return msgspec.convert(dict(r), AttemptRow)
