"""What the outbox stores and hands out: messages, deliveries, claims and outcomes.

Delivery state, per (message, subscriber): ``queued`` (due at ``next_attempt_at``),
``sending`` (leased to one process until ``lease_until``; the process renews the lease
while the delivery runs, and a lease that runs out, because its process died, makes the
row due again, counting the attempt that was cut off), ``delivered`` or ``failed``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from notifier.signals import OutboundMessage

__all__ = [
    "ABANDONED_RESERVATION_SECONDS",
    "DELIVERY_STATUSES",
    "Claim",
    "DeliveryRecord",
    "DeliveryState",
    "DeliveryStatus",
    "IdempotencyKey",
    "Lease",
    "MessageRecord",
    "NewMessage",
    "Outcome",
    "Reservation",
    "iso_time",
    "new_message_id",
    "overall_status",
]

DeliveryStatus = Literal["queued", "sending", "delivered", "failed"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = ("queued", "sending", "delivered", "failed")

#: A reservation whose request never finished (its process died) is given up after this.
ABANDONED_RESERVATION_SECONDS = 60.0


def new_message_id() -> str:
    """A new outbox id: 12 hex digits of milliseconds, then 20 random ones (sortable)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A composed message to store."""

    template: str
    context_hash: str
    message_id: str
    sender: str
    recipients: list[str]
    data: bytes = field(repr=False)
    #: The accepting HTTP request's id (``X-Request-ID``), for following it in logs.
    request_id: str | None = None
    #: The version of the template files that rendered it ("" when not known).
    template_version: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One subscriber's state for one message, as ``GET /v1/messages/<id>`` shows it."""

    subscriber: str
    status: DeliveryStatus
    attempts: int
    last_error: str | None
    smtp_code: int | None
    next_attempt_at: float | None
    updated_at: float
    detail: dict[str, Any] | None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "smtp_code": self.smtp_code,
            "next_attempt_at": iso_time(self.next_attempt_at) if self.status == "queued" else None,
            "updated_at": iso_time(self.updated_at),
            **({"detail": self.detail} if self.detail else {}),
        }


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """A stored message and the state of each of its subscribers."""

    id: str
    template: str
    message_id: str
    sender: str
    recipients: list[str]
    created_at: float
    deliveries: list[DeliveryRecord]
    request_id: str | None = None
    #: 12 hex digits naming the template files that rendered it; None for messages
    #: stored before notifier recorded it (or stored without one).
    template_version: str | None = None

    @property
    def status(self) -> DeliveryStatus:
        return overall_status(delivery.status for delivery in self.deliveries)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "template": self.template,
            "message_id": self.message_id,
            "status": self.status,
            "created_at": iso_time(self.created_at),
            "envelope": {"from": self.sender, "to": self.recipients},
            "request_id": self.request_id,
            "template_version": self.template_version,
            "subscribers": {d.subscriber: d.as_json() for d in self.deliveries},
        }


def overall_status(statuses: Iterable[DeliveryStatus]) -> DeliveryStatus:
    """A message's status from its subscribers', as the HTTP API shows it (the rules:
    docs/delivery.md, Statuses)."""
    seen = set(statuses)
    if not seen or seen == {"delivered"}:
        return "delivered"
    if seen <= {"delivered", "failed"}:
        return "failed"
    return "sending" if "sending" in seen else "queued"


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where one subscriber stands with a claimed message."""

    attempts: int
    #: What earlier attempts left behind, e.g. ``retry_recipients`` and ``refused``.
    detail: dict[str, Any] | None

    @property
    def retry_recipients(self) -> list[str] | None:
        return self.detail.get("retry_recipients") if self.detail else None


@dataclass(frozen=True, slots=True)
class Claim:
    """A message leased to one worker, with the subscribers it still has to reach."""

    message: OutboundMessage
    subscribers: dict[str, DeliveryState]
    #: When an operator last retried the message (epoch seconds), if ever: retry limits
    #: by age count from then.
    retried_at: float | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt of one subscriber ended in."""

    status: Literal["delivered", "failed", "queued"]
    error: str | None = None
    smtp_code: int | None = None
    #: For ``queued``: when to try again (epoch seconds).
    next_attempt_at: float | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """An ``Idempotency-Key``, the fingerprint of the request using it, and a token that
    tells this request's reservation from a later one's (after one was abandoned)."""

    key: str
    request_hash: str
    token: str = field(default_factory=lambda: os.urandom(8).hex())


@dataclass(frozen=True, slots=True)
class Reservation:
    """What reserving an idempotency key found.

    ``state`` is ``reserved`` (first use: go on and store the message), ``done`` (a
    finished request: ``id`` and ``message_id`` say which message it stored), ``in_flight``
    (409) or ``mismatch`` (the key was used with another request: 422).
    """

    state: Literal["reserved", "done", "in_flight", "mismatch"]
    #: For ``done``: the outbox id of the message the first request stored.
    id: str | None = None
    #: For ``done``: that message's Message-ID.
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a delivery, and for how long from now (seconds)."""

    owner: str
    seconds: float


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC with milliseconds, as the API shows times."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
