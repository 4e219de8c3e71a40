"""The API's OpenAPI 3.1 description at ``GET /openapi.json`` and a readable ``GET /docs``.

The document is built at request time from the app's own URL map: every route the app
serves appears, with the description of its operation looked up in :data:`OPERATIONS`
(one entry per rule and method). Path parameters, the security requirement and the
error responses every operation shares are derived, not repeated, so there is one place
to change each fact. ``tests/test_openapi.py`` fails when a route has no description or
a description has no route, and a schemathesis run against a live server checks that the
answers match the document.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from markupsafe import Markup, escape
from quart import Blueprint, Quart, Response, current_app, render_template_string
from werkzeug.routing import Rule

from notifier import __version__
from notifier.api.auth import SEND_ENDPOINTS
from notifier.api.tracing import REQUEST_ID_HEADER
from notifier.outbox import DELIVERY_STATUSES
from notifier.problems import PROBLEM_CONTENT_TYPE
from notifier.settings import Settings

__all__ = [
    "API_PREFIX",
    "AUTOMATIC_METHODS",
    "OPERATIONS",
    "UNDOCUMENTED_ENDPOINTS",
    "Operation",
    "build_document",
    "described_routes",
    "openapi",
    "required_scope",
    "served_routes",
]

openapi = Blueprint("openapi", __name__)

JSONObject = dict[str, Any]
Scope = Literal["send", "admin"]

#: Paths under this prefix need a token (when tokens are configured) and count against
#: the caller's rate limit, as ``notifier.api.auth`` and ``notifier.api.ratelimit`` check.
API_PREFIX = "/v1/"

#: Methods the framework answers on every route by itself (HEAD mirrors GET, OPTIONS
#: lists the methods); describing them on each path would only add noise.
AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})
#: Endpoints left out of the document: Quart's ``/static/<path:filename>`` route, should an
#: app ever get one (notifier's app is built without a static folder).
UNDOCUMENTED_ENDPOINTS = frozenset({"static"})

_TEMPLATE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
#: Idempotency-Key: 1 to 255 visible ASCII characters, spaces allowed inside
#: (the same rule as ``notifier.api.messages``).
_IDEMPOTENCY_KEY = r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$"
_MAX_PAGE = 500
_BEARER = "bearerAuth"
_RULE_ARGUMENT = re.compile(r"<(?:[^>:]+:)?([^>]+)>")


def _ref(kind: str, name: str) -> JSONObject:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> JSONObject:
    return _ref("schemas", name)


def _json(schema: JSONObject, media_type: str = "application/json") -> JSONObject:
    return {media_type: {"schema": schema}}


def _nullable(type_: str) -> JSONObject:
    return {"type": [type_, "null"]}


_STRING: JSONObject = {"type": "string"}
_TIMESTAMP: JSONObject = {"type": "string", "format": "date-time"}
_STATUS: JSONObject = {"type": "string", "enum": list(DELIVERY_STATUSES)}


def _object(properties: JSONObject, *, optional: tuple[str, ...] = (), **extra: Any) -> JSONObject:
    """A JSON object schema whose properties are required unless named in ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        **extra,
    }


_RELAY_NOTE: JSONObject = {
    **_STRING,
    "description": "Present when the relay is down: what that means for senders.",
}

_ENVELOPE = _object(
    {"from": _STRING, "to": {"type": "array", "items": _STRING}},
    description="The SMTP envelope: sender and every recipient (To, Cc and Bcc).",
)

