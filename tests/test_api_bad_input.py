"""Every bad input gets the problem+json status the pinned HTTP API (docs/api.md) gives
it, never a 500, an extra header or an extra recipient."""

from __future__ import annotations

import email
from email import policy
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol as QuartClient

PROBLEM_KEYS = {"type", "title", "status", "detail"}
BURGER = "/v1/render/burger_receipt"


async def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = await response.get_json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["detail"]
    assert "Traceback" not in await response.get_data(as_text=True)
    return body


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"to": }', b"", b"\xff\xfe", b'{"a": NaN}', b"[" * 30_000 + b"]" * 30_000],
    ids=["truncated", "bad-value", "empty", "not-utf8", "nan", "deeply-nested"],
)
async def test_malformed_json_is_400(client: QuartClient, raw: bytes) -> None:
    response = await client.post(BURGER, data=raw, headers={"Content-Type": "application/json"})
    await assert_problem(response, 400)


@pytest.mark.parametrize("document", [[1, 2], "a string", 42, None, True])
async def test_json_that_is_not_an_object_is_400(client: QuartClient, document: Any) -> None:
    response = await client.post(BURGER, json=document)
    body = await assert_problem(response, 400)
    assert "object" in body["detail"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_wrong_content_type_is_415(
    client: QuartClient, content_type: str | None, burger_order: dict[str, Any]
) -> None:
    import json

    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await client.post(BURGER, data=json.dumps(burger_order), headers=headers)
    await assert_problem(response, 415)


async def test_body_over_the_limit_is_413(client: QuartClient) -> None:
    # The test settings set limits.max_body_bytes to 64 KiB.
    big = b'{"padding": "' + b"x" * (64 * 1024) + b'"}'
    response = await client.post(BURGER, data=big, headers={"Content-Type": "application/json"})
    await assert_problem(response, 413)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/render/no_such_template",
        "/v1/render/../settings",
        "/v1/render/..%2fsettings",
        "/v1/render/..%2Fsettings",
        "/v1/render/%2e%2e",
        "/v1/render/%2e%2e%2fsettings",
        "/v1/render//etc/passwd",
        "/v1/render/%2fetc%2fpasswd",
        "/v1/render/..%5csettings",
        "/v1/render/burger_receipt.html",
        "/v1/render/burger_receipt.example",
        "/v1/render/.hidden",
        "/v1/render/_private",
    ],
)
async def test_unknown_template_and_traversal_are_404(
    client: QuartClient, path: str, burger_order: dict[str, Any]
) -> None:
    response = await client.post(path, json=burger_order)
    await assert_problem(response, 404)


async def test_unknown_route_is_404_problem(client: QuartClient) -> None:
    await assert_problem(await client.get("/nowhere"), 404)


async def test_wrong_method_is_405_with_allow(client: QuartClient) -> None:
    response = await client.get(BURGER)
    await assert_problem(response, 405)
    assert "POST" in response.headers["Allow"]


