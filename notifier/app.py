"""The application factory. Nothing is created at import time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart

from notifier.api import register_blueprints
from notifier.api.problems import register_error_handlers
from notifier.renderer import Renderer
from notifier.settings import Settings, load_settings

__all__ = ["create_app"]


def create_app(settings: Settings | Mapping[str, Any] | None = None) -> Quart:
    """Build a notifier app.

    ``settings`` may be a :class:`Settings`, a mapping validated like the YAML file, or
    None to load ``settings.yml`` / ``NOTIFIER_SETTINGS`` plus ``NOTIFIER_*`` overrides.
    """
    if settings is None:
        settings = load_settings()
    elif not isinstance(settings, Settings):
        settings = Settings.from_mapping(settings)

    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.limits.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.extensions["notifier.settings"] = settings
    app.extensions["notifier.renderer"] = Renderer.from_settings(settings)

    register_error_handlers(app)
    register_blueprints(app)
    return app
