"""Health: ``/healthz`` (the process serves), ``/readyz`` (it can do its job) and
``/metrics`` (Prometheus). None of them needs a token.

Readiness follows the templates, the outbox and the delivery loop. The relay is checked
and reported (``relay``, ``checks.smtp``, ``notifier_relay_up``) but never makes the
service unready: while it is down, messages are still accepted, stored and delivered once
it is back, so taking instances out of rotation would only turn a delay into refusals.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Literal

from pydantic import RootModel
from pydantic.json_schema import SkipJsonSchema
from quart import Blueprint, Response, current_app
from quart_schema import document_response, tag_blueprint

from notifier.api.openapi import Problem, Shape, absent, document_media
from notifier.dispatch import Dispatcher
from notifier.errors import OutboxUnavailable
from notifier.metrics import Metrics
from notifier.outbox import Outbox
from notifier.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, problem_response
from notifier.renderer import Renderer
from notifier.settings import Settings
from notifier.subscribers.smtp import relay_address

__all__ = ["health"]

health = Blueprint("health", __name__)
tag_blueprint(health, ["operations"])

#: Seconds a readiness check may take for the relay.
RELAY_CHECK_TIMEOUT = 2.0

RELAY_DOWN_NOTE = (
    "the SMTP relay is not answering: messages are still accepted and stored, and are"
    " delivered when it is back"
)


class Health(Shape):
    """Alive."""

    status: Literal["ok"]


class Checks(RootModel[dict[str, str]]):
    """Each check (`templates`, `outbox`, `dispatcher`, and `smtp` when smtp is a
    subscriber): `ok`, or why it failed. Only `templates`, `outbox` and `dispatcher` decide
    readiness; `smtp` is reported, see `relay`."""


class RelayState(RootModel[Literal["up", "down"]]):
    """Whether the SMTP relay accepts a connection and greets with 220 (present when smtp
    is a subscriber). A relay that is down does not make the service unready: messages are
    accepted and delivered when it is back. Also exported as the metric
    `notifier_relay_up`."""


class _RelayReport(Shape):
    relay: RelayState | SkipJsonSchema[None] = absent()
    note: str | SkipJsonSchema[None] = absent(
        description="Present when the relay is down: what that means for senders."
    )


class Readiness(_RelayReport):
    """Ready; `relay` says whether the SMTP relay answers."""

    status: Literal["ready"]
    checks: Checks


class NotReady(Problem, _RelayReport):
    """Not ready: a problem whose `checks` says which check failed and why."""

    checks: Checks


class MetricsText(RootModel[str]):
    """Prometheus metrics in the text exposition format."""


@health.get("/healthz")
@document_response(Health)
async def healthz() -> dict[str, Any]:
    """Liveness: 200 while the process serves."""
    return {"status": "ok"}


@health.get("/readyz")
@document_response(Readiness)
@document_media(NotReady, PROBLEM_CONTENT_TYPE, 503)
async def readyz() -> Response:
    """Readiness: templates load, the outbox is writable, the delivery loop runs.

    The relay's state is reported, not required.
    """
    settings: Settings = current_app.extensions["notifier.settings"]
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    dispatcher: Dispatcher | None = current_app.extensions["notifier.dispatcher"]
    checks = {
        "templates": _check_templates(renderer),
        "outbox": await _check_outbox(outbox),
    }
    if dispatcher is not None:  # None: an API-only process (delivery.in_serve: false)
        checks["dispatcher"] = "ok" if dispatcher.running else "the delivery loop is not running"
    failing = [name for name, result in checks.items() if result != "ok"]
    relay: dict[str, Any] = {}  # the relay's state, when there is one to deliver to
    if "smtp" in settings.subscribers:
        checks["smtp"] = await _check_relay(settings)
        up = checks["smtp"] == "ok"
        registry: Metrics = current_app.extensions["notifier.metrics"]
        registry.relay_state(relay_address(settings.smtp), up)
        relay = {"relay": "up"} if up else {"relay": "down", "note": RELAY_DOWN_NOTE}
    if failing:
        # Like every 5xx, an RFC 9457 problem; ``checks`` says what failed and why.
        return problem_response(
            503,
            detail=f"not ready: {', '.join(failing)} failed",
            title="Not ready",
            type_=PROBLEM_TYPE_BASE + "not-ready",
            checks=checks,
            **relay,
        )
    body = {"status": "ready", "checks": checks, **relay}
    return Response(json.dumps(body), content_type="application/json")


@health.get("/metrics")
@document_media(MetricsText, "text/plain")
async def metrics() -> Response:
    """Prometheus metrics in the text exposition format."""
    registry: Metrics = current_app.extensions["notifier.metrics"]
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    try:
        backlog, oldest = await outbox.stats()
    except OutboxUnavailable:
        pass  # keep the last values; /readyz reports the outbox
    else:
        registry.backlog.set(backlog)
        registry.oldest_age.set(0 if oldest is None else max(0.0, time.time() - oldest))
    return Response(registry.exposition(), content_type="text/plain; version=0.0.4; charset=utf-8")


def _check_templates(renderer: Renderer) -> str:
    directory = renderer.templates.directory
    try:
        names = renderer.templates.names()
        os.listdir(directory)
    except OSError as exc:
        return f"cannot read {directory}: {exc.strerror}"
    # One broken template is reported by GET /v1/templates and answers 422; it does not
    # make the whole service unready (that would take every instance out at once).
    return "ok" if names else f"no templates in {directory}"


async def _check_outbox(outbox: Outbox) -> str:
    try:
        await outbox.check()
    except OutboxUnavailable as exc:
        return exc.detail
    return "ok"


async def _check_relay(settings: Settings) -> str:
    host, port, relay = settings.smtp.host, settings.smtp.port, relay_address(settings.smtp)
    try:
        async with asyncio.timeout(RELAY_CHECK_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                # With implicit TLS the greeting comes after a handshake; reaching the
                # port is the check then.
                greeting = b"220" if settings.smtp.tls == "tls" else await reader.readline()
            finally:
                writer.close()
                await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return f"relay {relay} unreachable: {exc.strerror or type(exc).__name__}"
    if not greeting.startswith(b"220"):
        return f"relay {relay} answered {greeting[:60]!r} instead of 220"
    return "ok"
