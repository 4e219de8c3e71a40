"""``notifier worker``: delivery only, no HTTP.

A worker shares the outbox with ``notifier serve`` replicas (PostgreSQL, or one SQLite
file on one host) and runs the same dispatcher they do: it claims due deliveries, sends
``message_ready``, records outcomes and retries. Operators scale API replicas
(``delivery.in_serve: false``) and workers separately. SIGTERM or SIGINT stop it like
``serve``: no new claims, ``delivery.shutdown_grace`` seconds for what is in flight,
then what is left is handed back to the outbox for the other processes.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from notifier.app import create_app
from notifier.settings import Settings

__all__ = ["run_worker"]

logger = logging.getLogger("notifier.worker")


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    """Deliver until ``stop`` is set (by default: until SIGTERM or SIGINT); return 0."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The app is the signal's sender (message_ready is sent with the app, as in serve)
    # and owns the outbox, the subscribers and the dispatcher; its HTTP side is unused.
    app = create_app(settings, deliver=True)
    await app.startup()
    logger.info(
        "worker delivering to %s from the %s outbox",
        ", ".join(settings.subscriber_names) or "no subscribers",
        "PostgreSQL" if settings.outbox.url is not None else "SQLite",
    )
    try:
        await stop.wait()
    finally:
        logger.info("worker stopping: in-flight deliveries get delivery.shutdown_grace")
        await app.shutdown()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0