SCHEMAS: JSONObject = {
    "Problem": {
        "type": "object",
        "description": "An RFC 9457 problem; some problems add members (e.g. `variable`).",
        "properties": {
            "type": {
                "type": "string",
                "description": "`urn:notifier:problem:<slug>` or "
                "`about:blank`; stable, to switch on.",
            },
            "title": _STRING,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": _STRING,
        },
        "required": ["type", "title", "status", "detail"],
        "additionalProperties": True,
    },
    "Context": {
        "type": "object",
        "description": "The template context: any JSON object. A variable the template "
        "uses but the object lacks is a 422 naming it.",
        "additionalProperties": True,
    },
    "RenderedMessage": _object(
        {
            "headers": {"type": "object", "additionalProperties": _STRING},
            "text": _STRING,
            "html": _nullable("string"),
            "raw": {"type": "string", "description": "The exact RFC 5322 bytes (ASCII, CRLF)."},
            "envelope": _ENVELOPE,
        }
    ),
    "Accepted": _object(
        {"id": _STRING, "message_id": _STRING, "status": {"const": "queued"}},
    ),
    "Delivery": _object(
        {
            "status": _STATUS,
            "attempts": {"type": "integer", "minimum": 0},
            "last_error": _nullable("string"),
            "smtp_code": _nullable("integer"),
            "next_attempt_at": {**_TIMESTAMP, "type": ["string", "null"]},
            "updated_at": {**_TIMESTAMP, "type": ["string", "null"]},
            "detail": {
                "type": "object",
                "description": "What earlier attempts left behind, e.g. refused recipients.",
            },
        },
        optional=("detail",),
    ),
    "Message": _object(
        {
            "id": _STRING,
            "template": _STRING,
            "message_id": _STRING,
            "status": _STATUS,
            "created_at": _TIMESTAMP,
            "envelope": _ENVELOPE,
            "subscribers": {
                "type": "object",
                "description": "Keyed by each subscriber's name as written in settings.",
                "additionalProperties": _schema("Delivery"),
            },
        }
    ),
    "MessagePage": _object(
        {
            "messages": {"type": "array", "items": _schema("Message")},
            "next": {**_nullable("string"), "description": "URL of the next page, or null."},
        }
    ),
    "TemplateInfo": _object(
        {
            "name": {"type": "string", "pattern": _TEMPLATE_NAME},
            "html": {"type": "boolean", "description": "`<name>.html.j2` exists."},
            "example": {"type": "boolean", "description": "`<name>.example.json` exists."},
            "valid": {"type": "boolean"},
            "error": _nullable("string"),
        }
    ),
    "TemplateList": _object(
        {"templates": {"type": "array", "items": _schema("TemplateInfo")}},
    ),
    "Health": _object({"status": {"const": "ok"}}),
    "Readiness": _object(
        {
            "status": {"const": "ready"},
            "checks": _schema("Checks"),
            "relay": _schema("RelayState"),
            "note": _RELAY_NOTE,
        },
        optional=("relay", "note"),
    ),
    "Checks": {
        "type": "object",
        "description": "Each check (`templates`, `outbox`, `dispatcher`, and `smtp` "
        "when smtp is a subscriber): `ok`, or why it failed. Only `templates`, `outbox` "
        "and `dispatcher` decide readiness; `smtp` is reported, see `relay`.",
        "additionalProperties": _STRING,
    },
    "RelayState": {
        "enum": ["up", "down"],
        "description": "Whether the SMTP relay accepts a connection and greets with 220 "
        "(present when smtp is a subscriber). A relay that is down does not make the "
        "service unready: messages are accepted and delivered when it is back. Also "
        "exported as the metric `notifier_relay_up`.",
    },
    "NotReady": {
        "allOf": [
            _schema("Problem"),
            {
                "type": "object",
                "properties": {
                    "checks": _schema("Checks"),
                    "relay": _schema("RelayState"),
                    "note": _RELAY_NOTE,
                },
                "required": ["checks"],
            },
        ]
    },
}


#: Every answer carries the request's id (``notifier.api.tracing``).
_REQUEST_ID_PARAMETER: JSONObject = {
    "name": REQUEST_ID_HEADER,
    "in": "header",
    "required": False,
    "description": "Your id for this request (1 to 128 letters, digits, `.`, `_` or `-`), "
    "kept in logs and with the message; another value is replaced by a generated id.",
    "schema": _STRING,
}
_REQUEST_ID_RESPONSE_HEADER: JSONObject = {
    "description": "The request's id: the caller's, or one generated for it.",
    "schema": _STRING,
}


def _with_request_id(response: JSONObject) -> JSONObject:
    """``response`` with the request-id header every answer carries (a new dict)."""
    headers = {**response.get("headers", {}), REQUEST_ID_HEADER: _ref("headers", "RequestId")}
    return {**response, "headers": headers}


