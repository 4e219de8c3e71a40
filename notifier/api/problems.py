"""Map every error to an RFC 9457 problem response, in one place."""

from __future__ import annotations

import logging

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from notifier.errors import NotifierError
from notifier.problems import problem_response

__all__ = ["PROBLEM_TYPE_BASE", "register_error_handlers"]

#: Problem ``type`` URIs are ``urn:notifier:problem:<slug>`` (see docs/errors.md).
PROBLEM_TYPE_BASE = "urn:notifier:problem:"

logger = logging.getLogger("notifier.api")

_HTTP_DETAILS = {
    404: "no resource at this path",
    405: "this method is not allowed here",
    413: "the request body is larger than the configured limit (limits.max_body_bytes)",
}


def register_error_handlers(app: Quart) -> None:
    app.register_error_handler(NotifierError, _notifier_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


async def _notifier_error(error: NotifierError) -> Response:
    return problem_response(
        error.status,
        detail=error.detail,
        title=error.title,
        type_=PROBLEM_TYPE_BASE + error.slug,
        headers=error.headers,
        **error.extra,
    )


async def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    return problem_response(
        status,
        detail=_HTTP_DETAILS.get(status) or error.description or "",
        headers=headers,
    )


async def _unexpected_error(error: Exception) -> Response:
    # The traceback goes to the log for operators, never into the response body.
    logger.exception("unhandled error while serving a request", exc_info=error)
    return problem_response(500, detail="an unexpected error occurred; it has been logged")
