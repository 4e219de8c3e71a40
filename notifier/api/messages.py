"""Sending and message status.

``POST /v1/send/<name>`` (optional ``Idempotency-Key``), ``GET /v1/messages/<id>``,
``GET /v1/messages?status=failed`` (paged) and ``POST /v1/messages/<id>/retry``.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
from typing import Any

from quart import Blueprint, Response, current_app, g, request

from notifier.api.render import read_json_object
from notifier.api.tracing import request_id
from notifier.errors import InvalidQuery, UnknownMessage
from notifier.outbox import DELIVERY_STATUSES, Outbox
from notifier.sending import Accepted, Sending

__all__ = ["messages"]

messages = Blueprint("messages", __name__, url_prefix="/v1")

DEFAULT_PAGE = 50
MAX_PAGE = 500


def _accepted(accepted: Accepted) -> Response:
    body = {"id": accepted.id, "message_id": accepted.message_id, "status": "queued"}
    response = Response(json.dumps(body), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{accepted.id}"
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@messages.post("/send/<name>")
async def send_message(name: str) -> Response:
    sending: Sending = current_app.extensions["notifier.sending"]
    context, size = await read_json_object()
    accepted = await sending.accept(
        name,
        context,
        context_bytes=size,
        idempotency_key=request.headers.get("Idempotency-Key"),
        caller=getattr(g, "token_name", None),
        request_id=request_id(),
    )
    return _accepted(accepted)


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
    sending: Sending = current_app.extensions["notifier.sending"]
    record = await sending.retry(message_id)
    response = Response(json.dumps(record.as_json()), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{record.id}"
    return response