def _problem(description: str, headers: JSONObject | None = None) -> JSONObject:
    return _with_request_id(
        {
            "description": description,
            "headers": headers or {},
            "content": _json(_schema("Problem"), PROBLEM_CONTENT_TYPE),
        }
    )


#: Reusable problem responses, referenced by status code from :class:`Operation`.
PROBLEM_RESPONSES: dict[str, tuple[str, JSONObject]] = {
    "400": (
        "BadRequest",
        _problem("The body is not a JSON object, or a header or query parameter is invalid."),
    ),
    "401": (
        "Unauthorized",
        _problem(
            "Tokens are configured and the request has none, or an unknown one.",
            {"WWW-Authenticate": {"required": True, "schema": _STRING}},
        ),
    ),
    "403": ("Forbidden", _problem("The token is valid but lacks the scope this operation needs.")),
    "404": (
        "NotFound",
        _problem(
            "No such template or message (names outside the "
            "template name pattern are simply unknown)."
        ),
    ),
    "405": (
        "MethodNotAllowed",
        _problem(
            "The path exists but not with this method.",
            {
                "Allow": {
                    "required": True,
                    "schema": _STRING,
                    "description": "The methods the path accepts.",
                }
            },
        ),
    ),
    "409": (
        "Conflict",
        _problem(
            "A request with this Idempotency-Key is still in progress, "
            "or (retry) the message has no failed delivery."
        ),
    ),
    "413": ("ContentTooLarge", _problem("The body is larger than `limits.max_body_bytes`.")),
    "415": ("UnsupportedMediaType", _problem("`Content-Type` is missing or not JSON.")),
    "422": (
        "UnprocessableContent",
        _problem(
            "Render or compose failed (missing variable, header injection, bad address, "
            "a header over its cap, template error, render budget exceeded, sender not "
            "allowed, too many recipients), or the Idempotency-Key was used with another "
            "request."
        ),
    ),
    "429": (
        "TooManyRequests",
        _problem(
            "The caller's rate limit is spent: the token's own, or the global one "
            "(counted per token, or per client address for callers without a token). "
            "Both are off unless configured.",
            {
                "Retry-After": {
                    "required": True,
                    "description": "Seconds to wait.",
                    "schema": {"type": "integer", "minimum": 0},
                }
            },
        ),
    ),
    "503": (
        "ServiceUnavailable",
        _problem(
            "The outbox cannot store the message (nothing is sent), or too many slow "
            "renders are waiting for a render process (with `Retry-After`)."
        ),
    ),
}

#: Path parameters, by the name the URL rules give them.
PATH_PARAMETERS: dict[str, JSONObject] = {
    "name": {
        "description": "A template name (`templates/<name>.j2`).",
        "schema": {"type": "string", "pattern": _TEMPLATE_NAME},
        "example": "burger_receipt",
    },
    "message_id": {
        "description": "The `id` a send returned.",
        "schema": {"type": "string", "minLength": 1},
    },
}

_BURGER_ORDER: JSONObject = {
    "to": "bob@example.com",
    "from": "shopping@example-shop.com",
    "subject": "Your Burger order",
    "name": "Bob",
    "items": [
        {"name": "Cheeseburger", "price": 4.5},
        {"name": "Fries", "price": 2.0},
        {"name": "Root Beer", "price": 3.0},
    ],
}
_CONTEXT_BODY: JSONObject = {
    "required": True,
    "description": "The template context (`application/json` or any `+json` type).",
    "content": {"application/json": {"schema": _schema("Context"), "example": _BURGER_ORDER}},
}
_LOCATION: JSONObject = {
    "required": True,
    "description": "`/v1/messages/<id>`: where the message's status is.",
    "schema": _STRING,
}


