"""Sending and message status: ``POST /v1/send/<name>``, ``GET /v1/messages/<id>``."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from quart import Blueprint, Response, current_app

from notifier.api.render import read_json_object
from notifier.dispatch import Dispatcher
from notifier.errors import UnknownMessage
from notifier.outbox import NewMessage, Outbox
from notifier.renderer import Renderer

__all__ = ["context_hash", "messages"]

messages = Blueprint("messages", __name__, url_prefix="/v1")


def context_hash(context: dict[str, Any]) -> str:
    """A stable fingerprint of a request's context (key order does not matter)."""
    canonical = json.dumps(context, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@messages.post("/send/<name>")
async def send_message(name: str) -> Response:
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    dispatcher: Dispatcher = current_app.extensions["notifier.dispatcher"]
    subscribers: list[str] = current_app.extensions["notifier.settings"].subscribers
    context = await read_json_object()
    composed = renderer.render(name, context)
    # The 202 is sent only once the message is committed to disk: from then on it is
    # delivered even if this process dies (OutboxUnavailable -> 503, nothing sent).
    record = await outbox.add(
        NewMessage(
            template=name,
            context_hash=context_hash(context),
            message_id=composed.message_id,
            sender=composed.sender,
            recipients=composed.recipients,
            data=composed.data,
        ),
        subscribers=subscribers,
    )
    dispatcher.wake()
    body = {"id": record.id, "message_id": record.message_id, "status": record.status}
    response = Response(json.dumps(body), status=202, content_type="application/json")
    response.headers["Location"] = f"/v1/messages/{record.id}"
    return response


@messages.get("/messages/<message_id>")
async def get_message(message_id: str) -> dict[str, Any]:
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    record = await outbox.get(message_id)
    if record is None:
        raise UnknownMessage(f"no message with id {message_id[:100]!r}", id=message_id[:100])
    return record.as_json()
