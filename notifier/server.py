"""``notifier serve`` under hypercorn: its configuration, the app each worker runs, and
problem+json answers for the requests hypercorn refuses before the app sees them.

hypercorn answers a request it cannot take (malformed HTTP/1.1 framing: 400; a header
block over ``h11_max_incomplete_size``: 431; a transfer coding other than chunked: 501)
itself, with an empty body. notifier promises an RFC 9457 problem for every 4xx and 5xx,
and hypercorn has no setting or hook for these answers, so
:func:`install_problem_error_responses` replaces the one method that writes them,
``hypercorn.protocol.h11.H11Protocol._send_error_response``. It runs in each serving
process when it builds the app (:func:`create_served_app`), never when ``notifier`` is
imported, and it refuses to start on a hypercorn whose method is not the one it replaces.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import inspect
import json
import logging
from http import HTTPStatus
from importlib.metadata import version

import h11
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol
from quart import Quart

from notifier.app import create_app
from notifier.logs import configure_logging
from notifier.problems import PROBLEM_CONTENT_TYPE, problem_body
from notifier.settings import load_settings

__all__ = ["build_config", "create_served_app", "install_problem_error_responses"]

#: What hypercorn's refusals mean for the caller, by the status h11 suggests.
_REFUSAL_DETAILS = {
    400: "the request is not valid HTTP/1.1 (request line, headers or body framing)",
    431: "the request's header block is larger than the server accepts",
    501: "the request uses a transfer coding other than chunked, the only one accepted",
}


def build_config(*, host: str, port: int, workers: int) -> Config:
    """hypercorn's configuration for ``notifier serve``."""
    config = Config()
    config.application_path = "notifier.server:create_served_app()"
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    # One worker runs in this process, so signals and exit codes are the service's own.
    config.workers = 0 if workers == 1 else workers
    config.accesslog = None  # notifier logs each request itself (notifier.http)
    # A Logger, not "-": hypercorn then adds no handler of its own, and its lines go
    # through notifier's format like every other.
    config.errorlog = logging.getLogger("hypercorn.error")
    # On SIGTERM hypercorn stops accepting, lets open requests finish for this long, then
    # the app's shutdown gives in-flight deliveries delivery.shutdown_grace seconds.
    config.graceful_timeout = 5.0
    return config


def create_served_app() -> Quart:
    """The app ``notifier serve`` runs (in each worker): settings from the environment,
    notifier's log format on stderr, and problem+json for hypercorn's own refusals."""
    # Here rather than in the command: with --workers N each worker is a fresh (spawned)
    # process that imports hypercorn anew and only runs this factory.
    install_problem_error_responses()
    settings = load_settings()
    configure_logging(settings.log)
    return create_app(settings)


def install_problem_error_responses() -> None:
    """Make hypercorn's HTTP/1.1 refusals RFC 9457 problems in this process.

    Raises :class:`RuntimeError` when the installed hypercorn does not have the method
    this replaces, with the same signature: a silent no-op would bring back empty
    answers unnoticed.
    """
    current = getattr(H11Protocol, "_send_error_response", None)
    if current is _send_problem_response:
        return
    expected = ["self", "status_code"]
    if (
        current is None
        or not inspect.iscoroutinefunction(current)
        or list(inspect.signature(current).parameters) != expected
        or not hasattr(H11Protocol, "_send_h11_event")
    ):
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} has no H11Protocol._send_error_response"
            "(self, status_code) to replace: notifier cannot answer malformed requests"
            " with problem+json; check notifier/server.py against this hypercorn"
        )
    H11Protocol._send_error_response = _send_problem_response  # type: ignore[method-assign]


async def _send_problem_response(self: H11Protocol, status_code: int) -> None:
    # hypercorn's own method, with a body: the same status, Connection: close and the
    # configured response headers (Date, Server, ...), plus the problem document.
    detail = _REFUSAL_DETAILS.get(status_code, HTTPStatus(status_code).phrase)
    body = json.dumps(problem_body(status_code, detail=detail)).encode()
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *self.config.response_headers("h11"),
    ]
    await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())
