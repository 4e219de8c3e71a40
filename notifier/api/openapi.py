"""The API's OpenAPI 3.1 document at ``GET /openapi.json``, and the ``GET /docs`` page.

quart-schema generates the document from the app's routes: every route the app serves
appears, described by its view's docstring (summary line, then description), its tag
and the models (:class:`Shape`, next to each view) its ``document_*`` decorators name. They
document and do not validate: notifier reads each request itself, so its statuses and
problem bodies stay those of docs/api.md.

What quart-schema 0.25 cannot express, :class:`NotifierOpenAPI` (its provider, through the
hooks it has for this) adds:

- answers other than JSON (quart-schema writes every one as ``application/json``):
  :func:`document_media` (``message/rfc822`` besides JSON for a render, metrics as text,
  this page as HTML, the problem ``/readyz`` answers 503 with);
- a second media type for a request body (quart-schema documents one, as JSON or as a
  form without files): :func:`document_request_media`, the ``multipart/form-data`` with
  attachments that send and render also take, with the ``encoding`` of its parts;
- shared problem responses (quart-schema has no ``components/responses``):
  :func:`document_problems` names a view's own; 401, 403 and 429 on every /v1 operation
  and 400, 413 and 415 on every one with a body are added here. Each lists the problem
  types of :mod:`notifier.errors` with its status;
- security that follows the instance (quart-schema's is fixed at import): each /v1
  operation needs the scope ``notifier.api.auth`` checks, and with no tokens configured
  a token is optional;
- response headers (quart-schema puts them inside ``content``, which is not valid), the
  ``required`` of header and query parameters (it never sets it), path parameters with
  the schema of the view's annotation (it only knows the URL converter), ``X-Request-ID``
  everywhere, the links of a send's answer, operation ids without its method prefix,
  named components for top-level models, the security scheme's description.

quart-schema's own routes are off (``openapi_path=None``): its pages load scripts from
CDNs, and the service often runs where they cannot be reached. This module serves the
document, and :mod:`notifier.api.docs_page` renders it as a page that loads nothing.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, RootModel, TypeAdapter
from quart import Blueprint, Quart, Response, current_app
from quart_schema import (
    HttpSecurityScheme,
    OpenAPIProvider,
    QuartSchema,
    Tag,
    document_response,
    snake_to_camel,
    tag_blueprint,
)
from quart_schema.validation import QUART_SCHEMA_RESPONSE_ATTRIBUTE
from werkzeug.routing import Rule

from notifier import __version__
from notifier.api.auth import required_scope
from notifier.api.docs_page import render_docs_page
from notifier.api.tracing import REQUEST_ID_HEADER
from notifier.errors import NotifierError
from notifier.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE
from notifier.settings import Settings

__all__ = [
    "BEARER",
    "PROBLEM_RESPONSES",
    "DocsPage",
    "NotifierOpenAPI",
    "OpenAPIDocument",
    "Problem",
    "Shape",
    "absent",
    "document_media",
    "document_problems",
    "document_request_media",
    "init_openapi",
    "openapi",
]

openapi = Blueprint("openapi", __name__)
tag_blueprint(openapi, ["operations"])

JSONObject = dict[str, Any]
View = TypeVar("View", bound=Callable[..., Any])

BEARER = "bearerAuth"
_MEDIA_ATTRIBUTE = "_notifier_media"
_REQUEST_MEDIA_ATTRIBUTE = "_notifier_request_media"
_STRING = {"type": "string"}


def _untitled(schema: dict[str, Any]) -> None:
    # pydantic titles every schema and member after its Python name ("Message Id"): noise
    # next to the component and member names the document already has.
    schema.pop("title", None)
    for member in schema.get("properties", {}).values():
        member.pop("title", None)


class Shape(BaseModel):
    """Base of the API's models: they describe requests and answers for the document, and
    validate nothing (the views read requests and build answers themselves)."""

    model_config = ConfigDict(json_schema_extra=_untitled)


def _no_default(schema: dict[str, Any]) -> None:
    # An absent member is left out of the JSON, never null: its pydantic default (None)
    # is not a value a client meets, so the schema does not offer it as one.
    schema.pop("default", None)


def absent(**field: Any) -> Any:
    """A member that may be left out (pair its type with ``SkipJsonSchema[None]``)."""
    return Field(None, json_schema_extra=_no_default, **field)


class Problem(Shape):
    """An RFC 9457 problem; some problems add members (e.g. `variable`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="`urn:notifier:problem:<slug>` or `about:blank`; stable, to switch on."
    )
    title: str
    status: int = Field(ge=400, le=599)
    detail: str