@dataclass(frozen=True, slots=True)
class Operation:
    """What one route and method does: the parts that cannot be derived from the app.

    ``problems`` lists the problem statuses it can answer besides those implied by its
    path (under ``/v1/``: 401, 403 and 429) and by a JSON request body (400, 413, 415).
    The token scope it needs comes from :data:`notifier.api.auth.SEND_ENDPOINTS`.
    """

    operation_id: str
    summary: str
    responses: JSONObject
    tag: str
    description: str = ""
    problems: tuple[int, ...] = ()
    parameters: tuple[JSONObject, ...] = ()
    request_body: JSONObject | None = None

    def problem_statuses(self, *, authenticated: bool) -> list[int]:
        implied: set[int] = set(self.problems)
        if authenticated:
            implied |= {401, 403, 429}
        if self.request_body is not None:
            implied |= {400, 413, 415}
        return sorted(implied)


#: Every documented operation, keyed by (Werkzeug URL rule, method).
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/v1/render/<name>", "POST"): Operation(
        operation_id="renderMessage",
        summary="Render and compose a message without sending it (a dry run)",
        description="200 with the exact bytes that would be sent. With "
        "`Accept: application/json`, a JSON view read back from those bytes.",
        tag="messages",
        problems=(404, 422, 503),
        request_body=_CONTEXT_BODY,
        responses={
            "200": {
                "description": "The composed message.",
                "content": {
                    "message/rfc822": {"schema": _STRING},
                    **_json(_schema("RenderedMessage")),
                },
            }
        },
    ),
    ("/v1/send/<name>", "POST"): Operation(
        operation_id="sendMessage",
        summary="Render, compose and durably queue a message for every subscriber",
        description="202 only once the message is committed to the outbox. The same "
        "`Idempotency-Key` with the same template and body returns the first response.",
        tag="messages",
        problems=(404, 409, 422, 503),
        request_body=_CONTEXT_BODY,
        parameters=(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "1 to 255 visible ASCII characters (spaces allowed inside).",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": _IDEMPOTENCY_KEY,
                },
            },
        ),
        responses={
            "202": {
                "description": "Accepted and stored.",
                "headers": {
                    "Location": _LOCATION,
                    "Idempotent-Replayed": {
                        "description": "Present when this is the stored first response "
                        "to an earlier request with the same Idempotency-Key.",
                        "schema": {"type": "string", "enum": ["true"]},
                    },
                },
                "content": _json(_schema("Accepted")),
                "links": {
                    "GetMessage": {
                        "operationId": "getMessage",
                        "parameters": {"message_id": "$response.body#/id"},
                    },
                    "RetryMessage": {
                        "operationId": "retryMessage",
                        "parameters": {"message_id": "$response.body#/id"},
                    },
                },
            }
        },
    ),
    ("/v1/messages/<message_id>", "GET"): Operation(
        operation_id="getMessage",
        summary="A message's status, overall and per subscriber",
        tag="messages",
        problems=(404,),
        responses={"200": {"description": "The message.", "content": _json(_schema("Message"))}},
    ),
    ("/v1/messages", "GET"): Operation(
        operation_id="listMessages",
        summary="Messages with a given status, newest first, in pages",
        tag="operators",
        problems=(400,),
        parameters=(
            {
                "name": "status",
                "in": "query",
                "required": True,
                "description": "The messages' overall status.",
                "schema": _STATUS,
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "Page size.",
                "schema": {"type": "integer", "minimum": 1, "maximum": _MAX_PAGE, "default": 50},
            },
            {
                "name": "before",
                "in": "query",
                "required": False,
                "description": "Start after this message id (from `next`).",
                "schema": _STRING,
            },
        ),
        responses={"200": {"description": "One page.", "content": _json(_schema("MessagePage"))}},
    ),
    ("/v1/messages/<message_id>/retry", "POST"): Operation(
        operation_id="retryMessage",
        summary="Queue a message's failed deliveries again with a fresh attempt budget",
        description="Delivered subscribers are not called again. 409 when nothing failed.",
        tag="operators",
        problems=(404, 409),
        responses={
            "202": {
                "description": "Queued again.",
                "headers": {"Location": _LOCATION},
                "content": _json(_schema("Message")),
            }
        },
    ),
    ("/v1/templates", "GET"): Operation(
        operation_id="listTemplates",
        summary="The templates on disk and whether each one compiles",
        tag="operators",
        responses={
            "200": {"description": "Every template.", "content": _json(_schema("TemplateList"))}
        },
    ),
    ("/healthz", "GET"): Operation(
        operation_id="healthz",
        summary="Liveness: 200 while the process serves",
        tag="operations",
        responses={"200": {"description": "Alive.", "content": _json(_schema("Health"))}},
    ),
    ("/readyz", "GET"): Operation(
        operation_id="readyz",
        summary="Readiness: templates load, the outbox is writable, the delivery loop runs "
        "(the relay's state is reported, not required)",
        tag="operations",
        responses={
            "200": {
                "description": "Ready; `relay` says whether the SMTP relay answers.",
                "content": _json(_schema("Readiness")),
            },
            "503": {
                "description": "Not ready: a problem whose `checks` says which check "
                "failed and why.",
                "content": _json(_schema("NotReady"), PROBLEM_CONTENT_TYPE),
            },
        },
    ),
    ("/metrics", "GET"): Operation(
        operation_id="metrics",
        summary="Prometheus metrics in the text exposition format",
        tag="operations",
        responses={
            "200": {"description": "The metrics.", "content": {"text/plain": {"schema": _STRING}}}
        },
    ),
    ("/openapi.json", "GET"): Operation(
        operation_id="openapiDocument",
        summary="This OpenAPI 3.1 document",
        tag="operations",
        responses={"200": {"description": "The document.", "content": _json({"type": "object"})}},
    ),
    ("/docs", "GET"): Operation(
        operation_id="docsPage",
        summary="This document as a readable HTML page",
        tag="operations",
        responses={
            "200": {"description": "The page.", "content": {"text/html": {"schema": _STRING}}}
        },
    ),
}


