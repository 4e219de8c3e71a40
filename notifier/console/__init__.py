"""The operator console at ``/console``: templates rendered with example or edited data,
recent and failed messages with each subscriber's attempts, and retries, in a browser.

Server-rendered pages (Jinja, autoescaped) and one small script, all shipped inside this
package; a strict Content-Security-Policy on every answer. Access: see
:mod:`notifier.console.access`. The console is a page for people, not part of the HTTP
API: its routes are left out of the OpenAPI document.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import logging

from quart import Quart

from notifier.api.auth import Authenticator
from notifier.console.access import ConsoleAccess
from notifier.console.views import console

__all__ = ["CONSOLE_PATH", "init_console"]

CONSOLE_PATH = "/console"

logger = logging.getLogger("notifier.console")


def init_console(app: Quart, *, authenticator: Authenticator) -> None:
    """Serve the console on ``app``, guarded by the API's ``authenticator``."""
    access = ConsoleAccess(authenticator)
    app.extensions["notifier.console"] = access
    app.register_blueprint(console)

    @app.before_serving
    async def announce_console() -> None:
        # The path only: the address is hypercorn's "Running on" line (and `make run`
        # prints the whole URL).
        who = "open, no tokens configured" if access.open else "sign in with an admin token"
        logger.info("operator console at %s (%s)", CONSOLE_PATH, who)