class OpenAPIDocument(RootModel[dict[str, Any]]):
    """This OpenAPI 3.1 document."""


class DocsPage(RootModel[str]):
    """This document as an HTML page."""


#: The problem responses operations share: their names in ``components/responses``, what
#: Werkzeug raises them for (notifier's own errors describe themselves), their headers.
PROBLEM_RESPONSES: dict[int, tuple[str, str, JSONObject]] = {
    400: ("BadRequest", "", {}),
    401: ("Unauthorized", "", {"WWW-Authenticate": _STRING}),
    403: ("Forbidden", "", {}),
    404: ("NotFound", "", {}),
    405: ("MethodNotAllowed", "The path exists, not with this method", {"Allow": _STRING}),
    409: ("Conflict", "", {}),
    413: ("ContentTooLarge", "The body is larger than `limits.max_body_bytes`", {}),
    415: ("UnsupportedMediaType", "", {}),
    422: ("UnprocessableContent", "", {}),
    429: ("TooManyRequests", "", {"Retry-After": {"type": "integer", "minimum": 0}}),
    503: ("ServiceUnavailable", "", {}),
}


def document_problems(*statuses: int) -> Callable[[View], View]:
    """Document the problems a view answers with besides those every operation of its
    kind can (401, 403 and 429 under /v1; 400, 413 and 415 with a request body)."""

    def decorator(view: View) -> View:
        for status in statuses:
            view = document_response(Problem, status)(view)
        return view

    return decorator


def document_media(
    model: type[BaseModel], media_type: str, status: int = 200
) -> Callable[[View], View]:
    """Document that the ``status`` answer may come as ``media_type``, shaped as ``model``
    (whose docstring describes the answer when nothing else documents ``status``)."""

    def decorator(view: View) -> View:
        setattr(
            view,
            _MEDIA_ATTRIBUTE,
            [*getattr(view, _MEDIA_ATTRIBUTE, ()), (status, media_type, model)],
        )
        return view

    return decorator


def document_request_media(
    model: type[BaseModel], media_type: str, *, encoding: JSONObject | None = None
) -> Callable[[View], View]:
    """Document that the request body may also come as ``media_type``, shaped as
    ``model``; ``encoding`` is OpenAPI's per-part encoding of a multipart body."""

    def decorator(view: View) -> View:
        setattr(view, _REQUEST_MEDIA_ATTRIBUTE, (model, media_type, encoding))
        return view

    return decorator


def _ref(kind: str, name: str) -> JSONObject:
    return {"$ref": f"#/components/{kind}/{name}"}


def _errors(base: type[NotifierError] = NotifierError) -> Iterator[type[NotifierError]]:
    for error in base.__subclasses__():
        yield error
        yield from _errors(error)


def _problem_response(status: int) -> JSONObject:
    kinds = {f"`{PROBLEM_TYPE_BASE}{e.slug}`: {e.title}" for e in _errors() if e.status == status}
    _, raised, headers = PROBLEM_RESPONSES[status]
    return {
        "description": "; ".join(([raised] if raised else []) + sorted(kinds)) + ".",
        "headers": {
            REQUEST_ID_HEADER: _ref("headers", "RequestId"),
            **{name: {"required": True, "schema": schema} for name, schema in headers.items()},
        },
        "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("schemas", "Problem")}},
    }


def _named(model: type[BaseModel], schema: JSONObject, components: JSONObject) -> JSONObject:
    """``schema`` moved into ``components`` under the model's name: a reference to it."""
    components[model.__name__] = schema
    return _ref("schemas", model.__name__)


