"""``POST /v1/render/<name>``: render and compose without sending (a dry run).

The models here (and next to the other views) give the shapes of requests and answers
to the OpenAPI document (:mod:`notifier.api.openapi`); they validate nothing.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import ConfigDict, Field, RootModel
from quart import Blueprint, Response, current_app, request
from quart_schema import document_request, document_response, tag_blueprint

from notifier.api.multipart import read_form
from notifier.api.openapi import (
    Shape,
    document_media,
    document_problems,
    document_request_media,
)
from notifier.compose import Attachment, ComposedMessage, message_view
from notifier.errors import BadRequestBody, UnsupportedMediaType
from notifier.metrics import Metrics
from notifier.renderer import Renderer
from notifier.settings import Settings
from notifier.templates import NAME_PATTERN

__all__ = [
    "FORM_ENCODING",
    "Context",
    "Envelope",
    "MessageForm",
    "MessageRequest",
    "TemplateName",
    "json_object",
    "message_view_async",
    "read_json_object",
    "read_message_request",
    "render",
    "render_timed",
]

render = Blueprint("render", __name__, url_prefix="/v1")
tag_blueprint(render, ["messages"])

TemplateName = Annotated[
    str,
    Field(
        pattern=f"^{NAME_PATTERN.pattern}$",
        description="A template name (`templates/<name>.j2`).",
        examples=["burger_receipt"],
    ),
]


class Context(RootModel[dict[str, Any]]):
    """The template context (`application/json` or any `+json` type): any JSON object.
    A variable the template uses but the object lacks is a 422 naming it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to": "bob@example.com",
                    "from": "shopping@example-shop.com",
                    "subject": "Your Burger order",
                    "name": "Bob",
                    "items": [
                        {"name": "Cheeseburger", "price": 4.5},
                        {"name": "Fries", "price": 2.0},
                        {"name": "Root Beer", "price": 3.0},
                    ],
                }
            ]
        }
    )


class MessageForm(Shape):
    """The context and files to attach (`multipart/form-data`): one part `context`, the
    JSON object, and one part `attachment` per file, whose file name and `Content-Type`
    (`application/octet-stream` when absent) the attachment keeps. A form without
    attachments is the same request as its context sent as JSON."""

    context: dict[str, Any] = Field(
        description="The template context, a JSON object (part type `application/json`, "
        "`text/plain` or none)."
    )
    attachment: list[bytes] = Field(
        default_factory=list,
        description="The files, in order. Each part needs a file name (no path, no control"
        " characters, at most 255 characters).",
    )


#: How the parts of a :class:`MessageForm` are sent.
FORM_ENCODING = {"context": {"contentType": "application/json"}}


class Envelope(Shape):
    """The SMTP envelope: sender and every recipient (To, Cc and Bcc)."""

    sender: str = Field(alias="from")
    to: list[str]


class RawMessage(RootModel[str]):
    """The exact RFC 5322 bytes that would be sent (ASCII, CRLF line ends)."""


class RenderedMessage(Shape):
    """The composed message; as JSON (`Accept: application/json`), read back from its
    bytes."""

    headers: dict[str, str]
    text: str
    html: str | None
    raw: str = Field(description="The exact RFC 5322 bytes (ASCII, CRLF).")
    envelope: Envelope


async def read_json_object() -> tuple[dict[str, Any], int]:
    """The request body as a JSON object, and its size in bytes: 415 unless JSON, 400
    unless an object.

    Quart enforces ``MAX_CONTENT_LENGTH`` while the body streams in (413), also for
    chunked bodies that announce no length.
    """
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            "send the context as application/json (or multipart/form-data with"
            f" attachments), not {mimetype or 'no Content-Type'}"
        )
    raw = await request.get_data(as_text=False)
    return json_object(raw, what="the body"), len(raw)


