"""In-memory implementations of every port in `services.ports`, for tests.

`MemoryBackplane()` is a connection to a private `MemoryServer`; `server.connect()` gives more
connections to the same server (another agent, a standby orchestrator). The contract suite in
`tests/contract/` runs the same tests against these fakes and against NATS, so what a test
learns from the fake holds for the real adapter.
"""

from __future__ import annotations

from tests.fakes.backplane import (
    AGENT_TTL,
    DUPLICATE_WINDOW,
    LEASE_TTL,
    MAX_PAYLOAD,
    MemoryBackplane,
    MemoryServer,
)
from tests.fakes.clock import Clock
from tests.fakes.faults import Faults

__all__ = [
    "AGENT_TTL",
    "DUPLICATE_WINDOW",
    "LEASE_TTL",
    "MAX_PAYLOAD",
    "Clock",
    "Faults",
    "MemoryBackplane",
    "MemoryServer",
]
