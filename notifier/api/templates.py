"""``GET /v1/templates``: the templates on disk and whether each one compiles.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from quart import Blueprint, current_app
from quart_schema import document_response, tag_blueprint

from notifier.api.openapi import Shape
from notifier.api.render import TemplateName
from notifier.renderer import Renderer

__all__ = ["templates"]

templates = Blueprint("templates", __name__, url_prefix="/v1")
tag_blueprint(templates, ["operators"])


class TemplateInfo(Shape):
    name: TemplateName
    html: bool = Field(description="`<name>.html.j2` exists.")
    example: bool = Field(description="`<name>.example.json` exists.")
    locales: list[str] = Field(
        description='Tags of its locale variants (`<name>.<tag>.j2`), e.g. `["de"]`.'
    )
    valid: bool = Field(description="Every file of it, locale variants included, compiles.")
    error: str | None = Field(description="The first compile error, naming its file.")


class TemplateList(Shape):
    """Every template on disk and whether it compiles."""

    templates: list[TemplateInfo]


@templates.get("/templates")
@document_response(TemplateList)
async def list_templates() -> dict[str, Any]:
    """The templates on disk and whether each one compiles."""
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    store = renderer.templates
    return {"templates": [store.info(name).as_json() for name in store.names()]}
