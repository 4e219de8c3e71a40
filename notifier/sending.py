"""Accepting a message: idempotency, render, compose, durable store, hand-off.

HTTP-free, so that the API's views (and anything else: a CLI, a test) call the same
code. :meth:`Sending.accept` returns only once the message is committed to the outbox:
from then on it is delivered even if this process dies.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from notifier.compose import Attachment
from notifier.dispatch import Dispatcher
from notifier.errors import (
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidIdempotencyKey,
    NothingToRetry,
    OutboxUnavailable,
    UnknownMessage,
)
from notifier.metrics import Metrics
from notifier.outbox import (
    Claim,
    DeliveryState,
    IdempotencyKey,
    Lease,
    MessageRecord,
    NewMessage,
    Outbox,
)
from notifier.renderer import Renderer
from notifier.signals import OutboundMessage

__all__ = ["IDEMPOTENCY_KEY_PATTERN", "Accepted", "Sending", "context_hash", "request_fingerprint"]

#: Idempotency-Key: 1 to 255 visible ASCII characters (spaces allowed inside).
IDEMPOTENCY_KEY_PATTERN = r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def context_hash(context: Mapping[str, Any]) -> str:
    """A stable fingerprint of a request's context (key order does not matter)."""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def request_fingerprint(context: Mapping[str, Any], attachments: Sequence[Attachment] = ()) -> str:
    """A stable fingerprint of a whole request: :func:`context_hash` alone without
    attachments, else also over each attachment's name, type, size and SHA-256, in order
    (the bytes themselves were hashed as they arrived)."""
    fingerprint = context_hash(context)
    if not attachments:
        return fingerprint
    digest = hashlib.sha256(fingerprint.encode("ascii"))
    for attachment in attachments:
        described = [attachment.filename, attachment.content_type, len(attachment.content)]
        digest.update(json.dumps(described, ensure_ascii=True).encode("ascii") + b"\n")
        digest.update(attachment.sha256)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A stored message: what the client is told."""

    id: str
    message_id: str
    #: True when an earlier request with the same Idempotency-Key stored it.
    replayed: bool = False


class Sending:
    """Everything accepting a message needs; one per app."""

    def __init__(
        self,
        *,
        renderer: Renderer,
        outbox: Outbox,
        subscribers: Sequence[str],
        idempotency_ttl: float,
        dispatcher: Dispatcher | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.renderer = renderer
        self.outbox = outbox
        self.subscribers = list(subscribers)
        self.idempotency_ttl = idempotency_ttl
        #: This process's dispatcher, if it delivers (None: API only).
        self.dispatcher = dispatcher
        self.metrics = metrics or Metrics()

    async def accept(
        self,
        name: str,
        context: Mapping[str, Any],
        *,
        context_bytes: int = 0,
        attachments: Sequence[Attachment] = (),
        idempotency_key: str | None = None,
        caller: str | None = None,
        request_id: str | None = None,
    ) -> Accepted:
        """Render template ``name`` with ``context`` and store the message durably, with
        ``attachments`` added (a multipart/mixed message) when there are any.

        ``idempotency_key`` (the client's, scoped to ``caller``): the same key with the
        same template, context and attachments returns the first :class:`Accepted` again
        (``replayed``) and stores nothing; with another request it is :class:`IdempotencyMismatch`
        (422); while the first is in flight, :class:`IdempotencyConflict` (409). Raises
        the render errors (404/422) and :class:`OutboxUnavailable` (503: nothing stored).
        """
        fingerprint = request_fingerprint(context, attachments)
        key = self._idempotency_key(idempotency_key, caller, name, fingerprint)
        if key is not None:
            reservation = await self.outbox.reserve(key, ttl=self.idempotency_ttl)
            if reservation.state == "done":
                assert reservation.id is not None
                assert reservation.message_id is not None
                return Accepted(reservation.id, reservation.message_id, replayed=True)
            if reservation.state == "in_flight":
                raise IdempotencyConflict(idempotency_key or "")
            if reservation.state == "mismatch":
                raise IdempotencyMismatch(
                    "this Idempotency-Key was used with a different request; use a new key",
                    idempotency_key=idempotency_key,
                )
        dispatcher = self.dispatcher
        direct = False
        try:
            started = time.perf_counter()
            composed = await self.renderer.render_async(
                name, context, context_bytes=context_bytes, attachments=attachments
            )
            self.metrics.render_seconds.observe(time.perf_counter() - started)
            message = NewMessage(
                template=name,
                context_hash=fingerprint,
                message_id=composed.message_id,
                sender=composed.sender,
                recipients=composed.recipients,
                data=composed.data,
                request_id=request_id,
                template_version=composed.template_version,
            )
            lease = None
            if dispatcher is not None and self.subscribers and dispatcher.reserve():
                direct = True
                lease = Lease(dispatcher.owner, dispatcher.lease_seconds)
            record = await self.outbox.add(
                message, subscribers=self.subscribers, idempotency_key=key, lease=lease
            )
        except BaseException:
            # Also on cancellation (the client went away): the reservation must not leak.
            # If the store commits after all, the message is leased to this dispatcher
            # and is delivered once that lease runs out: late, never lost.
            if direct:
                assert dispatcher is not None
                dispatcher.unreserve()
            if key is not None:
                # Nothing was stored: free the key so a corrected request can use it. If
                # the outbox is down, the reservation is given up as abandoned later.
                with contextlib.suppress(OutboxUnavailable):
                    await self.outbox.forget(key)
            raise
        if dispatcher is not None:
            if direct:
                dispatcher.deliver_now(_claim_of(record, message))
            else:
                dispatcher.wake()
        self.metrics.accepted.inc()
        return Accepted(record.id, record.message_id)

    async def retry(self, message_id: str) -> MessageRecord:
        """Queue a message's failed deliveries again (an operator's retry).

        Raises :class:`UnknownMessage` (404) or :class:`NothingToRetry` (409).
        """
        # One transaction checks and requeues: two operators retrying at once cannot both
        # pass a check made before the other's change.
        retried = await self.outbox.retry(message_id)
        if retried is None:
            raise UnknownMessage(f"no message with id {message_id[:100]!r}", id=message_id[:100])
        record, requeued = retried
        if not requeued:
            raise NothingToRetry(
                f"message {message_id} has no failed delivery (status {record.status})",
                status_now=record.status,
            )
        if self.dispatcher is not None:
            self.dispatcher.wake()
        return record

    @staticmethod
    def _idempotency_key(
        raw: str | None, caller: str | None, name: str, fingerprint: str
    ) -> IdempotencyKey | None:
        if raw is None:
            return None
        if _IDEMPOTENCY_KEY.fullmatch(raw) is None:
            raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 visible ASCII characters")
        # The template is part of the request: the same body sent to another template
        # with the same key is a different request.
        request_hash = hashlib.sha256(f"{name}\n{fingerprint}".encode()).hexdigest()
        # Keys belong to the caller: two services that both use "order-1001" do not collide.
        return IdempotencyKey(key=f"{caller or ''}/{raw}", request_hash=request_hash)


def _claim_of(record: MessageRecord, message: NewMessage) -> Claim:
    """The claim a freshly stored, already leased message amounts to."""
    outbound = OutboundMessage(
        id=record.id,
        template=record.template,
        message_id=record.message_id,
        sender=record.sender,
        recipients=list(record.recipients),
        data=message.data,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        request_id=record.request_id,
        template_version=record.template_version,
    )
    return Claim(
        message=outbound,
        subscribers={
            d.subscriber: DeliveryState(attempts=0, detail=None) for d in record.deliveries
        },
    )
