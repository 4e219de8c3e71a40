"""POST /v1/render: the reference burger receipt, the JSON view, multipart, templates."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from quart import Quart
from quart.typing import TestClientProtocol as QuartClient

JSON = {"Content-Type": "application/json"}


def text_of(part: EmailMessage | None) -> str:
    """A text part's content with "\\n" line ends (the parser keeps the wire's CRLF)."""
    assert part is not None
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_burger_receipt_renders_to_a_valid_message(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    response = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert response.status_code == 200
    assert response.mimetype == "message/rfc822"
    data = await response.get_data()
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b""), "every line ends with CRLF"
    message = parse(data)
    assert message["From"] == "shopping@example-shop.com"
    assert message["To"] == "bob@example.com"
    assert message["Subject"] == "Your Burger order"
    assert parsedate_to_datetime(message["Date"]).tzinfo is not None
    assert message["Message-ID"].startswith("<")
    assert message["Message-ID"].endswith("@notifier.test>")
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"
    body = text_of(message)
    assert body.startswith("Hello Bob,\n")
    for line in ("- Cheeseburger (4.5 Euros)", "- Fries (2.0 Euros)", "- Root Beer (3.0 Euros)"):
        assert line in body.splitlines()
    assert body.rstrip().endswith("My Fictional Burger Place")


async def test_json_view_agrees_with_the_bytes(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    response = await client.post(
        "/v1/render/burger_receipt",
        json=burger_order,
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    view = await response.get_json()
    assert set(view) >= {"headers", "text", "html", "raw"}
    message = parse(view["raw"].encode("ascii"))
    assert view["headers"] == {name: str(value) for name, value in message.items()}
    assert view["headers"]["Subject"] == "Your Burger order"
    assert view["text"] == text_of(message)
    assert "- Fries (2.0 Euros)" in view["text"]
    assert view["html"] is None
    assert view["envelope"] == {"from": "shopping@example-shop.com", "to": ["bob@example.com"]}


async def test_a_given_date_is_kept(client: QuartClient, burger_order: dict[str, Any]) -> None:
    burger_order["date"] = "Tue, 24 Nov 2026 09:30:00 +0100"
    response = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert parse(await response.get_data())["Date"] == "Tue, 24 Nov 2026 09:30:00 +0100"


async def test_an_iso_date_becomes_an_rfc5322_date(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    burger_order["date"] = "2026-11-24T09:30:00+01:00"
    response = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert parse(await response.get_data())["Date"] == "Tue, 24 Nov 2026 09:30:00 +0100"


async def test_html_part_makes_multipart_alternative_with_escaped_values(
    client: QuartClient, templates_dir: Path
) -> None:
    import json

    order = json.loads((templates_dir / "order_shipped.example.json").read_text())
    order["customer_name"] = "Bob <b>&</b>"
    response = await client.post("/v1/render/order_shipped", json=order)
    assert response.status_code == 200
    message = parse(await response.get_data())
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert "Hello Bob <b>&</b>," in text_of(text)
    assert "Hello Bob &lt;b&gt;&amp;&lt;/b&gt;," in text_of(html)
    assert message["From"] == "Zoë's Coffee Roasters <orders@example-shop.com>"
    assert message["To"] == '"Bob <b>&</b>" <bob@example.com>'
    assert message["To"].addresses[0].display_name == "Bob <b>&</b>"
    assert "MIME-Version" not in text
    assert "MIME-Version" not in html


async def test_templates_are_listed_with_their_parts(client: QuartClient) -> None:
    response = await client.get("/v1/templates")
    assert response.status_code == 200
    listed = {entry["name"]: entry for entry in (await response.get_json())["templates"]}
    assert listed["burger_receipt"] == {
        "name": "burger_receipt",
        "html": False,
        "example": True,
        "locales": ["de"],
        "valid": True,
        "error": None,
    }
    assert listed["order_shipped"]["html"] is True


async def test_broken_template_is_listed_as_invalid_and_others_still_render(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "broken.j2").write_text("Subject: {{ oops\n\nbody\n")
    listed = {
        e["name"]: e for e in (await (await client.get("/v1/templates")).get_json())["templates"]
    }
    assert listed["broken"]["valid"] is False
    assert listed["broken"]["error"].startswith("broken.j2 line 3:")
    response = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert response.status_code == 200


async def test_edited_template_is_used_by_the_next_render(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    path = templates_dir / "burger_receipt.j2"
    first = await (await client.post("/v1/render/burger_receipt", json=burger_order)).get_data()
    assert b"Thank you for your business!" in first
    source = path.read_text().replace("Thank you for your business!", "Enjoy your meal!")
    _write_with_new_mtime(path, source)
    second = await (await client.post("/v1/render/burger_receipt", json=burger_order)).get_data()
    assert b"Enjoy your meal!" in second

    _write_with_new_mtime(path, source.replace("{% endfor %}", "{% endfor"))
    broken = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert broken.status_code == 422
    assert (await client.get("/healthz")).status_code == 200

    _write_with_new_mtime(path, source)
    fixed = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert fixed.status_code == 200


async def test_new_html_part_is_picked_up_without_restart(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    before = parse(
        await (await client.post("/v1/render/burger_receipt", json=burger_order)).get_data()
    )
    assert before.get_content_type() == "text/plain"
    (templates_dir / "burger_receipt.html.j2").write_text("<p>Hello {{ name }}</p>")
    after = parse(
        await (await client.post("/v1/render/burger_receipt", json=burger_order)).get_data()
    )
    assert after.get_content_type() == "multipart/alternative"


async def test_healthz(client: QuartClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert (await response.get_json()) == {"status": "ok"}


async def test_unexpected_error_is_a_problem_without_traceback(app: Quart) -> None:
    async def explode() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/explode", "explode", explode)
    response = await app.test_client().get("/explode")
    assert response.status_code == 500
    assert response.mimetype == "application/problem+json"
    body = await response.get_json()
    assert body["status"] == 500
    assert "secret internals" not in await response.get_data(as_text=True)
    assert "Traceback" not in await response.get_data(as_text=True)


def _write_with_new_mtime(path: Path, text: str) -> None:
    """Write ``text`` and make sure the file's mtime moves, even within one clock tick."""
    import os

    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))
