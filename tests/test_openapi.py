"""The OpenAPI document at /openapi.json, the /docs page, and a schemathesis run against
a live ``notifier serve`` process that checks the real answers against the document."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from quart import Quart
from quart.typing import TestClientProtocol as QuartClient

from notifier.api.auth import API_PREFIX, SEND_ENDPOINTS
from notifier.app import create_app
from notifier.outbox import DELIVERY_STATUSES
from notifier.sending import IDEMPOTENCY_KEY_PATTERN
from tests.servers import ServeProcess

#: Test-only token for the live run: both scopes, so every operation can be reached.
FUZZ_TOKEN = "schemathesis-test-token-0123456789"
#: Bounds of the schemathesis run: examples per operation and phase, and a hard stop.
MAX_EXAMPLES = 100
RUN_TIMEOUT = 240
#: A fixed seed: CI explores the same inputs on every run, so a failure reproduces.
SEED = 20240607
#: Methods the framework answers on every route by itself (HEAD mirrors GET, OPTIONS lists
#: the methods): the document leaves them out.
AUTOMATIC_METHODS = frozenset({"HEAD", "OPTIONS"})
#: Every check schemathesis has but two. ``positive_data_acceptance`` expects a 2xx for
#: any body the schema allows, but a template context is any JSON object and most lack
#: the template's variables: that 422 is the intended answer. ``object_level_authorization``
#: needs two callers that own resources; a message is not owned by a token here.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
    "use_after_free",
    "ensure_resource_availability",
)


async def _document(client: QuartClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document: dict[str, Any] = await response.get_json()
    return document


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^>:]+:)?([^>]+)>", r"{\1}", rule)


async def test_document_is_valid_openapi_3_1(client: QuartClient) -> None:
    document = await _document(client)
    assert document["openapi"] == "3.1.0"
    errors = [error.message for error in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


async def test_document_lists_exactly_the_routes_the_app_serves(
    app: Quart, client: QuartClient
) -> None:
    # Both directions, against the raw URL map: a route the document leaves out, or a
    # path it lists that the app does not serve, fails here. The app has no static
    # folder; the operator console (pages for people, not API) is the one exemption.
    served = {
        (_openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in AUTOMATIC_METHODS and not rule.endpoint.startswith("console.")
    }
    assert any(rule.endpoint.startswith("console.") for rule in app.url_map.iter_rules())
    assert "static" not in {rule.endpoint for rule in app.url_map.iter_rules()}
    document = await _document(client)
    listed = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    assert listed == served
    assert not any(path.startswith("/console") for path in document["paths"])


async def test_every_operation_is_described_with_its_answers(client: QuartClient) -> None:
    # A new route is listed by itself; what says what it does comes from its view's
    # docstring and document_* decorators, which this asks for.
    document = await _document(client)
    operation_ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = (method, path)
            operation_ids.append(operation["operationId"])
            assert operation.get("summary"), where
            assert len(operation.get("tags", ())) == 1, where
            successes = [s for s in operation["responses"] if s.startswith("2")]
            assert successes, where
            for status in successes:
                assert operation["responses"][status].get("content"), (where, status)
            for response in operation["responses"].values():
                if "$ref" not in response:
                    assert response["description"], where
                    assert "X-Request-ID" in response["headers"], where
    assert len(operation_ids) == len(set(operation_ids))


async def test_every_path_parameter_is_declared_with_its_pattern(client: QuartClient) -> None:
    document = await _document(client)
    for path, item in document["paths"].items():
        for operation in item.values():
            parameters = [p for p in operation["parameters"] if "$ref" not in p]
            declared = {p["name"] for p in parameters if p["in"] == "path"}
            assert declared == set(re.findall(r"{([^}]+)}", path)), path
            for parameter in parameters:
                if parameter["name"] == "name":
                    assert parameter["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]*$"


async def test_header_and_query_parameters_keep_their_rules(client: QuartClient) -> None:
    document = await _document(client)
    send = document["paths"]["/v1/send/{name}"]["post"]
    (key,) = [p for p in send["parameters"] if p.get("name") == "Idempotency-Key"]
    assert (key["in"], key["required"]) == ("header", False)
    assert key["schema"]["pattern"] == f"^{IDEMPOTENCY_KEY_PATTERN}$"
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, 255)
    query = {
        p["name"]: p for p in document["paths"]["/v1/messages"]["get"]["parameters"] if "in" in p
    }
    assert query["status"]["required"] is True
    assert query["status"]["schema"]["enum"] == list(DELIVERY_STATUSES)
    assert query["limit"]["required"] is False
    assert (query["limit"]["schema"]["minimum"], query["limit"]["schema"]["maximum"]) == (1, 500)
    # Response headers belong to the response, with whether the answer always has them.
    accepted = send["responses"]["202"]
    assert accepted["headers"]["Location"]["required"] is True
    assert accepted["headers"]["Idempotent-Replayed"]["required"] is False
    assert list(accepted["content"]) == ["application/json"]
    assert set(accepted["links"]) == {"GetMessage", "RetryMessage"}


@pytest.mark.parametrize("tokens", [False, True], ids=["open", "tokens"])
async def test_v1_operations_need_a_scoped_token_and_the_rest_none(
    settings_data: dict[str, Any], tokens: bool
) -> None:
    if tokens:
        settings_data["auth"] = {"tokens": [{"name": "t", "token": FUZZ_TOKEN, "scopes": ["send"]}]}
    app = create_app(settings_data)
    document = await _document(app.test_client())
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    endpoints = {_openapi_path(rule.rule): rule.endpoint for rule in app.url_map.iter_rules()}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if path.startswith(API_PREFIX):
                scope = "send" if endpoints[path] in SEND_ENDPOINTS else "admin"
                # An open instance (no tokens) also accepts requests without one.
                expected = [{"bearerAuth": [scope]}] + ([] if tokens else [{}])
                assert operation["security"] == expected, (method, path)
                for status in ("401", "403", "429"):
                    assert status in operation["responses"], (method, path, status)
            else:
                assert operation["security"] == [], (method, path)


async def test_problem_responses_share_the_rfc_9457_schema(client: QuartClient) -> None:
    document = await _document(client)
    problem = document["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail"]
    assert problem["additionalProperties"] is True
    responses = document["components"]["responses"]
    for response in responses.values():
        assert response["content"] == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    assert responses["TooManyRequests"]["headers"]["Retry-After"]["required"] is True
    assert responses["MethodNotAllowed"]["headers"]["Allow"]["required"] is True
    # Each lists the problem types notifier.errors has for its status.
    unprocessable = responses["UnprocessableContent"]["description"]
    for slug in ("missing-variable", "header-injection", "idempotency-key-reused"):
        assert f"`urn:notifier:problem:{slug}`" in unprocessable
    assert "`urn:notifier:problem:unknown-template`" in responses["NotFound"]["description"]


async def test_document_and_docs_need_no_token_when_tokens_are_configured(
    settings_data: dict[str, Any],
) -> None:
    settings_data["auth"] = {"tokens": [{"name": "t", "token": FUZZ_TOKEN, "scopes": ["send"]}]}
    client = create_app(settings_data).test_client()
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.get("/docs")).status_code == 200
    assert (await client.get("/v1/templates")).status_code == 401


async def test_docs_page_shows_every_operation_from_the_document_alone(
    client: QuartClient,
) -> None:
    document = await _document(client)
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = await response.get_data(as_text=True)
    for path, item in document["paths"].items():
        assert f"<code>{path}</code>" in page
        for method in item:
            assert f'id="{item[method]["operationId"]}"' in page
    assert 'href="/openapi.json"' in page
    # Self-contained: no scripts, and nothing fetched from another host.
    assert "<script" not in page
    assert re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page) is None


async def test_docs_page_escapes_what_it_shows(client: QuartClient) -> None:
    page = await (await client.get("/docs")).get_data(as_text=True)
    # Descriptions and schemas hold "<name>" and "<slug>": they must arrive as text, also
    # inside the <code> spans the page makes of `backquoted` words.
    assert "<code>templates/&lt;name&gt;.j2</code>" in page
    assert "urn:notifier:problem:&lt;slug&gt;" in page
    assert "<name>" not in page
    assert "<slug>" not in page


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    tmp_path: Path, settings_data: dict[str, Any], smtp_capture: Any
) -> None:
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port}
    settings_data["auth"] = {
        "tokens": [{"name": "fuzzer", "token": FUZZ_TOKEN, "scopes": ["send", "admin"]}]
    }
    # The limiter stays on (its code runs on every request) but never throttles the run.
    settings_data["limits"]["rate_per_minute"] = 1_000_000
    settings_data["limits"]["rate_burst"] = 1_000_000
    settings_file = tmp_path / "fuzz-settings.yml"
    settings_file.write_text(json.dumps(settings_data), encoding="utf-8")
    process = ServeProcess.start(settings_file)
    try:
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{process.url}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--header",
            f"Authorization: Bearer {FUZZ_TOKEN}",
            "--request-timeout",
            "10",
            # One worker: hypothesis describes strategies with ast.parse, which CPython 3.11
            # cannot run in several threads at once ("AST constructor recursion depth
            # mismatch"), and one worker also keeps the order of requests reproducible.
            "--workers",
            "1",
            "--no-color",
            "--output-sanitize",
            "false",
        ]
        started = time.monotonic()
        # The run's working directory is the test's own, and SCHEMATHESIS_* variables
        # (hooks, config) are left out, so nothing of the developer's setup takes part.
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        elapsed = time.monotonic() - started
        report = f"{result.stdout}\n{result.stderr}\n--- server log ---\n{process.log_text()}"
        assert result.returncode == 0, report
        print(f"schemathesis: {elapsed:.1f} s\n{result.stdout}")
        # The examples phase sends the documented burger order: a real message went out.
        assert smtp_capture.wait_for(1, timeout=10)
        with httpx.Client(base_url=process.url, timeout=10) as http:
            assert http.get("/healthz").status_code == 200
        assert "unhandled error" not in process.log_text()
    finally:
        assert process.stop() == 0
