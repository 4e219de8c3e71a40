"""Sending and message status.

``POST /v1/send/<name>`` (optional ``Idempotency-Key``), ``GET /v1/messages/<id>``,
``GET /v1/messages?status=failed`` (paged) and ``POST /v1/messages/<id>/retry``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from quart import Blueprint, Response, current_app, g, request

from notifier.api.render import read_json_object, render_timed
from notifier.api.tracing import request_id
from notifier.dispatch import Dispatcher
from notifier.errors import (
    IdempotencyConflict,
    IdempotencyMismatch,
    InvalidIdempotencyKey,
    InvalidQuery,
    NothingToRetry,
    OutboxUnavailable,
    UnknownMessage,
)
from notifier.metrics import Metrics
from notifier.outbox import (
    DELIVERY_STATUSES,
    Claim,
    DeliveryState,
    IdempotencyKey,
    MessageRecord,
    NewMessage,
    Outbox,
)
from notifier.renderer import Renderer
from notifier.settings import Settings
from notifier.signals import OutboundMessage

__all__ = ["context_hash", "messages"]

messages = Blueprint("messages", __name__, url_prefix="/v1")

#: Idempotency-Key: 1 to 255 visible ASCII characters (spaces allowed inside).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")
DEFAULT_PAGE = 50
MAX_PAGE = 500


def context_hash(context: dict[str, Any]) -> str:
    """A stable fingerprint of a request's context (key order does not matter)."""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _accepted_body(record: MessageRecord) -> dict[str, Any]:
    return {"id": record.id, "message_id": record.message_id, "status": "queued"}


def _accepted(body: dict[str, Any], *, replayed: bool = False) -> Response:
    response = Response(json.dumps(body), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{body['id']}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@messages.post("/send/<name>")
async def send_message(name: str) -> Response:
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    dispatcher: Dispatcher = current_app.extensions["notifier.dispatcher"]
    settings: Settings = current_app.extensions["notifier.settings"]
    context, size = await read_json_object()
    fingerprint = context_hash(context)
    key = _idempotency_key(name, fingerprint)
    if key is not None:
        reservation = await outbox.reserve(key, ttl=settings.idempotency.ttl)
        if reservation.state == "done":
            assert reservation.response is not None
            return _accepted(reservation.response, replayed=True)
        if reservation.state == "in_flight":
            raise IdempotencyConflict(request.headers["Idempotency-Key"])
        if reservation.state == "mismatch":
            raise IdempotencyMismatch(
                "this Idempotency-Key was used with a different request; use a new key",
                idempotency_key=request.headers["Idempotency-Key"],
            )
    direct = False
    try:
        composed = await render_timed(renderer, name, context, context_bytes=size)
        message = NewMessage(
            template=name,
            context_hash=fingerprint,
            message_id=composed.message_id,
            sender=composed.sender,
            recipients=composed.recipients,
            data=composed.data,
            request_id=request_id(),
        )
        direct = bool(settings.subscribers) and dispatcher.reserve()
        # The 202 is sent only once the message is committed to disk: from then on it
        # is delivered even if this process dies (OutboxUnavailable -> 503, nothing sent).
        record = await outbox.add(
            message,
            subscribers=settings.subscribers,
            idempotency_key=key,
            respond=_accepted_body,
            lease=(dispatcher.owner, dispatcher.lease_seconds) if direct else None,
        )
    except BaseException:
        # Also on cancellation (the client went away): the reservation must not leak.
        # If the store commits after all, the message is leased to this dispatcher and
        # is delivered once that lease runs out: late, never lost.
        if direct:
            dispatcher.unreserve()
        if key is not None:
            # Nothing was stored: free the key so a corrected request can use it. If the
            # outbox is down, the reservation is given up as abandoned after a minute.
            with contextlib.suppress(OutboxUnavailable):
                await outbox.forget(key)
        raise
    if direct:
        dispatcher.deliver_now(_claim_of(record, message))
    else:
        dispatcher.wake()
    metrics: Metrics = current_app.extensions["notifier.metrics"]
    metrics.accepted.inc()
    return _accepted(_accepted_body(record))


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
    )
    return Claim(
        message=outbound,
        subscribers={
            d.subscriber: DeliveryState(attempts=0, detail=None) for d in record.deliveries
        },
    )


def _idempotency_key(name: str, fingerprint: str) -> IdempotencyKey | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(raw) is None:
        raise InvalidIdempotencyKey("Idempotency-Key must be 1 to 255 visible ASCII characters")
    # The template is part of the request: the same body sent to another template with
    # the same key is a different request.
    request_hash = hashlib.sha256(f"{name}\n{fingerprint}".encode()).hexdigest()
    # Keys belong to the caller: two services that both use "order-1001" do not collide.
    caller = getattr(g, "token_name", None) or ""
    return IdempotencyKey(key=f"{caller}/{raw}", request_hash=request_hash)


@messages.get("/messages/<message_id>")
async def get_message(message_id: str) -> dict[str, Any]:
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    record = await outbox.get(message_id)
    if record is None:
        raise UnknownMessage(f"no message with id {message_id[:100]!r}", id=message_id[:100])
    return record.as_json()


@messages.get("/messages")
async def list_messages() -> dict[str, Any]:
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    status = request.args.get("status")
    if status not in DELIVERY_STATUSES:
        raise InvalidQuery(
            f"status must be one of {', '.join(DELIVERY_STATUSES)}", parameter="status"
        )
    try:
        limit = int(request.args.get("limit", DEFAULT_PAGE))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidQuery(f"limit must be a whole number from 1 to {MAX_PAGE}", parameter="limit")
    before = request.args.get("before")
    records = await outbox.list_messages(status=status, limit=limit, before=before)
    next_page = records[-1].id if len(records) == limit else None
    return {
        "messages": [record.as_json() for record in records],
        "next": f"/v1/messages?status={status}&limit={limit}&before={next_page}"
        if next_page
        else None,
    }


@messages.post("/messages/<message_id>/retry")
async def retry_message(message_id: str) -> Response:
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    dispatcher: Dispatcher = current_app.extensions["notifier.dispatcher"]
    # One transaction checks and requeues: two operators retrying at once cannot both
    # pass a check made before the other's change.
    retried = await outbox.retry(message_id)
    if retried is None:
        raise UnknownMessage(f"no message with id {message_id[:100]!r}", id=message_id[:100])
    record, requeued = retried
    if not requeued:
        raise NothingToRetry(
            f"message {message_id} has no failed delivery (status {record.status})",
            status_now=record.status,
        )
    dispatcher.wake()
    response = Response(json.dumps(record.as_json()), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{record.id}"
    return response
