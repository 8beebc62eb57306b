"""Failed logins, limited per account and per client address (web/auth.py's POST /login).

Each failure is counted for the account named (whether it exists or not) and for the address
the request came from, over the last `window` seconds. Once an account has `per_account`
failures in the window, or an address `per_address`, every further attempt is refused (429,
`Retry-After`) before the password is even looked at: the refusal says nothing about whether
the password was right, so the limit cannot be used to guess it. A successful login clears
its account's failures (not the address's: one good account must not reset the count of an
address trying others).

The counts live in this process: each UI process counts on its own (N processes behind a
balancer allow up to N times the limit). Behind a reverse proxy every request comes from the
proxy's address: the per-address limit then counts everyone together.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Blocked", "LoginLimiter"]

MAX_KEYS: Final = 100_000  # names and addresses remembered at most (a flood: oldest dropped)
MAX_KEY_CHARS: Final = 128  # of a name as counted (a form may send a megabyte of one)


@dataclass(frozen=True, slots=True)
class Blocked:
    """A refused attempt: which limit, and whole seconds until an attempt may be made."""

    by: Literal["account", "address"]
    retry_after: int

    @property
    def message(self) -> str:
        what = "for this account" if self.by == "account" else "from this address"
        return f"Too many failed logins {what}; try again in {self.retry_after} s."


class _Failures:
    """Times of failures per key, within a window."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.times: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self.times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.times[key]
            return None
        return times

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0: now)."""
        times = self._recent(key, now)
        if times is None or len(times) < self.limit:
            return 0.0
        # Below the limit again once the failure `limit` from the end leaves the window.
        return times[-self.limit] + self.window - now

    def add(self, key: str, now: float) -> None:
        times = self._recent(key, now)
        if times is None:
            if len(self.times) >= MAX_KEYS:
                self._prune(now)
            times = self.times[key] = deque(maxlen=self.limit)
        times.append(now)

    def clear(self, key: str) -> None:
        self.times.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in list(self.times):
            self._recent(key, now)
        while len(self.times) >= MAX_KEYS:  # still full: forget the oldest keys
            del self.times[next(iter(self.times))]


class LoginLimiter:
    """See the module's docstring. `clock`: monotonic seconds (tests may pass their own)."""

    def __init__(
        self,
        *,
        per_account: int = 5,
        per_address: int = 20,
        window: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accounts = _Failures(per_account, window)
        self.addresses = _Failures(per_address, window)
        self.clock = clock

    def blocked(self, account: str, address: str) -> Blocked | None:
        """Whether an attempt for `account` from `address` is refused now, and for how long."""
        now = self.clock()
        wait = self.accounts.wait(account[:MAX_KEY_CHARS], now)
        if wait > 0:
            return Blocked("account", max(1, math.ceil(wait)))
        wait = self.addresses.wait(address, now)
        if wait > 0:
            return Blocked("address", max(1, math.ceil(wait)))
        return None

    def failed(self, account: str, address: str) -> None:
        now = self.clock()
        self.accounts.add(account[:MAX_KEY_CHARS], now)
        self.addresses.add(address, now)

    def succeeded(self, account: str) -> None:
        self.accounts.clear(account[:MAX_KEY_CHARS])
