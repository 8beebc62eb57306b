"""Which read model a command reads, and opening it for reading.

A command finds its read model as it finds NATS: `--read-model URL`, else
`$CYCLONETIX_READ_MODEL`, else the one `cyclonetix dev` recorded in `./.cyclonetix/runtime.json`.

Redis and Postgres URLs are opened directly (`projections.stores.open_read_model`). A `memory://`
store cannot be: it lives inside the projector process `dev` runs. That projector answers queries
over NATS request-reply (`services.nats.queries`), and `dev` records `nats+memory://` instead of
`memory://`, which is read here by asking over the NATS `dev` recorded. This is the simplest
design that works: every process already shares NATS, so no HTTP port, socket file or second
store is needed, and the projector that fills the store is the one that answers (so the answer is
as fresh as the store). `projections/` never learns about NATS: the `nats+memory` scheme is known
only here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

from core.errors import Invalid
from core.run import RunStatus
from projections.stores import open_read_model
from projections.views import ALL_RUNS, Page, RunDetail, RunFilter, RunRow
from services.nats import connect
from services.nats.queries import NatsReadModelQueries
from services.runtime_info import read_runtime_info

__all__ = [
    "NATS_MEMORY",
    "READ_MODEL_ENV",
    "NoReadModel",
    "RunsReader",
    "open_reader",
    "recorded_url",
    "resolve_read_model_url",
]

READ_MODEL_ENV: Final = "CYCLONETIX_READ_MODEL"
NATS_MEMORY: Final = "nats+memory://"


class NoReadModel(Invalid):
    """No read model given nor recorded; the message says how to get one."""


class RunsReader(Protocol):
    """What a command reads of a `ReadModel` (a store, or one asked over NATS)."""

    async def list_runs(
        self, filter: RunFilter = ALL_RUNS, limit: int = 50, cursor: str | None = None
    ) -> Page[RunRow]: ...

    async def count_runs(self, filter: RunFilter = ALL_RUNS) -> dict[RunStatus, int]: ...

    async def get_run(self, run_id: str) -> RunDetail | None: ...

    async def close(self) -> None: ...


def is_memory(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "memory"


def recorded_url(store_url: str) -> str:
    """What `dev` records for the store it projects into: a memory store is reached over NATS."""
    return NATS_MEMORY if is_memory(store_url) else store_url


def resolve_read_model_url(
    explicit: str | None,
    data_dir: Path,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """--read-model, else $CYCLONETIX_READ_MODEL, else what `cyclonetix dev` recorded."""
    if explicit:
        return explicit
    if environ.get(READ_MODEL_ENV):
        return environ[READ_MODEL_ENV]
    info = read_runtime_info(data_dir)
    if info and isinstance(info.get("read_model"), str):
        return str(info["read_model"])
    raise NoReadModel(
        f"no read model: pass --read-model URL, set ${READ_MODEL_ENV}, "
        "or run 'cyclonetix dev' in this folder"
    )


@contextlib.asynccontextmanager
async def open_reader(url: str, nats_url: Callable[[], str]) -> AsyncIterator[RunsReader]:
    """A reader of the read model at `url`; `nats_url()` is asked only for `nats+memory://`."""
    if url.lower().startswith(NATS_MEMORY):
        backplane = await connect(nats_url(), name="cyclonetix-cli", provision=False)
        try:
            yield NatsReadModelQueries(backplane.connection)
        finally:
            await backplane.close()
        return
    if is_memory(url):
        raise Invalid(
            f"{url} is private to the process that holds it: read the memory store of "
            f"'cyclonetix dev' with --read-model {NATS_MEMORY} (or from its folder)"
        )
    store = open_read_model(url)
    try:
        yield store
    finally:
        await store.close()
