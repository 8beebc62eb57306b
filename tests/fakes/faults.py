"""Fault injection for the in-memory backplane: failures a real NATS produces now and then."""

from __future__ import annotations

from core.errors import Unavailable

__all__ = ["Faults"]


class Faults:
    """Counters of faults still to inject; each injected fault uses up one.

    Shared by every connection of one `MemoryServer`, like a flaky network would be.
    """

    def __init__(self) -> None:
        self.failing_appends = 0
        self.lost_append_acks = 0
        self.failing_dispatches = 0
        self.dropped_work_acks = 0

    def fail_appends(self, n: int = 1) -> None:
        """The next `n` event appends raise Unavailable and store nothing (the server was
        unreachable until the publish deadline)."""
        self.failing_appends += n

    def lose_append_acks(self, n: int = 1) -> None:
        """The next `n` event appends are stored, but the caller gets Unavailable (the ack was
        lost: a retry must be recognised as the same append)."""
        self.lost_append_acks += n

    def fail_dispatches(self, n: int = 1) -> None:
        """The next `n` dispatches raise Unavailable and store nothing."""
        self.failing_dispatches += n

    def drop_work_acks(self, n: int = 1) -> None:
        """The next `n` work item acks vanish on the way (the item comes back after ack_wait)."""
        self.dropped_work_acks += n

    def take(self, name: str) -> bool:
        """Use up one fault of counter `name`: True when one was pending."""
        left: int = getattr(self, name)
        if left <= 0:
            return False
        setattr(self, name, left - 1)
        return True

    @staticmethod
    def unavailable(what: str) -> Unavailable:
        return Unavailable(f"injected fault: {what}")
