"""The capture server's HTTP side: a JSON API and an inbox page, as one Quart app.

JSON API (every error is ``application/problem+json``):

- ``GET /api/messages[?limit=N&offset=N]``: ``{"messages": [summary...], "total": N}``,
  newest first;
- ``GET /api/messages/<id>``: a summary plus ``headers`` (``[name, value]`` pairs in
  order), ``text``, ``html``;
- ``GET /api/messages/<id>/raw``: the exact bytes received, as ``message/rfc822``;
- ``DELETE /api/messages/<id>``, ``DELETE /api/messages``: 204;
- ``GET /api/wait?count=N&timeout=S``: long poll; 200 with the messages as soon as at
  least N are captured, 408 problem when the timeout (at most 60 s) passes first;
- ``GET|POST|DELETE /api/faults``, ``DELETE /api/faults/<id>``: fault rules (see
  :mod:`notifier.capture.faults`); ``POST`` takes ``application/json`` only (415 else).

Pages: ``/`` (the list), ``/messages/<id>`` (one message) and
``/messages/<id>/html`` (its HTML body, served with a CSP sandbox for the iframe).

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from typing import Any

from quart import Quart, Response, request

from notifier.capture.errors import InvalidFault
from notifier.capture.faults import FaultRules
from notifier.capture.pages import render_inbox, render_message
from notifier.capture.store import CapturedMessage, MessageStore
from notifier.errors import NotifierError, UnsupportedMediaType
from notifier.problems import register_error_handlers

__all__ = ["create_capture_app", "message_detail", "message_summary"]

MAX_WAIT_SECONDS = 60.0

#: The HTML body may style itself and show inline images, nothing else: no scripts, no
#: forms, no fetching from the network, and a unique origin.
HTML_BODY_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _text(value: object) -> str:
    # Raw 8-bit headers come back from the parser as surrogate escapes; undo them so the
    # JSON holds real text (or U+FFFD), never lone surrogates that cannot be encoded.
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _addresses(message: CapturedMessage, header: str) -> list[str]:
    value = message.message.get(header)
    if value is None:
        return []
    addresses = getattr(value, "addresses", None)
    if addresses is None:  # unparseable header: keep what was written
        return [_text(value)]
    return [_text(address) for address in addresses]


def message_summary(message: CapturedMessage) -> dict[str, Any]:
    """The fields ``GET /api/messages`` lists for each message."""
    return {
        "id": message.id,
        "envelope": {"from": message.envelope_from, "to": list(message.envelope_to)},
        "from": _optional_text(message["From"]),
        "to": _addresses(message, "To"),
        "subject": _optional_text(message.subject),
        "date": _optional_text(message["Date"]),
        "received_at": message.received_at.isoformat(),
        "size": len(message.data),
    }


def message_detail(message: CapturedMessage) -> dict[str, Any]:
    """The summary plus headers and bodies, for ``GET /api/messages/<id>``."""
    detail = message_summary(message)
    detail["headers"] = [[_text(name), _text(value)] for name, value in message.message.items()]
    detail["text"] = _optional_text(message.text)
    detail["html"] = _optional_text(message.html)
    return detail


class _BadQuery(NotifierError, ValueError):
    """A query parameter has a value the endpoint cannot use."""

    status = 400
    slug = "invalid-query"
    title = "Invalid query parameter"


def _int_argument(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise _BadQuery(f"{name} must be a whole number >= 0, not {raw!r}", parameter=name)
    return value


def create_capture_app(store: MessageStore, faults: FaultRules) -> Quart:
    """Build the capture server's Quart app around a store and its fault rules."""
    app = Quart(__name__, static_folder=None)
    # No routing redirects: Werkzeug builds their Location from the Host header (see
    # notifier.app); an odd path is a 404 problem instead.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.redirect_defaults = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024

    register_error_handlers(app, too_large="64 KiB for the JSON API")

    # -- JSON API -----------------------------------------------------------------

    @app.get("/api/messages")
    async def list_messages() -> dict[str, Any]:
        offset = _int_argument("offset", 0) or 0
        limit = _int_argument("limit", None)
        newest_first = store.messages()[::-1]
        window = newest_first[offset:] if limit is None else newest_first[offset : offset + limit]
        return {
            "messages": [message_summary(message) for message in window],
            "total": len(newest_first),
        }

    # The DELETE endpoints take no body, so there is no content type to check: a form can
    # only GET or POST, and a script on another site may send DELETE only after a CORS
    # preflight, which this server never approves (it sends no Access-Control-* headers).
    @app.delete("/api/messages")
    async def delete_messages() -> Response:
        store.clear()
        return Response(status=204)

    @app.get("/api/messages/<message_id>")
    async def get_message(message_id: str) -> dict[str, Any]:
        return message_detail(store.get(message_id))

    @app.get("/api/messages/<message_id>/raw")
    async def get_raw_message(message_id: str) -> Response:
        message = store.get(message_id)
        return Response(message.data, content_type="message/rfc822")

    @app.delete("/api/messages/<message_id>")
    async def delete_message(message_id: str) -> Response:
        store.delete(message_id)
        return Response(status=204)

    @app.get("/api/wait")
    async def wait_for_messages() -> dict[str, Any]:
        count = _int_argument("count", 1) or 0
        raw_timeout = request.args.get("timeout", "10")
        try:
            timeout = float(raw_timeout)
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise _BadQuery(
                f"timeout must be between 0 and {MAX_WAIT_SECONDS:g} seconds",
                parameter="timeout",
            )
        messages = await store.wait_for_async(count, timeout)
        return {
            "messages": [message_summary(message) for message in reversed(messages)],
            "total": len(messages),
        }

    @app.get("/api/faults")
    async def list_faults() -> dict[str, Any]:
        return {"faults": [rule.as_json() for rule in faults]}

    @app.post("/api/faults")
    async def add_fault() -> tuple[dict[str, Any], int]:
        # An HTML form on any web page can POST here from the developer's browser as
        # text/plain, urlencoded or multipart without asking first; a JSON body makes the
        # browser ask (a CORS preflight), and this server never says yes to another origin.
        if request.mimetype != "application/json":
            # Read (and drop) the body first: a refusal sent while the body is still
            # unread makes the server close the connection, and a client that sends its
            # next request on it meanwhile sees it reset instead of answered.
            await request.get_data()
            raise UnsupportedMediaType(
                "send the fault rule as JSON with Content-Type: application/json"
            )
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            raise InvalidFault('send a JSON object: {"pattern", "action", "times"}')
        pattern, action, times = body.get("pattern"), body.get("action"), body.get("times")
        if not isinstance(pattern, str) or not isinstance(action, str):
            raise InvalidFault("pattern and action must be strings")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise InvalidFault("times must be a whole number or null")
        rule = faults.add(pattern, action, times=times)
        return rule.as_json(), 201

    @app.delete("/api/faults")
    async def clear_faults() -> Response:
        faults.clear()
        return Response(status=204)

    @app.delete("/api/faults/<int:rule_id>")
    async def delete_fault(rule_id: int) -> Response:
        faults.remove(rule_id)
        return Response(status=204)

    # -- pages --------------------------------------------------------------------

    @app.get("/")
    async def inbox() -> Response:
        summaries = [message_summary(message) for message in reversed(store.messages())]
        return Response(render_inbox(summaries), content_type="text/html; charset=utf-8")

    @app.get("/messages/<message_id>")
    async def message_page(message_id: str) -> Response:
        message = store.get(message_id)
        page = render_message(
            message_detail(message),
            raw=message.data.decode("utf-8", "replace"),
        )
        return Response(page, content_type="text/html; charset=utf-8")

    @app.get("/messages/<message_id>/html")
    async def message_html_body(message_id: str) -> Response:
        html = store.get(message_id).html or ""
        response = Response(html, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = HTML_BODY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.after_request
    async def protect_pages(response: Response) -> Response:
        # Captured mail is untrusted input: the pages themselves never run scripts.
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; img-src data:",
        )
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    return app
