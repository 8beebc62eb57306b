"""A long-lived role runs with the collector settled (services/collector.py). Checked in a child
interpreter: freezing the test process's own heap would change every test after this one."""

from __future__ import annotations

import subprocess
import sys

ROLE = """
import asyncio, gc
from services.cli.common import until_stopped
from services.collector import GC_THRESHOLD

seen = []

async def work(stop):
    seen.append((gc.get_threshold(), gc.get_freeze_count()))

assert gc.get_freeze_count() == 0 and gc.get_threshold() != GC_THRESHOLD
asyncio.run(until_stopped(work))
(threshold, frozen), = seen
assert threshold == GC_THRESHOLD, threshold
assert frozen > 10_000, frozen  # what start-up loaded (modules, their objects)
print("ok")
"""


def test_a_role_started_by_until_stopped_runs_with_the_collector_settled() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ROLE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
