"""The ``GET /docs`` page: the OpenAPI document as plain HTML, rendered on the server.

It loads nothing (no scripts, fonts or CDN: the service often runs where the internet
cannot be reached) and shows only what the document says. Every text from the document
is escaped; `backquoted` words become ``<code>`` and references to schemas become links.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup, escape
from quart import render_template_string

from notifier.api.tracing import REQUEST_ID_HEADER

__all__ = ["render_docs_page"]

_CODE_SPAN = re.compile(r"`([^`]+)`")
_SCHEMA_REF = re.compile(r"\{&#34;\$ref&#34;: &#34;#/components/schemas/(\w+)&#34;\}")


async def render_docs_page(document: Mapping[str, Any]) -> str:
    """The page for ``document`` (an OpenAPI 3.1 document as notifier builds it)."""
    # render_template_string autoescapes; the helpers escape before adding markup.
    return await render_template_string(
        _PAGE,
        document=document,
        text=_text,
        schema=_schema,
        resolve=_resolver(document),
        request_id=REQUEST_ID_HEADER,
    )


def _text(text: str | None) -> Markup:
    # Safe: the text is escaped first; only the <code> tags are ours.
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text or ""))))  # noqa: S704


def _schema(schema: Any, indent: int | None = None) -> Markup:
    escaped = str(escape(json.dumps(schema, indent=indent, ensure_ascii=False)))
    # Safe: the JSON is escaped first; a link only takes a \w+ schema name from it.
    return Markup(_SCHEMA_REF.sub(r'<a href="#schema-\1">\1</a>', escaped))  # noqa: S704


def _resolver(document: Mapping[str, Any]) -> Any:
    def resolve(node: Mapping[str, Any]) -> Any:
        """A local ``$ref`` followed one level (as the page shows it), else ``node``."""
        target: Any = node
        if "$ref" in node:
            target = document
            for part in str(node["$ref"]).removeprefix("#/").split("/"):
                target = target[part]
        return target

    return resolve


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ document.info.title }} {{ document.info.version }}: HTTP API</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; }
code, pre { font: 13px/1.4 ui-monospace, monospace; }
pre { background: #f4f4f6; padding: .6rem; overflow-x: auto; }
section { border-top: 1px solid #ccc; margin-top: 1.5rem; }
</style></head><body>
<h1>{{ document.info.title }} {{ document.info.version }}</h1>
<p>{{ document.info.summary }} {{ text(document.info.description) }}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI
{{ document.openapi }}).</p>
{% for scheme in document.components.securitySchemes.values() %}
<p><strong>Authentication</strong>: {{ text(scheme.description) }}</p>{% endfor %}
<h2>Operations</h2><ul>
{% for path, item in document.paths.items() %}{% for method, op in item.items() %}
<li><a href="#{{ op.operationId }}"><code>{{ method | upper }} {{ path }}</code></a>:
{{ op.summary }}</li>{% endfor %}{% endfor %}</ul>
{% for path, item in document.paths.items() %}{% for method, op in item.items() %}
<section id="{{ op.operationId }}">
<h3>{{ method | upper }} <code>{{ path }}</code></h3>
<p>{{ op.summary }} {{ text(op.description) }}</p>
<p>Token: {% for need in op.security if need %}{{ need.values() | first | join(", ") }}
scope{% else %}none{% endfor %}{% if {} in op.security and op.security | length > 1 %}
(not required by this instance: it has no tokens configured){% endif %}.</p>
<ul>{% for parameter in op.parameters %}{% set parameter = resolve(parameter) %}
{% if parameter.name != request_id %}<li>{{ parameter.in }} <code>{{ parameter.name }}</code>
{% if parameter.required %}(required){% endif %} <code>{{ schema(parameter.schema) }}</code>:
{{ text(parameter.description) }}</li>{% endif %}{% endfor %}
{% for media, content in (op.requestBody or {}).get("content", {}).items() %}
<li>body <code>{{ media }}</code>: {{ schema(content.schema) }}</li>{% endfor %}</ul>
<ul>{% for status, response in op.responses.items() %}{% set response = resolve(response) %}
<li><strong>{{ status }}</strong> {{ text(response.description) }}
{% for media, content in (response.content or {}).items() %}<br><code>{{ media }}</code>
<code>{{ schema(content.schema) }}</code>{% endfor %}
{% set headers = response.headers | reject("equalto", request_id) | list %}
{% if headers %}<br>headers: <code>{{ headers | join(", ") }}</code>{% endif %}</li>
{% endfor %}</ul></section>{% endfor %}{% endfor %}
<h2>Schemas</h2>
{% for name, schema_ in document.components.schemas.items() %}
<h3 id="schema-{{ name }}">{{ name }}</h3><pre>{{ schema(schema_, 2) }}</pre>{% endfor %}
<p>Every request may carry <code>{{ request_id }}</code>, and every answer carries it
back.</p>
</body></html>
"""
