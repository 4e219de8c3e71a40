"""The durable outbox: accepted messages and each subscriber's delivery outcome.

The interface is a few small Protocols (:mod:`notifier.outbox.protocols`); two backends
implement it: :class:`~notifier.outbox.sqlite.SqliteOutbox`, the embedded default for one
machine, and :class:`~notifier.outbox.postgres.PostgresOutbox`, shared by any number of
``notifier serve`` replicas and ``notifier worker`` processes. ``outbox.url`` selects
PostgreSQL; without it, ``outbox.path`` names the SQLite file.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from notifier.outbox.protocols import (
    DeliveryQueue,
    Housekeeping,
    IdempotencyStore,
    MessageStore,
    Outbox,
)
from notifier.outbox.records import (
    DELIVERY_STATUSES,
    Claim,
    DeliveryRecord,
    DeliveryState,
    DeliveryStatus,
    IdempotencyKey,
    Lease,
    MessageRecord,
    NewMessage,
    Outcome,
    Reservation,
    iso_time,
    new_message_id,
    overall_status,
)
from notifier.settings import OutboxSettings

__all__ = [
    "DELIVERY_STATUSES",
    "Claim",
    "DeliveryQueue",
    "DeliveryRecord",
    "DeliveryState",
    "DeliveryStatus",
    "Housekeeping",
    "IdempotencyKey",
    "IdempotencyStore",
    "Lease",
    "MessageRecord",
    "MessageStore",
    "NewMessage",
    "Outbox",
    "Outcome",
    "Reservation",
    "iso_time",
    "new_message_id",
    "open_outbox",
    "overall_status",
]


def open_outbox(settings: OutboxSettings, *, clock: Callable[[], float] = time.time) -> Outbox:
    """The outbox ``settings`` describe (not yet opened: call ``await outbox.open()``)."""
    if settings.url is not None:
        from notifier.outbox.postgres import PostgresOutbox

        return PostgresOutbox(
            settings.url.get_secret_value(), pool_size=settings.pool_size, clock=clock
        )
    from notifier.outbox.sqlite import SqliteOutbox

    return SqliteOutbox(settings.path, clock=clock)
