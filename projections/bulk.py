"""Applying a long history batch after batch (a replay), with the cyclic collector spared.

A replay builds a store's rows and the state of every open run, batch after batch: hundreds of
thousands of long-lived objects that each full pass of the cyclic collector walks again (a
sixth of a replay of 1,000,000 events into memory). What has survived a batch is moved to the
collector's permanent generation (`gc.freeze`) until the replay ends, then handed back.
Reference counting frees everything as usual meanwhile; only cyclic garbage made of frozen
objects waits for the end.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def collector_spared() -> Iterator[Callable[[], None]]:
    """Yields `settle`, to call after each batch applied."""
    enabled = gc.isenabled()

    def settle() -> None:
        if enabled:
            gc.freeze()

    try:
        yield settle
    finally:
        if enabled:
            gc.unfreeze()
