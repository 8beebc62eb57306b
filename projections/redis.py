"""The Redis read model (`redis.asyncio`): rows a projector writes and every process can query.

Every key of one installation starts with its prefix `P` (default `cx:rm:`), so installations
(and tests) share a server without touching each other's keys:

    P checkpoint         string   the last stream sequence applied
    P runs               hash     run id -> RunRow (JSON)
    P status             hash     run id -> its status (what the status index holds it under)
    P all                zset     run id by scheduled_seq: the runs list, newest first
    P by:status:<s>      zset     the same, per run status        (index of `status`)
    P by:kind:<k>        zset     per kind, target, trigger and   (indexes of `kind`, `target`,
    P by:target:<t>      zset       task definition in the graph    `trigger`, `task`)
    P by:trigger:<t>     zset
    P by:task:<d>        zset
    P at                 zset     run id by scheduled_at (microseconds since 1970): `since`/`until`
    P n:<field>:<value>  hash     status -> runs with that kind, target, trigger or task definition
    P d:<run>            set      the task definitions in a run's graph (what its counts are under)
    P t:<run>            hash     node id -> TaskRunRow, once the task has left pending
    P g:<run>            hash     graph position -> "<seq> <TaskNode>": the graph, in order,
                                  each node with the sequence of the event that added it
    P a:<run>            hash     "<node id> <attempt>" -> AttemptRow
    P e:<run>            zset     EventRow by seq (also the history a cold cache rebuilds from)

Writes follow `projections.rows` exactly as `projections.memory` does, but for two rows that
`get_run` and `task_attempts` make when read: a pending task's (from its node: a 5,000-task run
is scheduled without 5,000 rows) and a queued attempt's (`rows.queued_attempt`, from its task's
row). Each batch is folded in this process, then written with ONE Lua script call (EVALSHA) per
chunk of at most `CHUNK` entries: the script compares the stored checkpoint with the one the
fold started from, and only if they match writes every row, index and the new checkpoint. A Lua
script runs atomically in Redis (no other command sees half of it), takes one round trip, and
can check the checkpoint and write in the same step; MULTI/EXEC would need WATCH on a dedicated
connection and a retry loop for the same guarantee. A script is not rolled back if a command
fails mid-way, so every write in it is idempotent (HSET, ZADD, a status index moved by the
status it records) and the checkpoint is set last: a script cut short leaves the old checkpoint
and rows that the retry overwrites with the same values. A mismatch (another projector, a
reset, or this store's own write whose reply was lost and that redis-py sent again) drops the
cache of open runs and folds the rest again from what is committed, so two projectors on one
store still apply each entry once. When a write fails the cache is dropped as well (the runs
are rebuilt from their events). A batch larger than `CHUNK` is written as several atomic steps,
each with its checkpoint: an interrupted batch leaves a prefix of it applied, which the
projector resumes after (the rows are the same whatever the split). Lists read the smallest
index that the filter names (`list_runs` by status is one ZREVRANGEBYSCORE of `limit + 1` ids
and one HMGET); counts are ZCARD or ZINTERCARD of the indexes, never a scan of the runs (a time
window reads only the runs in it). Needs Redis >= 7.0 (ZINTERCARD) and a single server or
primary (not Cluster: the script builds its keys from the prefix). When Redis cannot be
reached, or a connection dies mid-call, every method raises `core.errors.Unavailable` with one
line; the caller retries and the store catches up from its checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from core.errors import Unavailable
from core.events import decode
from core.run import RunStatus
from core.snapshots import TaskNode
from projections import rows
from projections.protocol import Entry, all_statuses, matches, parse_cursor
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

DEFAULT_PREFIX: Final = "cx:rm:"
CHUNK: Final = 2_000  # entries per atomic write (a script runs alone on the server: keep it short)
POLL_SECONDS: Final = 0.05  # how often `wait_for` reads a checkpoint another process advances
SCAN_CHUNK: Final = 256  # ids read per step when a list must filter what an index gives it
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO: Final = dt.timedelta(microseconds=1)
# The keys of an installation, after its prefix (`reset` deletes these and nothing else).
_OURS: Final = re.compile(rb"(?:checkpoint|runs|status|all|at)\Z|(?:by|n|d|t|g|a|e):")
_TERMINAL: Final = frozenset(s.value for s in TERMINAL_RUN_STATUSES)

# What a lost, unreachable or not-yet-ready server looks like from redis-py: all `Unavailable`.
_DOWN: Final = (
    OSError,  # (TimeoutError too)
    rexc.ConnectionError,  # refused, reset, closed; BusyLoadingError (still loading its data)
    rexc.TimeoutError,
    rexc.ReadOnlyError,  # a replica, or a primary demoted
    rexc.OutOfMemoryError,  # maxmemory reached: the script is refused before it writes
)
_DOWN_REPLIES: Final = ("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")

# ARGV: prefix, expected checkpoint, new checkpoint, and the rows: one msgpack array of five
# flat arrays of strings (events, runs, tasks, graph nodes, attempts; see `_Batch.payload`).
# One blob instead of a million arguments: Redis's `cmsgpack` unpacks it in C. Every write is
# idempotent; the checkpoint goes last.
_WRITE: Final = """
local p = ARGV[1]
local current = redis.call('GET', KEYS[1]) or '0'
if current ~= ARGV[2] then
  return current
