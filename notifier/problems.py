"""RFC 9457 problem details: the one shape of every 4xx/5xx answer notifier gives, and
the one place that maps errors to it, for the API and the capture server alike.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from notifier.errors import NotifierError

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_BASE",
    "problem_body",
    "problem_response",
    "register_error_handlers",
]

PROBLEM_CONTENT_TYPE = "application/problem+json"
#: Problem ``type`` URIs are ``urn:notifier:problem:<slug>``: stable identifiers to switch
#: on (listed in docs/api.md), not pages to fetch.
PROBLEM_TYPE_BASE = "urn:notifier:problem:"

logger = logging.getLogger("notifier.http")

#: Clearer words than Werkzeug's for the statuses it raises itself.
_HTTP_DETAILS = {
    404: "no resource at this path",
    405: "this method is not allowed here",
    413: "the request body is larger than the configured limit",
}


def problem_body(
    status: int,
    *,
    detail: str,
    title: str | None = None,
    type_: str = "about:blank",
    **extra: Any,
) -> dict[str, Any]:
    """Build the JSON object of a problem; ``title`` defaults to the HTTP reason phrase."""
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    body.update(extra)
    return body


def problem_response(
    status: int,
    *,
    detail: str,
    title: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """A Quart response carrying an ``application/problem+json`` body."""
    body = problem_body(status, detail=detail, title=title, type_=type_, **extra)
    response = Response(
        json.dumps(body, ensure_ascii=False),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Quart, *, too_large: str = "") -> None:
    """Answer every error ``app`` raises with a problem: notifier's errors with their own
    status, type and members, Werkzeug's HTTP errors with theirs (``Allow`` on a 405
    included), anything else with a 500 whose details go to the log only.
    ``too_large`` names the limit a 413 is about."""

    async def notifier_error(error: NotifierError) -> Response:
        return problem_response(
            error.status,
            detail=error.detail,
            title=error.title,
            type_=PROBLEM_TYPE_BASE + error.slug,
            headers=error.headers,
            **error.extra,
        )

    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        headers = {
            name: value for name, value in error.get_headers() if name.lower() != "content-type"
        }
        detail = _HTTP_DETAILS.get(status) or error.description or error.name
        if status == 413 and too_large:
            detail = f"{detail} ({too_large})"
        return problem_response(status, detail=detail, headers=headers)

    async def unexpected_error(error: Exception) -> Response:
        # The traceback goes to the log for operators, never into the response body.
        logger.exception("unhandled error while serving a request", exc_info=error)
        return problem_response(500, detail="an unexpected error occurred; it has been logged")

    app.register_error_handler(NotifierError, notifier_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
