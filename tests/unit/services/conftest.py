"""Fixtures for the roles on the in-memory backplane: one `MemoryServer` per test, a connection
for the test itself, and a factory of further connections (another process: an orchestrator,
a standby)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.ports import Backplane
from tests.fakes import MemoryBackplane, MemoryServer
from tests.rolekit import Connect


@pytest.fixture
def server() -> MemoryServer:
    return MemoryServer()


@pytest.fixture
async def bp(server: MemoryServer) -> AsyncIterator[MemoryBackplane]:
    async with server.connect("test") as conn:
        yield conn


@pytest.fixture
def connect(server: MemoryServer) -> Connect:
    async def new_connection() -> Backplane:
        return server.connect("orchestrator")

    return new_connection
