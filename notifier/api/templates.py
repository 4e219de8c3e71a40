"""``GET /v1/templates``: the templates on disk and whether each one compiles.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, current_app

from notifier.renderer import Renderer

__all__ = ["templates"]

templates = Blueprint("templates", __name__, url_prefix="/v1")


@templates.get("/templates")
async def list_templates() -> dict[str, Any]:
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    store = renderer.templates
    return {"templates": [store.info(name).as_json() for name in store.names()]}
