"""Fault injection for the in-memory backplane: failures a real NATS produces now and then."""

from __future__ import annotations

from core.errors import Unavailable

__all__ = ["Faults"]

EVERY_CALL = 10**9  # a count that does not run out within a test


class Faults:
    """Counters of faults still to inject; each injected fault uses up one.

    Shared by every connection of one `MemoryServer`, like a flaky network would be.
    """

    def __init__(self) -> None:
        self.failing_appends = 0
        self.lost_append_acks = 0
        self.failing_dispatches = 0
        self.dropped_work_acks = 0
        self.failing_consumer_binds = 0
        self.failing_lease_calls = 0
        self.failing_snapshot_calls = 0
        self._lease_fault_connection: str | None = None
        self._append_fault_connection: str | None = None
        self._lease_fault_error: type[BaseException] | None = None

    def fail_appends(self, n: int = 1, *, connection: str | None = None) -> None:
        """The next `n` event appends raise Unavailable and store nothing (the server was
        unreachable until the publish deadline). With `connection`, only appends through the
        connection of that name (one process's writes stuck in a stream leader election)."""
        self.failing_appends += n
        self._append_fault_connection = connection

    def append_fault(self, connection: str) -> bool:
        """Whether an append through `connection` must fail now (using up one fault)."""
        if self._append_fault_connection not in (None, connection):
            return False
        return self.take("failing_appends")

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

    def fail_consumer_binds(self, n: int = 1) -> None:
        """The next `n` bindings to a queue's consumer raise Unavailable (a stream leader
        election under way: the consumer info request times out)."""
        self.failing_consumer_binds += n

    def fail_snapshot_calls(self, n: int = 1) -> None:
        """The next `n` calls of the snapshots port (put, get, delete) raise Unavailable and
        change nothing."""
        self.failing_snapshot_calls += n

    def fail_lease_calls(
        self,
        n: int = 1,
        *,
        connection: str | None = None,
        error: type[BaseException] | None = None,
    ) -> None:
        """The next `n` lease calls (acquire, renew, holder, release) raise and change nothing:
        Unavailable (NATS unreachable), or an instance of `error` (a timeout escaping an
        adapter, say). With `connection`, only calls through the connection of that name
        fail (one process cut off from NATS). `n=EVERY_CALL` until `heal_leases()`."""
        self.failing_lease_calls = n
        self._lease_fault_connection = connection
        self._lease_fault_error = error

    def heal_leases(self) -> None:
        self.failing_lease_calls = 0

    def lease_fault(self, connection: str, what: str) -> BaseException | None:
        """The exception a lease call through `connection` must raise now, if one is due."""
        if self._lease_fault_connection not in (None, connection):
            return None
        if not self.take("failing_lease_calls"):
            return None
        if self._lease_fault_error is not None:
            return self._lease_fault_error(f"injected fault: {what}")
        return self.unavailable(what)

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