def json_object(raw: bytes | str, *, what: str) -> dict[str, Any]:
    """``raw`` parsed as a JSON object; :class:`BadRequestBody` (400) unless it is one
    (``what`` names it in the error: "the body", "the context part")."""
    if isinstance(raw, bytes):
        # JSON exchanged between systems is UTF-8 (RFC 8259 8.1). json.loads would also
        # take UTF-16 and UTF-32 bytes, where the surrogate check below cannot look.
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadRequestBody(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        context = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadRequestBody(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise BadRequestBody(f"{what} must be a JSON object, not a JSON {type(context).__name__}")
    if _ESCAPED_SURROGATE.search(raw) is not None:
        _refuse_lone_surrogates(context)
    return context


class MessageRequest(NamedTuple):
    """What a send or render request asks for: the context, the size of its JSON, and
    the files to attach (from a ``multipart/form-data`` request; none from JSON). A named
    tuple: every JSON request makes one, and it is the cheapest record to make."""

    context: dict[str, Any]
    context_bytes: int
    attachments: Sequence[Attachment] = ()


async def read_message_request() -> MessageRequest:
    """The current request's context and attachments: a JSON body
    (:func:`read_json_object`) or a ``multipart/form-data`` body with a ``context`` part
    and ``attachment`` parts (:mod:`notifier.api.multipart`)."""
    if request.mimetype != "multipart/form-data":
        context, size = await read_json_object()
        return MessageRequest(context, size)
    settings: Settings = current_app.extensions["notifier.settings"]
    form = await read_form(settings.limits)
    context = json_object(form.context, what="the context part")
    return MessageRequest(context, len(form.context), form.attachments)


# A \uD800-\uDFFF escape: JSON text may spell a lone surrogate this way (UTF-8 cannot).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_lone_surrogates(context: dict[str, Any]) -> None:
    """Refuse strings holding an unpaired surrogate (``"\\ud800"``): not Unicode text,
    they cannot be encoded as UTF-8 for the message or for storage (RFC 8259 8.2)."""
    pending: list[Any] = [context]
    while pending:  # a loop, not recursion: nesting depth is the client's choice
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and _SURROGATE.search(value) is not None:
            raise BadRequestBody(
                "the body holds a lone surrogate escape (\\ud800 to \\udfff without its"
                " pair), which is not Unicode text"
            )


async def render_timed(renderer: Renderer, name: str, asked: MessageRequest) -> ComposedMessage:
    """``renderer.render_async``, timed into the ``notifier_render_seconds`` histogram."""
    metrics: Metrics = current_app.extensions["notifier.metrics"]
    started = time.perf_counter()
    composed = await renderer.render_async(
        name, asked.context, context_bytes=asked.context_bytes, attachments=asked.attachments
    )
    metrics.render_seconds.observe(time.perf_counter() - started)
    return composed


def _wants_json() -> bool:
    # Parsing Accept costs more than a substring test; most callers send none (or */*).
    accept = request.headers.get("Accept", "")
    return "json" in accept and (
        request.accept_mimetypes.best_match(("message/rfc822", "application/json"))
        == "application/json"
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@render.post("/render/<name>")
@document_request(Context)
@document_request_media(MessageForm, "multipart/form-data", encoding=FORM_ENCODING)
@document_response(RenderedMessage)
@document_media(RawMessage, "message/rfc822")
@document_problems(404, 422, 503)
async def render_message(name: TemplateName) -> Response:
    """Render and compose a message without sending it (a dry run).

    200 with the exact bytes that would be sent. With `Accept: application/json`, a JSON
    view read back from those bytes.
    """
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    asked = await read_message_request()
    composed = await render_timed(renderer, name, asked)
    if _wants_json():
        view = await message_view_async(composed)
        text = await _off_the_loop_when_large(len(composed.data), _json_text, view)
        return Response(text, content_type="application/json; charset=utf-8")
    return Response(composed.data, content_type="message/rfc822")


#: Messages larger than this are read back (and their JSON view written) in a thread: the
#: email package's parser takes about half a second over a 14 MiB message (10 MiB of
#: attachments), far too long for the event loop.
LOOP_VIEW_BYTES = 64 * 1024
_In = TypeVar("_In")
_Out = TypeVar("_Out")


async def message_view_async(composed: ComposedMessage) -> dict[str, Any]:
    """:func:`notifier.compose.message_view` of ``composed`` with its envelope, keeping
    the event loop free for large messages."""
    view = await _off_the_loop_when_large(len(composed.data), message_view, composed.data)
    view["envelope"] = {"from": composed.sender, "to": composed.recipients}
    return view


def _json_text(view: dict[str, Any]) -> str:
    return json.dumps(view, ensure_ascii=False)


async def _off_the_loop_when_large(size: int, function: Callable[[_In], _Out], value: _In) -> _Out:
    if size <= LOOP_VIEW_BYTES:
        return function(value)
    return await asyncio.to_thread(function, value)
