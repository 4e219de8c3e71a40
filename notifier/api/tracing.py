"""Per request: an id (``X-Request-ID``), one log line, and the request metrics.

A caller's ``X-Request-ID`` (1 to 128 letters, digits, ``.``, ``_`` or ``-``) is kept,
else one is made; it comes back in the response header, goes into the request's log line
and is stored with any message the request accepted.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import logging
import os
import re
import time

from quart import Quart, Response, g, request

from notifier.logs import fields
from notifier.metrics import Metrics

__all__ = ["REQUEST_ID_HEADER", "init_tracing", "request_id"]

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

logger = logging.getLogger("notifier.http")


def request_id() -> str | None:
    """The current request's id (inside a request), else None."""
    return getattr(g, "request_id", None)


def init_tracing(app: Quart, metrics: Metrics) -> None:
    # Registered first, so the id exists before authentication can refuse the request.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)

    @app.after_request
    async def _finish(response: Response) -> Response:
        started = getattr(g, "started", None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.http_requests.labels(rule, request.method, str(response.status_code)).inc()
        metrics.http_seconds.labels(rule).observe(elapsed)
        rid = request_id()
        if rid is not None:
            response.headers[REQUEST_ID_HEADER] = rid
        if not logger.isEnabledFor(logging.INFO):
            return response  # spare building the line on every request
        # Path and route only: no query string, headers or body can leak into logs.
        logger.info(
            "request",
            extra=fields(
                request_id=rid,
                method=request.method,
                path=request.path[:200],
                route=rule,
                status=response.status_code,
                duration_ms=round(elapsed * 1000, 2),
                token=getattr(g, "token_name", None),
            ),
        )
        return response


async def _start() -> None:
    g.started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _VALID_REQUEST_ID.fullmatch(given) else os.urandom(12).hex()
