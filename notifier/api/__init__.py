"""HTTP API v1: one blueprint per area.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from quart import Quart

from notifier.api.health import health
from notifier.api.messages import messages
from notifier.api.openapi import init_openapi
from notifier.api.render import render
from notifier.api.templates import templates

__all__ = ["register_blueprints"]


def register_blueprints(app: Quart) -> None:
    app.register_blueprint(health)
    app.register_blueprint(render)
    app.register_blueprint(messages)
    app.register_blueprint(templates)
    init_openapi(app)