def _mark_required(
    model: type[BaseModel], parameters: list[JSONObject], definitions: JSONObject
) -> tuple[list[JSONObject], JSONObject]:
    required = model.model_json_schema().get("required", [])
    for parameter in parameters:
        parameter["required"] = parameter["name"] in required
    return parameters, definitions


class NotifierOpenAPI(OpenAPIProvider):
    """quart-schema's provider, completed with what it cannot express (module docstring)."""

    def __init__(self, app: Quart, extension: QuartSchema) -> None:
        super().__init__(app, extension)
        self._document: JSONObject | None = None

    def schema(self) -> JSONObject:
        # Built once per app: neither its routes nor its settings change while it runs.
        if self._document is None:
            document = super().schema()
            components = document["components"]
            components["schemas"]["Problem"] = Problem.model_json_schema()
            components["responses"] = {
                name: _problem_response(status)
                for status, (name, _, _) in PROBLEM_RESPONSES.items()
            }
            components["parameters"] = {
                "RequestId": {
                    "name": REQUEST_ID_HEADER,
                    "in": "header",
                    "description": "Your id for this request (1 to 128 letters, digits, `.`, "
                    "`_` or `-`), kept in logs and with the message; another is replaced.",
                    "schema": _STRING,
                }
            }
            components["headers"] = {
                "RequestId": {
                    "required": True,
                    "description": "The request's id: the caller's, or one generated for it.",
                    "schema": _STRING,
                }
            }
            components["securitySchemes"][BEARER]["description"] = (
                "`Authorization: Bearer <token>`, a token from `auth.tokens` in settings. "
                "Each /v1 operation lists the scope it needs (`send` or `admin`). With no "
                "tokens configured the API is open."
            )
            self._document = document
        return self._document

    def generate_rules(self) -> Iterable[Rule]:
        return sorted(super().generate_rules(), key=lambda rule: rule.rule)

    def operation_id(self, method: str, path: str, func: Callable[..., Any]) -> str:
        return str(snake_to_camel(func.__name__))

    def build_querystring_parameters(self, model: Any) -> tuple[list[JSONObject], JSONObject]:
        return _mark_required(model, *super().build_querystring_parameters(model))

    def build_headers_parameters(self, model: Any) -> tuple[list[JSONObject], JSONObject]:
        return _mark_required(model, *super().build_headers_parameters(model))

    def build_request_body(self, model: Any, source: Any) -> tuple[JSONObject, JSONObject]:
        body, components = super().build_request_body(model, source)
        for content in body["content"].values():
            content["schema"] = _named(model, content["schema"], components)
        return {"required": True, **body}, components

    def build_response_object(
        self, model: Any, headers_model: Any
    ) -> tuple[JSONObject, JSONObject]:
        response, components = super().build_response_object(model, None)
        content = response["content"]["application/json"]
        content["schema"] = _named(model, content["schema"], components)
        if headers_model is not None:
            schema = headers_model.model_json_schema()
            response["headers"] = {
                name: {
                    "required": name in schema.get("required", []),
                    "description": member.pop("description", ""),
                    "schema": member,
                }
                for name, member in schema["properties"].items()
            }
        if links := getattr(model, "links", None):
            response["links"] = links
        return response, components

    def build_paths(self, rule: Rule) -> tuple[JSONObject, JSONObject]:
        paths, components = super().build_paths(rule)
        view = self._app.view_functions[rule.endpoint]
        for operation in next(iter(paths.values())).values():
            self._complete(operation, rule, view, components)
        return paths, components

    def _complete(
        self, operation: JSONObject, rule: Rule, view: Callable[..., Any], components: JSONObject
    ) -> None:
        if description := operation.pop("description", "").strip():
            operation["description"] = description
        hints = get_type_hints(view, include_extras=True)
        for parameter in operation["parameters"]:
            if parameter["in"] == "path":
                parameter["schema"] = TypeAdapter(hints[parameter["name"]]).json_schema()
                parameter["description"] = parameter["schema"].pop("description")
        operation["parameters"].append(_ref("parameters", "RequestId"))
        responses: dict[int, JSONObject] = operation["responses"]
        for status, media_type, model in getattr(view, _MEDIA_ATTRIBUTE, ()):
            response = responses.setdefault(status, {"description": inspect.getdoc(model)})
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(schema.pop("$defs", {}))
            # Text stays inline: behind a name, clients (schemathesis among them) could
            # not tell that the body is a plain string, and would not check it.
            if schema.get("type") == "object":
                schema = _named(model, schema, components)
            response.setdefault("content", {})[media_type] = {"schema": schema}
        if (request_media := getattr(view, _REQUEST_MEDIA_ATTRIBUTE, None)) is not None:
            model, media_type, encoding = request_media
            content: JSONObject = {"schema": _named(model, model.model_json_schema(), components)}
            if encoding:
                content["encoding"] = encoding
            operation["requestBody"]["content"][media_type] = content
        documented = getattr(view, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {})
        problems = {status for status, (model, _) in documented.items() if model is Problem}
        scope = required_scope(rule.rule, rule.endpoint)
        if scope is not None:
            problems |= {401, 403, 429}
        if "requestBody" in operation:
            problems |= {400, 413, 415}
        for status in problems:
            responses[status] = _ref("responses", PROBLEM_RESPONSES[status][0])
        for response in responses.values():
            if "$ref" not in response:
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = _ref("headers", "RequestId")
        operation["responses"] = {str(status): responses[status] for status in sorted(responses)}
        # OpenAPI 3.1 lets a requirement on a non-OAuth scheme list roles: here, the token
        # scope. With no tokens configured the service is open, and the empty alternative
        # ({}) says a request without one is accepted too.
        settings: Settings = self._app.extensions["notifier.settings"]
        operation["security"] = (
            [] if scope is None else [{BEARER: [scope]}] + ([] if settings.auth.tokens else [{}])
        )