def _documented_methods(methods: frozenset[str] | set[str] | None) -> list[str]:
    return sorted(set(methods or ()) - AUTOMATIC_METHODS)


def served_routes(app: Quart) -> set[tuple[str, str]]:
    """Every (URL rule, method) the app serves that the document must describe."""
    return {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint not in UNDOCUMENTED_ENDPOINTS
        for method in _documented_methods(rule.methods)
    }


def described_routes() -> set[tuple[str, str]]:
    """Every (URL rule, method) :data:`OPERATIONS` describes."""
    return set(OPERATIONS)


def _openapi_path(rule: str) -> str:
    return _RULE_ARGUMENT.sub(r"{\1}", rule)


def required_scope(rule: Rule) -> Scope | None:
    """The token scope a route needs, as ``notifier.api.auth`` decides; None: no token."""
    if not rule.rule.startswith(API_PREFIX):
        return None
    return "send" if rule.endpoint in SEND_ENDPOINTS else "admin"


def _operation_object(rule: Rule, operation: Operation, *, tokens_configured: bool) -> JSONObject:
    parameters = [
        {"name": name, "in": "path", "required": True, **PATH_PARAMETERS[name]}
        for name in _RULE_ARGUMENT.findall(rule.rule)
    ]
    parameters += operation.parameters
    parameters.append(_ref("parameters", "RequestId"))
    scope = required_scope(rule)
    responses = {status: _with_request_id(r) for status, r in operation.responses.items()}
    for status in operation.problem_statuses(authenticated=scope is not None):
        responses.setdefault(str(status), _ref("responses", PROBLEM_RESPONSES[str(status)][0]))
    result: JSONObject = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
    }
    if operation.description:
        result["description"] = operation.description
    if parameters:
        result["parameters"] = parameters
    if operation.request_body is not None:
        result["requestBody"] = operation.request_body
    result["responses"] = dict(sorted(responses.items()))
    # OpenAPI 3.1 lets a requirement on a non-OAuth scheme list roles: here, the token
    # scope. An empty list would mean "any token". With no tokens configured the
    # service is open, and the empty alternative ({}) says a request without one is
    # accepted too: the document describes the instance that serves it.
    if scope is None:
        result["security"] = []
    elif tokens_configured:
        result["security"] = [{_BEARER: [scope]}]
    else:
        result["security"] = [{_BEARER: [scope]}, {}]
    return result


def _paths(app: Quart) -> Iterator[tuple[Rule, str, Operation]]:
    rules = sorted(
        (rule for rule in app.url_map.iter_rules() if rule.endpoint not in UNDOCUMENTED_ENDPOINTS),
        key=lambda rule: rule.rule,
    )
    for rule in rules:
        for method in _documented_methods(rule.methods):
            operation = OPERATIONS.get((rule.rule, method))
            if operation is not None:
                yield rule, method, operation


