"""What an agent tells the world about itself: its heartbeat record.

Stored (in the agent registry), so it follows the rules of stored types: unknown fields are
accepted, so an older reader can list agents that a newer version wrote.
"""

from __future__ import annotations

import datetime as dt

import msgspec


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's heartbeat; it expires a few heartbeats after the last one."""

    id: str
    host: str
    pid: int
    queues: list[str]
    running: list[str] = []  # "run_id/task_id/attempt"
    version: str = ""
    started_at: dt.datetime
    seen_at: dt.datetime