def init_openapi(app: Quart) -> None:
    """Generate ``app``'s document with quart-schema, and serve it and its page."""
    extension = QuartSchema(
        openapi_path=None,  # none of quart-schema's routes (module docstring)
        # A mapping, not Info(license=License(...)): quart-schema 0.25 puts a nested
        # License into the document as it is, which JSON cannot encode.
        info={
            "title": "notifier",
            "version": __version__,
            "summary": "Render RFC 5322 email from Jinja templates and fan it out.",
            "description": "Every 4xx and 5xx answer is an RFC 9457 problem "
            "(`application/problem+json`); the 503 of `/readyz` adds `checks`. A method a "
            "path does not accept is a 405 problem with `Allow`; HEAD and OPTIONS are "
            "answered on every path. An unexpected error is a 500 problem whose details go "
            f"to the log only. Every request may carry `{REQUEST_ID_HEADER}` and every "
            "answer carries it back.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        tags=[
            Tag("messages", "Render, send, follow a message (scope `send`)."),
            Tag("operators", "Templates, listings, retries (scope `admin`)."),
            Tag("operations", "Health, metrics, this description; no token."),
        ],
        security_schemes={BEARER: HttpSecurityScheme(scheme="bearer")},
    )
    # Not extension.init_app(app): besides the two settings below, which the provider
    # reads, it wraps every answer in a conversion of returned models (tens of µs each;
    # notifier's views build their own JSON) and swaps the app's JSON provider and test
    # client. The provider is all notifier needs.
    app.config.setdefault("QUART_SCHEMA_CONVERSION_PREFERENCE", None)
    app.config.setdefault("QUART_SCHEMA_CONVERT_CASING", False)
    app.extensions["notifier.openapi"] = NotifierOpenAPI(app, extension)
    app.register_blueprint(openapi)


def _document() -> JSONObject:
    provider: NotifierOpenAPI = current_app.extensions["notifier.openapi"]
    return provider.schema()


@openapi.get("/openapi.json")
@document_response(OpenAPIDocument)
async def openapi_document() -> Response:
    """This OpenAPI 3.1 document."""
    return Response(json.dumps(_document(), ensure_ascii=False), content_type="application/json")


@openapi.get("/docs")
@document_media(DocsPage, "text/html")
async def docs_page() -> str:
    """This document as a page, rendered on the server; it loads nothing from anywhere."""
    return await render_docs_page(_document())
