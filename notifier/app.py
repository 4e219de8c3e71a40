"""The application factory. Nothing is created at import time."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from quart import Quart

from notifier.api import register_blueprints
from notifier.api.auth import Authenticator
from notifier.api.multipart import request_class as multipart_request_class
from notifier.api.ratelimit import RateLimiter
from notifier.api.tracing import init_tracing
from notifier.console import init_console
from notifier.dispatch import Dispatcher
from notifier.errors import OutboxUnavailable
from notifier.metrics import Metrics
from notifier.outbox import Outbox, open_outbox
from notifier.problems import register_error_handlers
from notifier.renderer import Renderer
from notifier.sending import Sending
from notifier.settings import Settings, load_settings
from notifier.subscribers import Subscriber, load_subscribers
from notifier.subscribers.smtp import relay_address

__all__ = ["create_app"]

logger = logging.getLogger("notifier")


def create_app(
    settings: Settings | Mapping[str, Any] | None = None,
    *,
    outbox: Outbox | None = None,
    deliver: bool | None = None,
    clock: Callable[[], float] | None = None,
    rng: Callable[[], float] | None = None,
    subscribers: Sequence[Subscriber] | None = None,
) -> Quart:
    """Build a notifier app.

    ``settings`` may be a :class:`Settings`, a mapping validated like the YAML file, or
    None to load ``settings.yml`` / ``NOTIFIER_SETTINGS`` plus ``NOTIFIER_*`` overrides.
    Collaborators can be injected (tests drive retries and expiry with a fake clock this
    way, instead of waiting):

    - ``outbox`` replaces the one the settings describe (SQLite at ``outbox.path``, or
      PostgreSQL at ``outbox.url``);
    - ``clock`` (epoch seconds) is the time of the outbox, the dispatcher and the Date
      header; ``rng`` (uniform in [0, 1)) the chance of the retry jitter;
    - ``subscribers`` replaces the ones named in ``settings.subscribers``.

    ``deliver`` says whether this process runs a dispatcher (default:
    ``delivery.in_serve``; ``notifier worker`` passes True). Files, sockets and threads
    are only opened when the app starts serving.
    """
    if settings is None:
        settings = load_settings()
    elif not isinstance(settings, Settings):
        settings = Settings.from_mapping(settings)

    # No static folder: notifier serves none, and its route would be the one added
    # before the URL map below is set up.
    app = Quart(__name__, static_folder=None)
    # Werkzeug's routing redirects (// merged to /, a missing trailing slash added,
    # defaults spelled out) build an absolute Location from the request's Host header,
    # so anyone could make notifier point a client at their own host. Without them an
    # odd path is simply unknown (404), or matches with or without its trailing slash.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.url_map.redirect_defaults = False
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    # A multipart/form-data send or render may be larger: it carries attachments.
    app.request_class = multipart_request_class(settings.limits)
    metrics = Metrics()
    app.extensions["notifier.settings"] = settings
    app.extensions["notifier.metrics"] = metrics
    wall_clock = clock or time.time
    date_clock = None if clock is None else (lambda: datetime.fromtimestamp(wall_clock(), UTC))
    renderer = Renderer.from_settings(settings, clock=date_clock)
    app.extensions["notifier.renderer"] = renderer
    store = outbox if outbox is not None else open_outbox(settings.outbox, clock=wall_clock)
    if subscribers is None:
        subscribers = load_subscribers(
            settings,
            on_relay_state=partial(metrics.relay_state, relay_address(settings.smtp)),
            clock=wall_clock,
        )
    subscribers = list(subscribers)
    delivering = settings.delivery.in_serve if deliver is None else deliver
    dispatcher = None
    if delivering:
        dispatcher = Dispatcher(
            app,
            store,
            subscribers,
            settings.delivery,
            clock=wall_clock,
            rng=rng or random.random,
            metrics=metrics,
            retention=settings.outbox.retention,
            log_addresses=settings.log.include_addresses,
        )
    app.extensions["notifier.outbox"] = store
    app.extensions["notifier.dispatcher"] = dispatcher
    app.extensions["notifier.sending"] = Sending(
        renderer=renderer,
        outbox=store,
        subscribers=[subscriber.name for subscriber in subscribers],
        idempotency_ttl=settings.idempotency.ttl,
        dispatcher=dispatcher,
        metrics=metrics,
    )

    @app.before_serving
    async def start_delivery() -> None:
        try:
            await store.open()
        except OutboxUnavailable as exc:
            # Keep serving (renders work, /readyz says why); sends answer 503 until the
            # outbox can be opened, and the dispatcher keeps trying.
            logger.error("the outbox is not usable yet: %s", exc.detail)
        if dispatcher is not None:
            dispatcher.start()

    @app.after_serving
    async def stop_delivery() -> None:
        if dispatcher is not None:
            await dispatcher.stop(grace=settings.delivery.shutdown_grace)
        for subscriber in subscribers:
            await subscriber.aclose()
        await store.close()
        renderer.close()

    # Order matters: authentication names the caller, the rate limit counts by it; the
    # request id comes first of all (init_tracing puts its hook in front).
    limiter = RateLimiter(settings.limits, tokens=settings.auth.tokens)
    authenticator = Authenticator(settings.auth, limiter=limiter)
    authenticator.init_app(app)
    limiter.init_app(app)
    init_tracing(app, metrics)
    register_error_handlers(app, too_large="limits.max_body_bytes")
    register_blueprints(app)
    init_console(app, authenticator=authenticator)
    return app