async def test_missing_variable_is_422_naming_it(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    del burger_order["name"]
    body = await assert_problem(await client.post(BURGER, json=burger_order), 422)
    assert body["variable"] == "name"
    assert "'name'" in body["detail"]


async def test_missing_nested_key_is_422_naming_it(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    del burger_order["items"][1]["price"]
    body = await assert_problem(await client.post(BURGER, json=burger_order), 422)
    assert body["variable"] == "price"


INJECTIONS = [
    "Hi\r\nBcc: eve@evil.example",
    "Hi\nBcc: eve@evil.example",
    "Hi\rBcc: eve@evil.example",
    "Hi\r\n\r\nfake body",
    "Hi\x00there",
    "Hi\u2028Bcc: eve@evil.example",
    "Hi\u2029there",
    "Hi\x85there",
    "=?utf-8?q?=0A?=",
    "=?utf-8?q?Hi=0D=0ABcc=3A_eve=40evil=2Eexample?=",
    "=?utf-8?b?SGkKQmNjOiBldmVAZXZpbC5leGFtcGxl?=",
]


@pytest.mark.parametrize("field", ["subject", "to", "from"])
@pytest.mark.parametrize("value", INJECTIONS)
async def test_header_injection_is_422(
    client: QuartClient, burger_order: dict[str, Any], field: str, value: str
) -> None:
    burger_order[field] = value if field == "subject" else f"bob@example.com{value}"
    response = await client.post(BURGER, json=burger_order)
    assert response.status_code == 422, await response.get_data(as_text=True)
    await assert_problem(response, 422)


@pytest.mark.parametrize("value", ["Bob\r\nBcc: eve@evil.example", "Bob\x00", "Bob\u2028x"])
async def test_odd_characters_in_the_body_stay_in_the_body(
    client: QuartClient, burger_order: dict[str, Any], value: str
) -> None:
    burger_order["name"] = value
    response = await client.post(BURGER, json=burger_order)
    assert response.status_code == 200
    message = email.message_from_bytes(await response.get_data(), policy=policy.default)
    assert sorted(message.keys()) == sorted(
        [
            "Date",
            "From",
            "Subject",
            "To",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
            "Content-Transfer-Encoding",
        ]
    )
    assert "Bcc" not in message
    assert message["To"] == "bob@example.com"


@pytest.mark.parametrize(
    "to",
    [
        "bob@example.com, eve@evil.example",
        "bob@example.com; eve@evil.example",
        "undisclosed: bob@example.com, eve@evil.example;",
        '"Bob" <bob@example.com>, eve@evil.example',
    ],
)
async def test_a_value_cannot_add_recipients(
    client: QuartClient, burger_order: dict[str, Any], to: str
) -> None:
    burger_order["to"] = to
    response = await client.post(BURGER, json=burger_order)
    await assert_problem(response, 422)


@pytest.mark.parametrize(
    "address", ["not an address", "bob@", "@example.com", "bob@@example.com", "<bob>", ""]
)
async def test_invalid_address_is_422(
    client: QuartClient, burger_order: dict[str, Any], address: str
) -> None:
    burger_order["to"] = address
    await assert_problem(await client.post(BURGER, json=burger_order), 422)


async def test_a_subject_at_the_cap_is_folded(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    burger_order["subject"] = ("Burger " * 1429)[:4096]
    response = await client.post(BURGER, json=burger_order)
    assert response.status_code == 200
    data = await response.get_data()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = email.message_from_bytes(data, policy=policy.default)
    assert message["Subject"] == burger_order["subject"].strip()


async def test_a_four_thousand_character_word_subject_is_encoded(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    burger_order["subject"] = "x" * 4000
    response = await client.post(BURGER, json=burger_order)
    assert response.status_code == 200
    data = await response.get_data()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert email.message_from_bytes(data, policy=policy.default)["Subject"] == "x" * 4000


@pytest.mark.parametrize("subject", ["x" * 4097, "a " * 3000, "ä" * 2049])
async def test_a_subject_over_the_cap_is_422_naming_it(
    client: QuartClient, burger_order: dict[str, Any], subject: str
) -> None:
    burger_order["subject"] = subject
    body = await assert_problem(await client.post(BURGER, json=burger_order), 422)
    assert body["header"] == "Subject"
    assert "limits.max_header_bytes" in body["detail"]


async def test_template_syntax_error_is_422_with_line(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "broken.j2").write_text("From: a@example.com\nTo: {{ to }\n\nx\n")
    body = await assert_problem(await client.post("/v1/render/broken", json=burger_order), 422)
    assert body["line"] == 2


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__",
        "''.__class__.__mro__[1].__subclasses__()",
        "cycler.__init__.__globals__",
        "items.append(1)",
        "self._TemplateReference__context",
    ],
)
async def test_sandbox_escape_is_422(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any], expression: str
) -> None:
    (templates_dir / "escape.j2").write_text(
        f"From: a@example.com\nTo: b@example.com\nSubject: x\n\n{{{{ {expression} }}}}\n"
    )
    body = await assert_problem(await client.post("/v1/render/escape", json=burger_order), 422)
    assert body["type"].endswith("template-error")


async def test_header_block_without_colon_is_422(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "nocolon.j2").write_text("From a@example.com\nTo: b@example.com\n\nx\n")
    await assert_problem(await client.post("/v1/render/nocolon", json=burger_order), 422)


async def test_noncharacter_in_data_is_422(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    burger_order["name"] = "Bob\ufdd1"
    await assert_problem(await client.post(BURGER, json=burger_order), 422)
