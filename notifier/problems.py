"""RFC 9457 problem details: the one shape of every 4xx/5xx answer notifier gives."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from quart import Response

__all__ = ["PROBLEM_CONTENT_TYPE", "problem_body", "problem_response"]

PROBLEM_CONTENT_TYPE = "application/problem+json"


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