def build_document(app: Quart) -> JSONObject:
    """The OpenAPI 3.1 document for ``app``: only the routes it really serves.

    A route without an entry in :data:`OPERATIONS` is left out (the test suite refuses
    that state) rather than described by a guess. Whether a token is required follows
    the app's ``auth.tokens`` setting.
    """
    settings: Settings = app.extensions["notifier.settings"]
    tokens_configured = bool(settings.auth.tokens)
    paths: JSONObject = {}
    for rule, method, operation in _paths(app):
        paths.setdefault(_openapi_path(rule.rule), {})[method.lower()] = _operation_object(
            rule, operation, tokens_configured=tokens_configured
        )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "notifier",
            "version": __version__,
            "summary": "Render RFC 5322 email from Jinja templates and fan it out to subscribers.",
            "description": "Every 4xx and 5xx answer is an RFC 9457 problem "
            "(`application/problem+json`); the 503 of `/readyz` adds `checks`. A "
            "method a path does not accept is a 405 problem with `Allow`; HEAD and "
            "OPTIONS are answered on every path. An unexpected error is a 500 problem "
            "whose details go to the log only. Every request may carry "
            f"`{REQUEST_ID_HEADER}` and every answer carries it back.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "messages", "description": "Render, send, follow a message (scope `send`)."},
            {"name": "operators", "description": "Templates, listings, retries (scope `admin`)."},
            {"name": "operations", "description": "Health, metrics, this description; no token."},
        ],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": dict(PROBLEM_RESPONSES.values()),
            "parameters": {"RequestId": _REQUEST_ID_PARAMETER},
            "headers": {"RequestId": _REQUEST_ID_RESPONSE_HEADER},
            "securitySchemes": {
                _BEARER: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <token>`, a token from "
                    "`auth.tokens` in settings. Each /v1 operation lists the scope it "
                    "needs (`send` or `admin`). With no tokens configured the API is open.",
                }
            },
        },
    }


@openapi.get("/openapi.json")
async def openapi_document() -> Response:
    return Response(
        json.dumps(build_document(current_app), ensure_ascii=False),
        content_type="application/json",
    )


@openapi.get("/docs")
async def docs_page() -> str:
    document = build_document(current_app)
    # render_template_string autoescapes: every text from the document is escaped, and
    # the two helpers below escape before they add their own markup.
    return await render_template_string(
        _DOCS_PAGE,
        document=document,
        operations=list(_page_operations(document)),
        text=_text_html,
        schema=_schema_html,
        request_id_header=REQUEST_ID_HEADER,
    )


_CODE_SPAN = re.compile(r"`([^`]+)`")
_SCHEMA_REF = re.compile(r"\{&#34;\$ref&#34;: &#34;#/components/schemas/(\w+)&#34;\}")


def _text_html(text: str) -> Markup:
    """Escaped text whose `backquoted` spans become ``<code>``, as in the docs' Markdown."""
    # Safe: the text is escaped first; only the <code> tags are ours.
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))  # noqa: S704


def _schema_html(schema: Any, *, indent: int | None = None) -> Markup:
    """A schema as escaped JSON, each reference to a named schema a link to it."""
    escaped = str(escape(json.dumps(schema, indent=indent, ensure_ascii=False)))
    # Safe: the JSON is escaped first; the link only takes a \w+ schema name from it.
    return Markup(_SCHEMA_REF.sub(r'<a href="#schema-\1">\1</a>', escaped))  # noqa: S704


def _resolve(document: Mapping[str, Any], node: Any) -> Any:
    """Follow a local ``$ref`` to what it names (one level, as the page shows it)."""
    if isinstance(node, Mapping) and "$ref" in node:
        target: Any = document
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target[part]
        return target
    return node


def _page_operations(document: Mapping[str, Any]) -> Iterator[JSONObject]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            body = operation.get("requestBody")
            yield {
                "anchor": operation["operationId"],
                "method": method.upper(),
                "path": path,
                "operation": operation,
                "scopes": [
                    scope for req in operation["security"] for scope in req.get(_BEARER, ())
                ],
                "token_optional": {} in operation["security"],
                # The request-id header is on every operation; the page says so once.
                "parameters": [
                    parameter
                    for parameter in (_resolve(document, p) for p in operation["parameters"])
                    if parameter["name"] != REQUEST_ID_HEADER
                ],
                "body": body["content"] if body else None,
                "responses": [
                    (status, _resolve(document, ref))
                    for status, ref in operation["responses"].items()
                ],
            }


_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ document.info.title }} {{ document.info.version }}: HTTP API</title>
<style>
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; }
code, pre { font: 13px/1.4 ui-monospace, monospace; }
pre { background: #f4f4f6; padding: .6rem; overflow-x: auto; }
section.op { border-top: 1px solid #ccc; margin-top: 1.5rem; }
.method { display: inline-block; min-width: 4rem; font-weight: bold; }
table { border-collapse: collapse; }
td, th { text-align: left; vertical-align: top; padding: .2rem .6rem .2rem 0; }
.scope { background: #eef; padding: 0 .3rem; }
</style>
</head>
<body>
<h1>{{ document.info.title }} {{ document.info.version }}</h1>
<p>{{ document.info.summary }}</p>
<p>{{ text(document.info.description) }}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI
{{ document.openapi }}).</p>
{% for name, scheme in document.components.securitySchemes.items() %}
<p><strong>Authentication</strong> ({{ scheme.type }} {{ scheme.scheme }}):
{{ text(scheme.description) }}</p>
{% endfor %}
<h2>Operations</h2>
<ul>
{% for op in operations %}
<li><a href="#{{ op.anchor }}"><code>{{ op.method }} {{ op.path }}</code></a>:
{{ op.operation.summary }}</li>
{% endfor %}
</ul>
{% for op in operations %}
<section class="op" id="{{ op.anchor }}">
<h3><span class="method">{{ op.method }}</span> <code>{{ op.path }}</code></h3>
<p>{{ op.operation.summary }}.{% if op.operation.description %}
{{ text(op.operation.description) }}{% endif %}</p>
<p>Token: {% for scope in op.scopes %}<span class="scope">{{ scope }}</span>
{% else %}none{% endfor %}{% if op.token_optional %} (not required by this instance: it
has no tokens configured){% endif %}</p>
{% if op.parameters %}
<h4>Parameters</h4>
<table>
<tr><th>name</th><th>in</th><th>required</th><th>schema</th><th>description</th></tr>
{% for p in op.parameters %}
<tr><td><code>{{ p.name }}</code></td><td>{{ p.in }}</td>
<td>{{ "yes" if p.required else "no" }}</td><td><code>{{ schema(p.schema) }}</code></td>
<td>{{ text(p.description) }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% if op.body %}
<h4>Request body</h4>
{% for media, content in op.body.items() %}
<p><code>{{ media }}</code>: {{ schema(content.schema) }}</p>
{% if content.example %}<p>Example:</p>
<pre>{{ content.example | tojson(indent=2) }}</pre>{% endif %}
{% endfor %}
{% endif %}
<h4>Responses</h4>
<table>
{% for status, response in op.responses %}
<tr><td><strong>{{ status }}</strong></td>
<td>{{ text(response.description) }}
{% if response.content %}<br>{% for media, content in response.content.items() %}
<code>{{ media }}</code> <code>{{ schema(content.schema) }}</code>{% if not loop.last %},
{% endif %}{% endfor %}{% endif %}
{% set headers = response.headers | reject("equalto", request_id_header) | list %}
{% if headers %}<br>headers: {% for header in headers %}
<code>{{ header }}</code>{% if not loop.last %}, {% endif %}{% endfor %}{% endif %}
</td></tr>
{% endfor %}
</table>
</section>
{% endfor %}
<h2>Schemas</h2>
{% for name, schema_ in document.components.schemas.items() %}
<h3 id="schema-{{ name }}">{{ name }}</h3>
<pre>{{ schema(schema_, indent=2) }}</pre>
{% endfor %}
</body>
</html>
"""
