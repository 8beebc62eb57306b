"""Identifiers: run ids, shards, and deterministic message ids.

Run ids are `<slug>-<ulid>`: URL-safe and NATS-subject-safe, unique across processes (80 random
bits), and sortable by time among runs of the same target. The display name is kept apart.
"""

from __future__ import annotations

import re
import zlib

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,127}$")
SHARDS = 16  # fixed at install: part of every event subject


def ulid(now_ms: int, entropy: bytes) -> str:
    """A 26-character ULID from a millisecond timestamp and 10 bytes of randomness."""
    if len(entropy) < 10:
        raise ValueError("ulid needs 10 bytes of entropy")
    value = ((now_ms & ((1 << 48) - 1)) << 80) | int.from_bytes(entropy[:10], "big")
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def slug(text: str, limit: int = 40) -> str:
    """Lower-case, URL-safe form of a name: runs of other characters become one dash."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "run"


def new_run_id(name: str, now_ms: int, entropy: bytes) -> str:
    return f"{slug(name)}-{ulid(now_ms, entropy).lower()}"


def check_run_id(run_id: str) -> str:
    """Validate a user-chosen run id; raises ValueError with a one-line reason."""
    if not RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use 1-128 letters, digits, '_' or '-', "
            "not starting with '-'"
        )
    return run_id


def shard_of(run_id: str) -> int:
    """Stable shard of a run (crc32 is stable across processes, unlike hash())."""
    return zlib.crc32(run_id.encode()) % SHARDS
