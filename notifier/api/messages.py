"""Sending and message status.

``POST /v1/send/<name>`` (optional ``Idempotency-Key``), ``GET /v1/messages/<id>``,
``GET /v1/messages?status=failed`` (paged) and ``POST /v1/messages/<id>/retry``.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response, current_app, g, request
from quart_schema import (
    document_headers,
    document_querystring,
    document_request,
    document_response,
    tag,
)

from notifier.api.openapi import Shape, absent, document_problems, document_request_media
from notifier.api.render import (
    FORM_ENCODING,
    Context,
    Envelope,
    MessageForm,
    TemplateName,
    read_message_request,
)
from notifier.api.tracing import request_id
from notifier.errors import InvalidQuery, UnknownMessage
from notifier.outbox import DELIVERY_STATUSES, DeliveryStatus, Outbox
from notifier.sending import IDEMPOTENCY_KEY_PATTERN, Sending
from notifier.sending import Accepted as Acceptance

__all__ = ["messages"]

messages = Blueprint("messages", __name__, url_prefix="/v1")

DEFAULT_PAGE = 50
MAX_PAGE = 500

MessageId = Annotated[str, Field(min_length=1, description="The `id` a send returned.")]


#: Constraints on the type, not on the field: pydantic leaves a field's ``pattern`` out
#: of the schema when its type is a union with ``SkipJsonSchema[None]``.
IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=f"^{IDEMPOTENCY_KEY_PATTERN}$"),
]


class SendHeaders(Shape):
    idempotency_key: IdempotencyKey | SkipJsonSchema[None] = absent(
        alias="Idempotency-Key",
        description="1 to 255 visible ASCII characters (spaces allowed inside).",
    )


class Accepted(Shape):
    """Accepted and durably stored."""

    #: Where a client (or schemathesis's stateful phase) goes next with the new id.
    links: ClassVar[dict[str, Any]] = {
        name: {"operationId": operation, "parameters": {"message_id": "$response.body#/id"}}
        for name, operation in (("GetMessage", "getMessage"), ("RetryMessage", "retryMessage"))
    }

    id: str
    message_id: str
    status: Literal["queued"]


class Located(Shape):
    location: str = Field(
        alias="Location", description="`/v1/messages/<id>`: where the message's status is."
    )


class AcceptedHeaders(Located):
    idempotent_replayed: Literal["true"] | SkipJsonSchema[None] = absent(
        alias="Idempotent-Replayed",
        description="Present when this is the stored first response to an earlier request "
        "with the same Idempotency-Key.",
    )


class Delivery(Shape):
    """One subscriber's delivery of a message."""

    status: DeliveryStatus
    attempts: int = Field(ge=0)
    last_error: str | None
    smtp_code: int | None
    next_attempt_at: datetime | None
    updated_at: datetime | None
    detail: dict[str, Any] | SkipJsonSchema[None] = absent(
        description="What earlier attempts left behind, e.g. refused recipients."
    )


class Message(Shape):
    """A message's status, overall and per subscriber."""

    id: str
    template: str
    message_id: str
    status: DeliveryStatus
    created_at: datetime
    envelope: Envelope
    request_id: str | None = Field(description="The `X-Request-ID` of the request that sent it.")
    template_version: str | None = Field(
        description="First 12 hex digits of the SHA-256 over the template files that rendered"
        " it (docs/templates.md); null for messages stored before versions were recorded."
    )
    subscribers: dict[str, Delivery] = Field(
        description="Keyed by each subscriber's name as written in settings."
    )


class MessageQuery(Shape):
    status: DeliveryStatus = Field(description="The messages' overall status.")
    limit: int = Field(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="Page size.")
    before: str | SkipJsonSchema[None] = absent(
        description="Start after this message id (from `next`)."
    )


class MessagePage(Shape):
    """One page of messages, newest first."""

    messages: list[Message]
    next: str | None = Field(description="URL of the next page, or null.")


def _accepted(accepted: Acceptance) -> Response:
    body = {"id": accepted.id, "message_id": accepted.message_id, "status": "queued"}
    response = Response(json.dumps(body), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{accepted.id}"
    if accepted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@messages.post("/send/<name>")
@tag(["messages"])
@document_request(Context)
@document_request_media(MessageForm, "multipart/form-data", encoding=FORM_ENCODING)
@document_headers(SendHeaders)
@document_response(Accepted, 202, AcceptedHeaders)
@document_problems(404, 409, 422, 503)
async def send_message(name: TemplateName) -> Response:
    """Render, compose and durably queue a message for every subscriber.

    202 only once the message is committed to the outbox. The same `Idempotency-Key` with
    the same template and body returns the first response.
    """
    sending: Sending = current_app.extensions["notifier.sending"]
    asked = await read_message_request()
    accepted = await sending.accept(
        name,
        asked.context,
        context_bytes=asked.context_bytes,
        attachments=asked.attachments,
        idempotency_key=request.headers.get("Idempotency-Key"),
        caller=getattr(g, "token_name", None),
        request_id=request_id(),
    )
    return _accepted(accepted)


@messages.get("/messages/<message_id>")
@tag(["messages"])
@document_response(Message)
@document_problems(404)
async def get_message(message_id: MessageId) -> dict[str, Any]:
    """A message's status, overall and per subscriber."""
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    record = await outbox.get(message_id)
    if record is None:
        raise UnknownMessage(f"no message with id {message_id[:100]!r}", id=message_id[:100])
    return record.as_json()


@messages.get("/messages")
@tag(["operators"])
@document_querystring(MessageQuery)
@document_response(MessagePage)
@document_problems(400)
async def list_messages() -> dict[str, Any]:
    """Messages with a given status, newest first, in pages."""
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
@tag(["operators"])
@document_response(Message, 202, Located)
@document_problems(404, 409)
async def retry_message(message_id: MessageId) -> Response:
    """Queue a message's failed deliveries again with a fresh attempt budget.

    Delivered subscribers are not called again. 409 when nothing failed.
    """
    sending: Sending = current_app.extensions["notifier.sending"]
    record = await sending.retry(message_id)
    response = Response(json.dumps(record.as_json()), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{record.id}"
    return response
