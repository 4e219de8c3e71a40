"""The storage interface: what the API, the dispatcher and housekeeping need.

Each part is a small :class:`typing.Protocol`; :class:`Outbox` is all of them plus a
lifecycle, which :mod:`notifier.outbox.sqlite` and :mod:`notifier.outbox.postgres`
implement and one contract test suite (``tests/test_outbox_contract.py``) checks.
Storage knows nothing of HTTP: a stored message is a :class:`MessageRecord`, and what a
client is answered is the caller's business.

Times are epoch seconds from the clock each outbox is given. Processes on several hosts
sharing a PostgreSQL outbox compare leases and due times against their own clocks, so
keep the hosts' clocks synchronised (NTP); a skew of a second or two only moves a retry
or a lease take-over by as much.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol

from notifier.outbox.records import (
    Claim,
    DeliveryStatus,
    IdempotencyKey,
    Lease,
    MessageRecord,
    NewMessage,
    Outcome,
    Reservation,
)

__all__ = ["DeliveryQueue", "Housekeeping", "IdempotencyStore", "MessageStore", "Outbox"]


class MessageStore(Protocol):
    """Accepted messages, for the API."""

    async def add(
        self,
        message: NewMessage,
        *,
        subscribers: Sequence[str],
        idempotency_key: IdempotencyKey | None = None,
        lease: Lease | None = None,
    ) -> MessageRecord:
        """Store ``message`` with a queued delivery per subscriber, in one transaction
        that is durable when this returns (the 202 is sent after it).

        With ``idempotency_key`` (reserved before), the key is marked done in the same
        transaction; :class:`~notifier.errors.IdempotencyConflict` if the reservation was
        given up and taken by another request meanwhile. With ``lease``, the deliveries
        are stored already leased to that owner, which delivers them without claiming.
        Raises :class:`~notifier.errors.OutboxUnavailable` when nothing could be stored.
        """
        ...

    async def get(self, message_id: str) -> MessageRecord | None:
        """The message with outbox id ``message_id`` and its deliveries, or None."""
        ...

    async def list_messages(
        self, *, status: DeliveryStatus, limit: int, before: str | None
    ) -> list[MessageRecord]:
        """Messages whose overall status is ``status``, newest first, ids below ``before``."""
        ...

    async def retry(self, message_id: str) -> tuple[MessageRecord, int] | None:
        """Queue a message's failed deliveries again, now, with a fresh attempt budget.

        Returns the record after the change and how many deliveries were queued again
        (0 when none had failed: then nothing changes), or None for an unknown id.
        """
        ...


class IdempotencyStore(Protocol):
    """``Idempotency-Key`` reservations, global to every process sharing the outbox."""

    async def reserve(self, key: IdempotencyKey, *, ttl: float) -> Reservation:
        """Reserve ``key`` for a request, or report why it cannot be (see Reservation)."""
        ...

    async def forget(self, key: IdempotencyKey) -> None:
        """Drop a reservation whose request failed before storing anything."""
        ...


class DeliveryQueue(Protocol):
    """Due deliveries, leased to one process at a time, for the dispatcher."""

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[Claim]:
        """Lease up to ``limit`` messages whose deliveries are due or whose lease ran out
        (that cut-off attempt counts). Concurrent claimers never get the same delivery."""
        ...

    async def renew(self, *, owner: str, message_ids: Collection[str], lease_seconds: float) -> int:
        """Extend ``owner``'s leases on these messages to ``lease_seconds`` from now;
        return how many deliveries it still held."""
        ...

    async def record(self, message_id: str, *, owner: str, outcomes: Mapping[str, Outcome]) -> None:
        """Store the outcome of each subscriber's attempt and release the lease (only
        where ``owner`` still holds it: a process that lost its lease changes nothing)."""
        ...

    async def release(self, message_id: str, *, owner: str, subscribers: Iterable[str]) -> None:
        """Give a lease back unfinished (shutting down): due again now, no attempt counted."""
        ...

    async def next_due(self) -> float | None:
        """Epoch seconds of the next delivery that will become due, or None."""
        ...

    async def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever another process may have stored due work, until
        cancelled. A hint only: the dispatcher polls as well. Returns at once where the
        backend has no such signal."""
        ...


class Housekeeping(Protocol):
    """Retention, backlog and health."""

    async def purge(self, *, retention: float) -> int:
        """Delete idempotency keys past their expiry, and finished messages accepted more
        than ``retention`` seconds ago (0: keep them); return how many messages went."""
        ...

    async def stats(self) -> tuple[int, float | None]:
        """Deliveries queued or being sent, and when the oldest such message was accepted."""
        ...

    async def check(self) -> None:
        """Raise :class:`~notifier.errors.OutboxUnavailable` unless messages can be stored."""
        ...


class Outbox(MessageStore, IdempotencyStore, DeliveryQueue, Housekeeping, Protocol):
    """Everything above, with a lifecycle."""

    async def open(self) -> None:
        """Connect, and create or migrate the schema (safe when several processes start
        at once); raise :class:`~notifier.errors.OutboxUnavailable` if unusable."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the outbox may be opened again."""
        ...

    async def describe(self) -> str:
        """One line for operators: the backend, where it is (no password), the schema."""
        ...