end
local rows = cmsgpack.unpack(ARGV[4])
local events, runs, tasks, graph, attempts = rows[1], rows[2], rows[3], rows[4], rows[5]
for i = 1, #events, 3 do
  redis.call('ZADD', p .. 'e:' .. events[i], events[i + 1], events[i + 2])
end
for i = 1, #runs, 9 do
  local run, status, seq = runs[i], runs[i + 2], runs[i + 3]
  redis.call('HSET', p .. 'runs', run, runs[i + 1])
  local old = redis.call('HGET', p .. 'status', run)
  if old ~= status then
    if old then redis.call('ZREM', p .. 'by:status:' .. old, run) end
    redis.call('ZADD', p .. 'by:status:' .. status, seq, run)
    local groups = {'kind:' .. runs[i + 5], 'target:' .. runs[i + 6], 'trigger:' .. runs[i + 7]}
    for _, d in ipairs(redis.call('SMEMBERS', p .. 'd:' .. run)) do
      groups[#groups + 1] = 'task:' .. d
    end
    for _, g in ipairs(groups) do
      if old then redis.call('HINCRBY', p .. 'n:' .. g, old, -1) end
      redis.call('HINCRBY', p .. 'n:' .. g, status, 1)
    end
    redis.call('HSET', p .. 'status', run, status)
  end
  if runs[i + 4] == '1' then
    redis.call('ZADD', p .. 'all', seq, run)
    redis.call('ZADD', p .. 'by:kind:' .. runs[i + 5], seq, run)
    redis.call('ZADD', p .. 'by:target:' .. runs[i + 6], seq, run)
    redis.call('ZADD', p .. 'by:trigger:' .. runs[i + 7], seq, run)
    redis.call('ZADD', p .. 'at', runs[i + 8], run)
  end
end
for i = 1, #tasks, 3 do
  redis.call('HSET', p .. 't:' .. tasks[i], tasks[i + 1], tasks[i + 2])
end
-- A 5,000-node graph: its nodes go in a few HSETs of many fields, not 5,000; each definition
-- is indexed once per run; the run's status (its row came first) is read once.
local nodes, indexed, statuses = {}, {}, {}
local function flush(run)
  if #nodes[run] > 0 then redis.call('HSET', p .. 'g:' .. run, unpack(nodes[run])) end
  nodes[run] = {}
end
for i = 1, #graph, 5 do
  local run, definition = graph[i], graph[i + 3]
  if not nodes[run] then nodes[run], indexed[run] = {}, {} end
  local fields = nodes[run]
  fields[#fields + 1] = graph[i + 1]
  fields[#fields + 1] = graph[i + 2]
  if #fields >= 2000 then flush(run) end  -- (unpack's limit is a few thousand values)
  if not indexed[run][definition] then
    indexed[run][definition] = true
    redis.call('ZADD', p .. 'by:task:' .. definition, graph[i + 4], run)
    if redis.call('SADD', p .. 'd:' .. run, definition) == 1 then
      if statuses[run] == nil then
        statuses[run] = redis.call('HGET', p .. 'status', run) or false
      end
      local now = statuses[run]
      if now then redis.call('HINCRBY', p .. 'n:task:' .. definition, now, 1) end
    end
  end
end
for run in pairs(nodes) do flush(run) end
for i = 1, #attempts, 3 do
  redis.call('HSET', p .. 'a:' .. attempts[i], attempts[i + 1], attempts[i + 2])
end
redis.call('SET', KEYS[1], ARGV[3])
return ARGV[3]
"""

_encode = msgspec.json.Encoder().encode
_msgpack = msgspec.msgpack.Encoder().encode
_run_row = msgspec.json.Decoder(RunRow).decode
_task_row = msgspec.json.Decoder(TaskRunRow).decode
_attempt_row = msgspec.json.Decoder(AttemptRow).decode
_event_row = msgspec.json.Decoder(EventRow).decode
_node = msgspec.json.Decoder(TaskNode).decode


def _micros(at: dt.datetime) -> int:
    """A timestamp as the integer score of the `at` index (exact: below 2**53)."""
    return (at - _EPOCH) // _MICRO


def _json(row: object) -> str:
    return _encode(row).decode()


def _text(raw: object) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class RedisReadModel:
    """`projections.protocol.ReadModel` in Redis, under one key prefix per installation.

    `url` is anything `redis.asyncio.from_url` takes (`redis://`, `rediss://`, `unix://`);
    use `from_url` to take the prefix from the URL too. Nothing connects before the first call.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = DEFAULT_PREFIX,
        client_name: str = "cyclonetix-read-model",
        timeout: float = 5.0,
    ) -> None:
        if not prefix:
            raise ValueError("a Redis read model needs a key prefix (e.g. 'cx:rm:')")
        self._prefix = prefix
        parts = urlsplit(url)
        self._where = (
            parts.path
            if parts.scheme == "unix"
            else f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
        )
        self._redis: aioredis.Redis = aioredis.from_url(
            url,
            client_name=client_name,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # A connection found dead is replaced and the command sent once more (a write is
            # safe to resend: its checkpoint guard turns a second run into a no-op); after
            # that the caller gets `Unavailable` and retries with its own backoff.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        )
        self._write = self._redis.register_script(_WRITE)
        self._k_checkpoint = f"{prefix}checkpoint"
        self._open: dict[str, rows.OpenRun] = {}  # cache of open runs' projection state
        self._committed: int | None = None  # the checkpoint the cache reflects (None: unknown)
        self._writing = asyncio.Lock()
        self._applied = asyncio.Event()  # set whenever this store commits (wakes `wait_for`)

    @classmethod
    def from_url(cls, url: str) -> RedisReadModel:
        """A store from `redis://[user:password@]host[:port][/db][?prefix=P&...]` (also
        `rediss://` and `unix:///path/redis.sock?db=N&prefix=P`). `prefix` defaults to
        `cx:rm:`; the other query parameters go to redis-py (`socket_timeout`, ...)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a Redis URL (redis://host:port/db?prefix=...): {url!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
        rest = urlencode([(k, v) for k, v in query if k != "prefix"])
        return cls(urlunsplit(parts._replace(query=rest)), prefix=prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _DOWN as exc:
            why = _first_line(exc)
            raise Unavailable(f"Redis read model at {self._where} unavailable ({why})") from exc
        except rexc.ResponseError as exc:
            if not str(exc).startswith(_DOWN_REPLIES):
                raise
            why = _first_line(exc)
            raise Unavailable(f"Redis read model at {self._where} unavailable ({why})") from exc

    def _k(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    # -- writing ---------------------------------------------------------------------------

    async def apply_batch(self, entries: Sequence[Entry]) -> int:
        async with self._writing, self._guard():
            try:
                return await self._apply(entries)
            except BaseException:
                self._open.clear()  # folded past what is committed: rebuild from the rows
                self._committed = None
                raise

    async def _apply(self, entries: Sequence[Entry]) -> int:
        # The checkpoint this process wrote last is taken as the store's: the script checks it
        # anyway, and a live batch is then one round trip, not two. If the store moved
        # meanwhile, the script writes nothing and the checkpoint is read.
        last = self._committed if self._committed is not None else await self._checkpoint()
        while True:
            pending = [e for e in entries if e[0] > last]
            if not pending:
                return last
            if self._committed != last:
                self._open.clear()  # the store moved without us (or we lost track): start cold
            for start in range(0, len(pending), CHUNK):
                written = await self._write_chunk(pending[start : start + CHUNK], last)
                if written is None:  # someone else wrote first: fold again from what is there
                    self._open.clear()
                    self._committed = None
                    last = await self._checkpoint()
                    break
                last = self._committed = written
                self._applied.set()
                self._applied = asyncio.Event()
            else:
                return last

    async def _write_chunk(self, chunk: Sequence[Entry], base: int) -> int | None:
        """Fold `chunk` onto the cache and write it if the checkpoint is still `base`; returns
        the new checkpoint, or None when it was not `base` any more (nothing written)."""
        missing = {e.run_id for _, e in chunk if e is not None and e.run_id not in self._open}
        found = await self._load(missing)
        closed: set[str] = set()

        def lookup(run_id: str) -> rows.OpenRun | rows.Finished | None:
            run = self._open.get(run_id)
            if run is not None:
                return run
            if run_id in closed:
                return rows.FINISHED
            return found.get(run_id)

        batch = _Batch()
        for seq, event in chunk:
            changes = rows.apply(lookup, seq, event)
            if event is None:
                continue
            if changes.opened is not None:
                self._open[event.run_id] = changes.opened
            run = self._open.get(event.run_id)
            if run is not None:
                batch.add(changes, run)
            elif changes.event is not None:
                batch.events.append(changes.event)
            if changes.closed:
                self._open.pop(event.run_id, None)
                closed.add(event.run_id)
        new = chunk[-1][0]
        args: list[str | bytes] = [self._prefix, str(base), str(new), batch.payload()]
        got = int(await self._write(keys=[self._k_checkpoint], args=args))
        return new if got == new else None

    async def _load(self, run_ids: set[str]) -> dict[str, rows.OpenRun | rows.Finished | None]:
        """Runs missing from the cache: finished, never seen, or rebuilt from their events."""
        if not run_ids:
            return {}
        ids = sorted(run_ids)
        statuses = await self._redis.hmget(self._k("status"), ids)
        found: dict[str, rows.OpenRun | rows.Finished | None] = {}
        rebuild: list[str] = []
        for run_id, status in zip(ids, statuses, strict=True):
            if status is None:
                found[run_id] = None
            elif _text(status) in _TERMINAL:
                found[run_id] = rows.FINISHED
            else:
                rebuild.append(run_id)
        if rebuild:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in rebuild:
                    pipe.zrange(self._k("e", run_id), 0, -1)
                histories = await pipe.execute()
            for run_id, history in zip(rebuild, histories, strict=True):
                events = (_event_row(raw) for raw in history)
                state = rows.rebuild((e.seq, decode(e.body.encode())) for e in events)
                found[run_id] = state
                if isinstance(state, rows.OpenRun):
                    self._open[run_id] = state
        return found

    async def _checkpoint(self) -> int:
        raw = await self._redis.get(self._k_checkpoint)
        return 0 if raw is None else int(raw)

    async def checkpoint(self) -> int:
        async with self._guard():
            return await self._checkpoint()

    async def wait_for(self, seq: int, timeout: float) -> bool:
        # The timeout bounds the waiting, not a read: a slow answer that says yes is a yes.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            applied = self._applied
            if await self.checkpoint() >= seq:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            # Woken by this store's own commits at once, by other writers' on the poll.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(applied.wait(), min(left, POLL_SECONDS))

    async def reset(self) -> None:
        async with self._writing, self._guard():
            self._open.clear()
            self._committed = None
            await self._redis.delete(self._k_checkpoint)
            pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._prefix) + "*"
            doomed: list[bytes] = []
            async for key in self._redis.scan_iter(match=pattern, count=1000):
                if not _OURS.match(key, len(self._prefix)):
                    continue  # another installation's key under a longer prefix: not ours
                doomed.append(key)
                if len(doomed) >= 1000:
                    await self._redis.unlink(*doomed)
                    doomed.clear()
            if doomed:
                await self._redis.unlink(*doomed)

    async def close(self) -> None:
        self._open.clear()
        self._committed = None
        with contextlib.suppress(*_DOWN):
            await self._redis.aclose()

    # -- reading ---------------------------------------------------------------------------

    async def list_runs(
        self, filter: RunFilter = ALL_RUNS, limit: int = 50, cursor: str | None = None
    ) -> Page[RunRow]:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        before = parse_cursor(cursor)
        async with self._guard():
            found = await self._find(filter, limit + 1, before)
        more = len(found) > limit
        items = tuple(found[:limit])
        return Page(items=items, next_cursor=str(items[-1].scheduled_seq) if more else None)

    async def _find(self, f: RunFilter, want: int, before: int | None) -> list[RunRow]:
        """Up to `want` runs matching `f` (status included) below `before`, newest first."""
        indexes = self._indexes(f, with_status=True)
        driver, window = await self._smallest(f, indexes)
        if window is not None:
            return await self._find_in_window(f, want, before, window)
        exact = indexes in ([], [driver]) and f.since is None and f.until is None
        found: list[RunRow] = []
        top: str = "+inf" if before is None else f"({before}"
        while len(found) < want:
            step = want - len(found) if exact else max(SCAN_CHUNK, want)
            got: list[Any] = await self._redis.zrevrangebyscore(
                driver, top, "-inf", start=0, num=step, withscores=True
            )
            if not got:
                break
            ids = [_text(m) for m, _ in got]
            found.extend(await self._rows_matching(f, ids))
            if len(got) < step:
                break
            top = f"({int(got[-1][1])}"
        return found[:want]

    async def _find_in_window(
        self, f: RunFilter, want: int, before: int | None, window: list[str]
    ) -> list[RunRow]:
        seqs = await self._redis.zmscore(self._k("all"), window) if window else []
        ordered = sorted(
            ((int(s), r) for r, s in zip(window, seqs, strict=True) if s is not None),
            reverse=True,
        )
        ids = [r for s, r in ordered if before is None or s < before]
        found: list[RunRow] = []
        for start in range(0, len(ids), SCAN_CHUNK):
            found.extend(await self._rows_matching(f, ids[start : start + SCAN_CHUNK]))
            if len(found) >= want:
                break
        return found[:want]

    async def _rows_matching(self, f: RunFilter, ids: list[str]) -> list[RunRow]:
        """The rows of `ids` (in that order) that match `f`, status included; the task filter
        is checked against its index (a run row does not hold its graph)."""
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k("runs"), ids)
            task_key = self._k("by", "task", f.task) if f.task is not None else None
            if task_key is not None:
                pipe.zmscore(task_key, ids)
            got = await pipe.execute()
        in_task = got[1] if task_key is not None else [True] * len(ids)
        out: list[RunRow] = []
        for raw, has_task in zip(got[0], in_task, strict=True):
            if raw is None:
                continue
            row = _run_row(raw)
            tasks = {f.task} if f.task is not None and has_task is not None else set()
            if (f.status is None or row.status == f.status) and matches(row, f, tasks):
                out.append(row)
        return out

    async def count_runs(self, filter: RunFilter = ALL_RUNS) -> dict[RunStatus, int]:
        async with self._guard():
            counts = all_statuses()
            statuses = list(counts)
            indexes = self._indexes(filter, with_status=False)
            named = self._named(filter, with_status=False)
            if filter.since is None and filter.until is None and len(named) == 1:
                [(name, value)] = named
                found = await self._redis.hgetall(self._k("n", name, value))
                for s, n in found.items():
                    counts[RunStatus(_text(s))] = int(n)
                return counts
            if filter.since is None and filter.until is None:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for s in statuses:
                        by_status = self._k("by", "status", s)
                        if indexes:
                            pipe.zintercard(1 + len(indexes), [by_status, *indexes])
                        else:
                            pipe.zcard(by_status)
                    got = await pipe.execute()
                return dict(zip(statuses, (int(n) for n in got), strict=True))
            driver, window = await self._smallest(filter, indexes)
            ids = window if window is not None else [_text(m) for m in await self._members(driver)]
            for start in range(0, len(ids), 4 * SCAN_CHUNK):
                part = ids[start : start + 4 * SCAN_CHUNK]
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(self._k("status"), part)
                    pipe.zmscore(self._k("at"), part)
                    for key in indexes:
                        pipe.zmscore(key, part)
                    status, at, *member = await pipe.execute()
                lo = _micros(filter.since) if filter.since is not None else None
                hi = _micros(filter.until) if filter.until is not None else None
                for j, s in enumerate(status):
                    score = at[j]
                    if s is None or score is None or any(m[j] is None for m in member):
                        continue
                    if (lo is not None and score < lo) or (hi is not None and score >= hi):
                        continue
                    counts[RunStatus(s.decode())] += 1
            return counts

    @staticmethod
    def _named(f: RunFilter, *, with_status: bool) -> list[tuple[str, str]]:
        """Every equality the filter names, as (field, value)."""
        fields = (
            ("status", f.status if with_status else None),
            ("kind", f.kind),
            ("target", f.target),
            ("trigger", f.trigger),
            ("task", f.task),
        )
        return [(name, value) for name, value in fields if value is not None]

    def _indexes(self, f: RunFilter, *, with_status: bool) -> list[str]:
        """The index of every equality the filter names."""
        return [
            self._k("by", name, value) for name, value in self._named(f, with_status=with_status)
        ]

    async def _smallest(self, f: RunFilter, indexes: list[str]) -> tuple[str, list[str] | None]:
        """The index with the fewest runs to read (`all` when the filter names none), or the
        ids of the runs in the time window when that is smaller."""
        timed = f.since is not None or f.until is not None
        candidates = indexes or [self._k("all")]
        if len(candidates) == 1 and not timed:
            return candidates[0], None
        lo = "-inf" if f.since is None else str(_micros(f.since))
        hi = "+inf" if f.until is None else f"({_micros(f.until)}"
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in candidates:
                pipe.zcard(key)
            if timed:
                pipe.zcount(self._k("at"), lo, hi)
            sizes = [int(n) for n in await pipe.execute()]
        best = min(range(len(candidates)), key=sizes.__getitem__)
        if timed and sizes[-1] < sizes[best]:
            window: list[Any] = await self._redis.zrangebyscore(self._k("at"), lo, hi)
            return self._k("all"), [_text(m) for m in window]
        return candidates[best], None

    async def _members(self, key: str) -> list[Any]:
        found: list[Any] = await self._redis.zrange(key, 0, -1)
        return found

    async def get_run(self, run_id: str) -> RunDetail | None:
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            # One MULTI/EXEC: the rows and the checkpoint they reflect, as of one instant.
            pipe.hget(self._k("runs"), run_id)
            pipe.hgetall(self._k("t", run_id))
            pipe.hgetall(self._k("g", run_id))
            pipe.get(self._k_checkpoint)
            raw, tasks, graph, checkpoint = await pipe.execute()
        if raw is None:
            return None
        by_id = {k.decode(): _task_row(v) for k, v in tasks.items()}
        nodes, task_rows = [], []
        for _, value in sorted(graph.items(), key=lambda kv: int(kv[0])):
            added, node = _graph_entry(value)
            nodes.append(node)
            found = by_id.get(node.id)
            task_rows.append(found if found else rows.pending_row(run_id, node, added))
        return RunDetail(
            run=_run_row(raw),
            tasks=tuple(task_rows),
            graph=tuple(nodes),
            as_of_seq=int(checkpoint or 0),
        )

    async def task_attempts(self, run_id: str, task_id: str) -> tuple[AttemptRow, ...]:
        async with self._guard(), self._redis.pipeline(transaction=True) as pipe:
            pipe.hvals(self._k("a", run_id))
            pipe.hget(self._k("t", run_id), task_id)
            found, task = await pipe.execute()
        attempts = (_attempt_row(raw) for raw in found)
        mine = (a for a in attempts if a.task_id == task_id)
        return rows.with_queued(mine, _task_row(task) if task is not None else None)

    async def recent_events(
        self, run_id: str, after_seq: int = 0, limit: int = 100
    ) -> tuple[EventRow, ...]:
        async with self._guard():
            found: list[Any] = await self._redis.zrangebyscore(
                self._k("e", run_id), f"({after_seq}", "+inf", start=0, num=limit
            )
        return tuple(_event_row(raw) for raw in found)


class _Batch:
    """The rows one chunk writes, the last version of each."""

    def __init__(self) -> None:
        self.events: list[EventRow] = []
        # run id -> (its last change, opened in this chunk); rows made in `payload`
        self.runs: dict[str, tuple[rows.Changes, bool]] = {}
        self.tasks: dict[tuple[str, str], TaskRunRow] = {}
        # run, position, node, the run's scheduled_seq, the seq that added the node
        self.graph: list[tuple[str, int, TaskNode, int, int]] = []
        self.attempts: dict[tuple[str, str, int], AttemptRow] = {}

    def add(self, c: rows.Changes, run: rows.OpenRun) -> None:
        if c.event is not None:
            self.events.append(c.event)
        if c.of is not None:
            run_id = c.of.state.run_id
            opened = c.opened is not None or (run_id in self.runs and self.runs[run_id][1])
            self.runs[run_id] = (c, opened)
        if c.graph:
            run_id, first = run.state.run_id, len(run.state.tasks) - len(c.graph)
            for i, node in enumerate(c.graph, start=first):
                self.graph.append((run_id, i, node, run.scheduled_seq, c.seq))
        for t in c.tasks:
            self.tasks[t.run_id, t.task_id] = t
        for a in rows.attempts_to_write(c):
            self.attempts[a.run_id, a.task_id, a.attempt] = a

    def payload(self) -> bytes:
        """The rows as the script reads them: msgpack strings only (its `cmsgpack` has no
        `bin`, and numbers would come back as floats)."""
        events: list[str] = []
        for e in self.events:
            events += (e.run_id, str(e.seq), _json(e))
        runs: list[str] = []
        made = rows.run_rows(c for c, _ in self.runs.values())
        for r, (_, opened) in zip(made, self.runs.values(), strict=True):
            runs += (r.run_id, _json(r), r.status.value, str(r.scheduled_seq), "01"[opened])
            runs += (r.kind, r.target, r.trigger, str(_micros(r.scheduled_at)))
        tasks: list[str] = []
        for t in self.tasks.values():
            tasks += (t.run_id, t.task_id, _json(t))
        graph: list[str] = []
        for run_id, position, node, scheduled, added in self.graph:
            graph += (run_id, str(position), f"{added} {_json(node)}", node.task_id, str(scheduled))
        attempts: list[str] = []
        for a in self.attempts.values():
            attempts += (a.run_id, f"{a.task_id} {a.attempt}", _json(a))
        return _msgpack((events, runs, tasks, graph, attempts))


def _graph_entry(value: bytes) -> tuple[int, TaskNode]:
    """A `g:<run>` value: the sequence that added the node, and the node. A store written
    before that sequence was kept holds the node alone, and a row for each pending task."""
    if value.startswith(b"{"):
        return 0, _node(value)
    added, _, node = value.partition(b" ")
    return int(added), _node(node)
