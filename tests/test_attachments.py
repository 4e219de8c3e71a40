"""Attachments: ``multipart/form-data`` sends and renders, delivered to a real capture
server and read back with Python's ``email`` parser; every malformed body; the limits;
idempotency over the attachments; the round trip of any file name and any bytes."""

from __future__ import annotations

import asyncio
import email
import email.header
import email.policy
import functools
import json
import re
import time
import zlib
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart.typing import TestClientProtocol as QuartClient

from notifier.app import create_app
from notifier.compose import MAX_FILENAME_CHARS, Attachment, attach
from notifier.errors import InvalidAttachment
from notifier.settings import Settings
from tests.conftest import MakeClient, finished, wait_for_status
from tests.servers import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "test-boundary-7f3a"
FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
GERMAN = "Rechnung März 2026 \u2013 Bestellung.pdf"  # an en dash
JAPANESE = "請求書_2026年3月_ご注文ありがとうございます.pdf"
LONG = "Sehr geehrte Kundin \u2013 " * 8 + "請求書" * 20 + ".pdf"  # 240 characters

Part = tuple[str, bytes]  # (the part's header lines, its content)


def pdf_document(text: str = "Invoice 1001") -> bytes:
    """A small but real PDF: one page that shows ``text``, with a correct xref table."""
    stream = zlib.compress(f"BT /F1 24 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def context_part(context: Any, content_type: str | None = "application/json") -> Part:
    headers = 'Content-Disposition: form-data; name="context"; filename="order.json"'
    if content_type is not None:
        headers += f"\r\nContent-Type: {content_type}"
    raw = context if isinstance(context, bytes) else json.dumps(context).encode()
    return headers, raw


def file_part(filename: str, content: bytes, content_type: str | None = "application/pdf") -> Part:
    quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
    headers = f'Content-Disposition: form-data; name="attachment"; filename="{quoted}"'
    if content_type is not None:
        headers += f"\r\nContent-Type: {content_type}"
    return headers, content


def form_body(parts: Sequence[Part], *, boundary: str = BOUNDARY, close: bool = True) -> bytes:
    """A multipart/form-data body written by hand, so that tests can also write it wrong."""
    out = bytearray()
    for headers, content in parts:
        out += f"--{boundary}\r\n".encode() + headers.encode("utf-8", "surrogateescape")
        out += b"\r\n\r\n" + content + b"\r\n"
    if close:
        out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def attachments_of(message: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    found = []
    for part in message.iter_attachments():
        assert part["Content-Transfer-Encoding"] == "base64"
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        found.append((part.get_filename(), part.get_content_type(), content))
    return found


def assert_lines_within_limits(data: bytes) -> None:
    assert b"\n" not in data.replace(b"\r\n", b"")
    for line in data.split(b"\r\n"):
        assert len(line) <= 78, line
    assert data.isascii()


async def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, await response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = await response.get_json()
    assert body["status"] == status
    if slug is not None:
        assert body["type"] == f"urn:notifier:problem:{slug}"
    return body


@pytest.fixture
def attaching_settings(delivery_settings: dict[str, Any]) -> dict[str, Any]:
    delivery_settings["subscribers"] = ["smtp"]
    return delivery_settings


# -- delivered through a real capture server ------------------------------------------


async def test_pdf_attachment_arrives_byte_for_byte_after_the_text(
    serving: MakeClient, attaching_settings: dict[str, Any], smtp_capture: Any, burger_order: Any
) -> None:
    client = await serving(attaching_settings)
    pdf = pdf_document()
    body = form_body([context_part(burger_order), file_part("invoice.pdf", pdf)])
    response = await client.post("/v1/send/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    assert_lines_within_limits(captured.data)
    message = parse(captured.data)
    assert message.get_content_type() == "multipart/mixed"
    assert message["Subject"] == "Your Burger order"
    first, second = message.iter_parts()
    assert first.get_content_type() == "text/plain"
    assert "Hello Bob," in first.get_content()
    assert first.get_content_disposition() is None
    assert second.get_content_disposition() == "attachment"
    assert attachments_of(message) == [("invoice.pdf", "application/pdf", pdf)]
    # The text part is what the same request renders without the attachment.
    alone = parse(
        await (await client.post("/v1/render/burger_receipt", json=burger_order)).get_data()
    )
    assert first.get_content() == alone.get_content()
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"


async def test_ten_mib_at_the_default_limit_are_delivered_whole(
    serving: MakeClient, attaching_settings: dict[str, Any], smtp_capture: Any, burger_order: Any
) -> None:
    # limits.max_attachment_bytes is 10 MiB by default; the message is about 14 MiB, which
    # the capture server (like a relay) must take.
    content = bytes(range(256)) * (10 * 2**20 // 256)
    client = await serving(attaching_settings)
    body = form_body([context_part(burger_order), file_part("big.bin", content)])
    response = await client.post("/v1/send/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)
    (captured,) = await smtp_capture.wait_for_async(1, timeout=30)
    assert attachments_of(parse(captured.data)) == [("big.bin", "application/pdf", content)]
    status = await wait_for_status(client, response.headers["Location"], finished, timeout=30)
    assert status["status"] == "delivered"


@pytest.mark.parametrize("filename", [GERMAN, JAPANESE, LONG, 'quote " and semi;colon.txt'])
async def test_file_names_are_encoded_and_read_back(
    serving: MakeClient,
    attaching_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: Any,
    filename: str,
) -> None:
    client = await serving(attaching_settings)
    body = form_body([context_part(burger_order), file_part(filename, b"%PDF-1.7 tiny")])
    response = await client.post("/v1/send/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    assert_lines_within_limits(captured.data)
    message = parse(captured.data)
    assert attachments_of(message) == [(filename, "application/pdf", b"%PDF-1.7 tiny")]
    (part,) = message.iter_attachments()
    # Clients that only read Content-Type's name (RFC 2047 there) find the name too.
    raw_name = part.get_param("name")
    assert isinstance(raw_name, str)
    assert str(email.header.make_header(email.header.decode_header(raw_name))) == filename
    if not filename.isascii():
        assert b"filename*" in captured.data  # RFC 2231


async def test_twenty_attachments_keep_their_order_names_and_bytes(
    serving: MakeClient, attaching_settings: dict[str, Any], smtp_capture: Any, burger_order: Any
) -> None:
    client = await serving(attaching_settings)
    files = [(f"file-{number:02}.bin", bytes([number]) * (number * 100)) for number in range(20)]
    parts = [context_part(burger_order)]
    parts += [file_part(name, content, "application/octet-stream") for name, content in files]
    response = await client.post("/v1/send/burger_receipt", data=form_body(parts), headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    message = parse(captured.data)
    assert attachments_of(message) == [
        (name, "application/octet-stream", content) for name, content in files
    ]


async def test_html_template_keeps_its_alternative_and_images_as_the_first_part(
    serving: MakeClient, attaching_settings: dict[str, Any], smtp_capture: Any
) -> None:
    client = await serving(attaching_settings)
    order = json.loads((ROOT / "templates" / "order_shipped.example.json").read_text())
    pdf = pdf_document("Delivery note")
    body = form_body([context_part(order), file_part("note.pdf", pdf)])
    response = await client.post("/v1/send/order_shipped", data=body, headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    message = parse(captured.data)
    assert message.get_content_type() == "multipart/mixed"
    first = next(message.iter_parts())
    assert first.get_content_type() == "multipart/alternative"
    text, related = first.iter_parts()
    assert text.get_content_type() == "text/plain"
    # order_shipped shows the shop's logo inline: its HTML and the image stay together.
    assert related.get_content_type() == "multipart/related"
    assert [part.get_content_type() for part in related.iter_parts()] == [
        "text/html",
        "image/png",
    ]
    assert message.get_body(preferencelist=("html",)) is not None
    assert attachments_of(message) == [("note.pdf", "application/pdf", pdf)]


async def test_bytes_that_look_like_the_boundary_stay_in_the_file(
    client: QuartClient, burger_order: Any
) -> None:
    # Inside a file, the boundary counts only after a line break and before another (or
    # "--"): every near miss is the file's own content.
    tricky = (
        b"".join(
            [
                f"--{BOUNDARY}x\r\n".encode(),
                f"\r\n--{BOUNDARY}x".encode(),
                f"\n-{BOUNDARY}\r\n".encode(),
                b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n",
                b"\r" * 1000,
                b"\n" * 1000,
            ]
        )
        * 200
    )
    body = form_body([context_part(burger_order), file_part("tricky.bin", tricky)])
    response = await client.post("/v1/render/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert attachments_of(parse(await response.get_data())) == [
        ("tricky.bin", "application/pdf", tricky)
    ]


async def test_many_tiny_parts_are_refused_at_the_limit(
    client: QuartClient, burger_order: Any
) -> None:
    # 50,000 parts in 6 MB: refused once the 101st file starts, not after reading all.
    parts = [context_part(burger_order)] + [file_part("a", b"")] * 50_000
    body = form_body(parts)
    assert len(body) < 10 * 2**20
    problem = await assert_problem(
        await client.post("/v1/render/burger_receipt", data=body, headers=FORM),
        413,
        "payload-too-large",
    )
    assert problem["limit"] == "limits.max_attachments"


async def test_attachment_without_content_type_is_octet_stream_and_text_keeps_charset(
    client: QuartClient, burger_order: Any
) -> None:
    parts = [
        context_part(burger_order, content_type=None),
        file_part("data.bin", b"\x00\x01", content_type=None),
        file_part("notes.txt", "Grüße\n".encode(), content_type="text/plain; charset=UTF-8"),
        file_part("page.html", b"<p>hi</p>", content_type="text/html"),
    ]
    response = await client.post("/v1/render/burger_receipt", data=form_body(parts), headers=FORM)
    assert response.status_code == 200, await response.get_data(as_text=True)
    message = parse(await response.get_data())
    assert attachments_of(message) == [
        ("data.bin", "application/octet-stream", b"\x00\x01"),
        ("notes.txt", "text/plain", "Grüße\n".encode()),
        ("page.html", "text/html", b"<p>hi</p>"),
    ]
    notes = list(message.iter_attachments())[1]
    assert notes.get_content_charset() == "utf-8"
    # An HTML attachment is not the message's HTML body.
    assert message.get_body(preferencelist=("html",)) is None


async def test_multipart_without_attachments_is_the_plain_message(
    client: QuartClient, burger_order: Any
) -> None:
    body = form_body([context_part(burger_order)])
    response = await client.post(
        "/v1/render/burger_receipt", data=body, headers={**FORM, "Accept": "application/json"}
    )
    view = await response.get_json()
    assert view["headers"]["Content-Type"] == 'text/plain; charset="utf-8"'
    assert view["attachments"] == []


async def test_render_json_view_lists_attachments_without_their_bytes(
    client: QuartClient, burger_order: Any
) -> None:
    pdf = pdf_document()
    parts = [context_part(burger_order), file_part(GERMAN, pdf), file_part("empty.txt", b"")]
    response = await client.post(
        "/v1/render/burger_receipt",
        data=form_body(parts),
        headers={**FORM, "Accept": "application/json"},
    )
    assert response.status_code == 200
    view = await response.get_json()
    assert view["attachments"] == [
        {"filename": GERMAN, "content_type": "application/pdf", "size": len(pdf)},
        {"filename": "empty.txt", "content_type": "application/pdf", "size": 0},
    ]
    assert view["text"].startswith("Hello Bob,")
    assert view["headers"]["Content-Type"].startswith("multipart/mixed; boundary=")
    assert set(view) == {"headers", "text", "html", "raw", "attachments", "envelope"}


async def test_render_json_view_of_ten_mib_keeps_the_event_loop_free(
    client: QuartClient, burger_order: Any
) -> None:
    # Reading a 14 MiB message back for the JSON view takes the email package about half
    # a second: on the event loop, every other request would wait that long.
    content = bytes(range(256)) * (10 * 1024 * 4)
    body = form_body([context_part(burger_order), file_part("big.bin", content)])
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    try:
        response = await client.post(
            "/v1/render/burger_receipt", data=body, headers={**FORM, "Accept": "application/json"}
        )
    finally:
        beating.cancel()
    assert response.status_code == 200
    view = await response.get_json()
    assert view["attachments"] == [
        {"filename": "big.bin", "content_type": "application/pdf", "size": len(content)}
    ]
    assert max(gaps) < 0.3, f"the event loop stopped for {max(gaps):.2f} s"


# -- limits ---------------------------------------------------------------------------


@pytest.fixture
def small_limits(settings_data: dict[str, Any]) -> dict[str, Any]:
    settings_data["limits"].update(max_attachment_bytes=1000, max_attachments=3)
    return settings_data


async def test_attachments_at_the_limit_pass_and_one_byte_over_is_413(
    serving: MakeClient, small_limits: dict[str, Any], burger_order: Any
) -> None:
    client = await serving(small_limits)
    at_limit = [file_part("a.bin", b"a" * 600), file_part("b.bin", b"b" * 400)]
    body = form_body([context_part(burger_order), *at_limit])
    response = await client.post("/v1/send/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)

    over = [file_part("a.bin", b"a" * 600), file_part("b.bin", b"b" * 401)]
    body = form_body([context_part(burger_order), *over])
    for route in ("/v1/send/burger_receipt", "/v1/render/burger_receipt"):
        problem = await assert_problem(
            await client.post(route, data=body, headers=FORM), 413, "payload-too-large"
        )
        assert problem["limit"] == "limits.max_attachment_bytes"


async def test_more_attachments_than_allowed_is_413(
    small_limits: dict[str, Any], burger_order: Any
) -> None:
    client = create_app(Settings.from_mapping(small_limits)).test_client()
    parts = [context_part(burger_order)] + [file_part(f"{n}.txt", b"x") for n in range(4)]
    problem = await assert_problem(
        await client.post("/v1/render/burger_receipt", data=form_body(parts), headers=FORM),
        413,
        "payload-too-large",
    )
    assert problem["limit"] == "limits.max_attachments"
    ok = await client.post("/v1/render/burger_receipt", data=form_body(parts[:4]), headers=FORM)
    assert ok.status_code == 200


async def test_context_part_is_capped_by_max_body_bytes(
    client: QuartClient, burger_order: Any
) -> None:
    # The test settings cap JSON bodies at 64 KiB; the attachments' own cap is 10 MiB.
    big = {**burger_order, "padding": "x" * (64 * 1024)}
    body = form_body([context_part(big)])
    problem = await assert_problem(
        await client.post("/v1/render/burger_receipt", data=body, headers=FORM),
        413,
        "payload-too-large",
    )
    assert problem["limit"] == "limits.max_body_bytes"


async def test_multipart_body_may_exceed_max_body_bytes_but_json_may_not(
    client: QuartClient, burger_order: Any
) -> None:
    # 200 KiB of attachment over a 64 KiB max_body_bytes: fine as a file...
    body = form_body([context_part(burger_order), file_part("big.bin", b"z" * 200 * 1024)])
    response = await client.post("/v1/render/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 200
    # ...while a JSON body keeps its own limit, and so does a form sent anywhere else.
    big_json = json.dumps({**burger_order, "padding": "x" * 200 * 1024})
    response = await client.post(
        "/v1/render/burger_receipt", data=big_json, headers={"Content-Type": "application/json"}
    )
    await assert_problem(response, 413)
    response = await client.post("/v1/messages/x/retry", data=body, headers=FORM)
    assert response.status_code in (404, 413)


async def test_declared_length_over_the_multipart_limit_is_413_before_reading(
    client: QuartClient, burger_order: Any
) -> None:
    body = form_body([context_part(burger_order), file_part("big.bin", b"z" * (11 << 20))])
    problem = await assert_problem(
        await client.post("/v1/render/burger_receipt", data=body, headers=FORM),
        413,
        "payload-too-large",
    )
    assert "limits.max_attachment_bytes" in problem["detail"]


# -- malformed requests ---------------------------------------------------------------


def _order() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (ROOT / "templates" / "burger_receipt.example.json").read_text()
    )
    return data


PDF = b"%PDF-1.7 x"
GOOD_FILE = file_part("invoice.pdf", PDF)

BAD_BODIES: dict[str, tuple[bytes, dict[str, str], int, str]] = {
    "missing context": (form_body([GOOD_FILE]), FORM, 400, "invalid-json"),
    "context not JSON": (form_body([context_part(b"{nope")]), FORM, 400, "invalid-json"),
    "context a JSON array": (form_body([context_part([1, 2])]), FORM, 400, "invalid-json"),
    "context with a lone surrogate": (
        form_body([context_part(b'{"name": "\\ud800"}')]),
        FORM,
        400,
        "invalid-json",
    ),
    "context not UTF-8": (form_body([context_part(b'{"a": "\xff"}')]), FORM, 400, "invalid-json"),
    "context twice": (
        form_body([context_part(_order()), context_part(_order())]),
        FORM,
        400,
        "invalid-multipart",
    ),
    "context of another type": (
        form_body([context_part(_order(), "image/png")]),
        FORM,
        415,
        "unsupported-media-type",
    ),
    "file name with a path": (
        form_body([context_part(_order()), file_part("../../etc/passwd", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name with a Windows path": (
        form_body([context_part(_order()), file_part("C:\\Users\\bob\\invoice.pdf", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name with CR": (
        form_body([context_part(_order()), file_part("a\rb.pdf", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name with LF": (
        form_body([context_part(_order()), file_part("a\nb.pdf", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name with NUL": (
        form_body([context_part(_order()), file_part("a\x00b.pdf", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name with a right-to-left override": (
        form_body([context_part(_order()), file_part("invoice\u202efdp.exe", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name decoded with replacement characters": (
        form_body([context_part(_order()), file_part("\ufffd\ufffd.pdf", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name with an escape character": (
        form_body([context_part(_order()), file_part("a\x1bb.pdf", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "empty file name": (
        form_body([context_part(_order()), file_part("", PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name too long": (
        form_body([context_part(_order()), file_part("x" * (MAX_FILENAME_CHARS + 1), PDF)]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "attachment without a file name": (
        form_body(
            [context_part(_order()), ('Content-Disposition: form-data; name="attachment"', PDF)]
        ),
        FORM,
        422,
        "invalid-attachment",
    ),
    "attachment of a multipart type": (
        form_body([context_part(_order()), file_part("a.eml", PDF, "multipart/mixed")]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "attachment with a bad content type": (
        form_body([context_part(_order()), file_part("a.pdf", PDF, "pdf")]),
        FORM,
        422,
        "invalid-attachment",
    ),
    "file name not UTF-8": (
        form_body(
            [
                context_part(_order()),
                (
                    'Content-Disposition: form-data; name="attachment"; filename="r\udce4.pdf"',
                    PDF,
                ),
            ]
        ),
        FORM,
        400,
        "invalid-multipart",
    ),
    "part without a name": (
        form_body([context_part(_order()), ('Content-Disposition: form-data; filename="a"', PDF)]),
        FORM,
        400,
        "invalid-multipart",
    ),
    "part without Content-Disposition": (
        form_body([context_part(_order()), ("Content-Type: application/pdf", PDF)]),
        FORM,
        400,
        "invalid-multipart",
    ),
    "unknown part name": (
        form_body([context_part(_order()), ('Content-Disposition: form-data; name="files"', PDF)]),
        FORM,
        400,
        "invalid-multipart",
    ),
    "part encoded in base64": (
        form_body(
            [
                context_part(_order()),
                (
                    'Content-Disposition: form-data; name="attachment"; filename="a.pdf"\r\n'
                    "Content-Transfer-Encoding: base64",
                    b"JVBERi0=",
                ),
            ]
        ),
        FORM,
        400,
        "invalid-multipart",
    ),
    "no boundary": (
        form_body([context_part(_order())]),
        {"Content-Type": "multipart/form-data"},
        400,
        "invalid-multipart",
    ),
    "boundary too long": (
        form_body([context_part(_order())], boundary="b" * 71),
        {"Content-Type": "multipart/form-data; boundary=" + "b" * 71},
        400,
        "invalid-multipart",
    ),
    "another boundary than the body's": (
        form_body([context_part(_order())]),
        {"Content-Type": "multipart/form-data; boundary=other"},
        400,
        "invalid-multipart",
    ),
    "no closing boundary": (
        form_body([context_part(_order()), GOOD_FILE], close=False),
        FORM,
        400,
        "invalid-multipart",
    ),
    "cut short inside a file": (
        form_body([context_part(_order()), GOOD_FILE])[:-40],
        FORM,
        400,
        "invalid-multipart",
    ),
    "empty body": (b"", FORM, 400, "invalid-multipart"),
    "giant part header": (
        form_body([context_part(_order()), (f"X-Padding: {'p' * 20_000}\r\n" + GOOD_FILE[0], PDF)]),
        FORM,
        400,
        "invalid-multipart",
    ),
    "giant preamble": (b"x" * 20_000 + form_body([context_part(_order())]), FORM, 400, ""),
    "too many parts": (
        form_body([context_part(_order())] + [file_part(f"{n}", b"") for n in range(101)]),
        FORM,
        413,
        "payload-too-large",
    ),
    "a form that is not multipart": (
        b"context=%7B%7D",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported-media-type",
    ),
    "multipart/mixed instead of form-data": (
        form_body([context_part(_order())]),
        {"Content-Type": f"multipart/mixed; boundary={BOUNDARY}"},
        415,
        "unsupported-media-type",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
@pytest.mark.parametrize("route", ["/v1/render/burger_receipt", "/v1/send/burger_receipt"])
async def test_malformed_multipart_is_a_problem_and_nothing_is_stored(
    serving: MakeClient, settings_data: dict[str, Any], route: str, case: str
) -> None:
    body, headers, status, slug = BAD_BODIES[case]
    client = await serving(settings_data)
    response = await client.post(route, data=body, headers=headers)
    problem = await assert_problem(response, status, slug or None)
    assert problem["detail"]
    for state in ("queued", "sending", "delivered", "failed"):
        listed = await (await client.get(f"/v1/messages?status={state}")).get_json()
        assert listed["messages"] == []


async def test_invalid_file_name_problem_says_which_attachment(client: QuartClient) -> None:
    parts = [context_part(_order()), GOOD_FILE, file_part("a/b.pdf", PDF)]
    response = await client.post("/v1/render/burger_receipt", data=form_body(parts), headers=FORM)
    problem = await assert_problem(response, 422, "invalid-attachment")
    assert problem["index"] == 1
    assert problem["filename"] == "a/b.pdf"


# -- idempotency ----------------------------------------------------------------------


async def test_idempotency_covers_the_attachments(
    serving: MakeClient, settings_data: dict[str, Any], burger_order: Any
) -> None:
    client = await serving(settings_data)

    async def send(key: str, *files: Part) -> Any:
        body = form_body([context_part(burger_order), *files])
        return await client.post(
            "/v1/send/burger_receipt", data=body, headers={**FORM, "Idempotency-Key": key}
        )

    first = await send("order-1", file_part("invoice.pdf", PDF))
    assert first.status_code == 202
    again = await send("order-1", file_part("invoice.pdf", PDF))
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["id"] == (await first.get_json())["id"]

    for changed in (
        [file_part("invoice.pdf", PDF + b" ")],  # other bytes
        [file_part("invoice2.pdf", PDF)],  # other name
        [file_part("invoice.pdf", PDF, "application/octet-stream")],  # other type
        [file_part("invoice.pdf", PDF), file_part("invoice.pdf", PDF)],  # one more
        [],  # none
    ):
        await assert_problem(await send("order-1", *changed), 422, "idempotency-key-reused")

    # Without attachments, a form is the same request as the JSON body.
    plain = await client.post(
        "/v1/send/burger_receipt", json=burger_order, headers={"Idempotency-Key": "order-2"}
    )
    as_form = await send("order-2")
    assert as_form.headers["Idempotent-Replayed"] == "true"
    assert (await as_form.get_json())["id"] == (await plain.get_json())["id"]


# -- compose: attach() ----------------------------------------------------------------


def test_attach_moves_the_content_headers_into_the_first_part() -> None:
    single = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Hi\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
        b"MIME-Version: 1.0\r\n\r\nHello\r\n"
    )
    data = attach(single, [Attachment("a.txt", "text/plain", b"x")], boundary="B")
    assert data == (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Hi\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b'--B\r\nContent-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
        b"\r\nHello\r\n"
        b'\r\n--B\r\nContent-Type: text/plain;\r\n name="a.txt"\r\n'
        b'Content-Disposition: attachment;\r\n filename="a.txt"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\neA==\r\n"
        b"\r\n--B--\r\n"
    )
    assert attach(single, []) is single
    with pytest.raises(ValueError, match="boundary"):
        attach(single.replace(b"Hello", b"--Bye"), [Attachment("a.txt", "", b"")], boundary="B")


def test_base64_lines_are_76_characters_with_crlf() -> None:
    content = bytes(range(256)) * 5000
    data = attach(
        b"To: b@example.com\r\nContent-Type: text/plain\r\n\r\nx\r\n",
        [Attachment("a.bin", "", content)],
    )
    message = parse(data)
    (part,) = message.iter_attachments()
    lines = part.get_payload().split("\n")
    assert {len(line.rstrip("\r")) for line in lines[:-2]} == {76}
    assert part.get_payload(decode=True) == content


@pytest.mark.parametrize(
    ("filename", "problem"),
    [
        ("", "needs a file name"),
        (" \u3000 ", "needs a file name"),
        (".", "not a path"),
        ("..", "not a path"),
        ("a/b", "not a path"),
        ("a\\b", "not a path"),
        ("a\u2028b", "control character"),
        ("a\x85b", "control character"),
        ("a\ud800b", "control character"),
    ],
)
def test_unusable_file_names_are_refused(filename: str, problem: str) -> None:
    with pytest.raises(InvalidAttachment, match=problem):
        Attachment(filename, "", b"")


# -- property: any file name and any bytes survive --------------------------------------

# Any character a file name may hold: not controls, surrogates, path separators, line
# separators, bidirectional controls or U+FFFD (refused, see the test after next).
_REFUSED_IN_NAMES = "/\\\u2028\u2029\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
_NAME_CHARACTERS = st.characters(
    blacklist_categories=("Cc", "Cs"),
    blacklist_characters=_REFUSED_IN_NAMES + "\u2066\u2067\u2068\u2069\ufffd",
)
_MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: Hi\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n'
    b"Hello\r\n"
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(
        st.tuples(
            st.text(_NAME_CHARACTERS, min_size=1, max_size=MAX_FILENAME_CHARS).filter(
                lambda name: name.strip() not in ("", ".", "..")
            ),
            st.binary(max_size=2000),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_file_name_and_bytes_survive_the_round_trip(files: list[tuple[str, bytes]]) -> None:
    data = attach(_MESSAGE, [Attachment(name, "", content) for name, content in files])
    assert_lines_within_limits(data)
    message = parse(data)
    assert not message.defects
    assert next(message.iter_parts()).get_content() == "Hello\r\n"
    assert attachments_of(message) == [
        (name.strip(), "application/octet-stream", content) for name, content in files
    ]


@given(
    name=st.text(min_size=1, max_size=40).filter(
        lambda name: (
            re.search(
                "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029"
                "\u2066-\u2069\ud800-\udfff\ufffd/\\\\]",
                name,
            )
            is not None
        )
    )
)
def test_file_names_with_control_characters_or_paths_are_refused(name: str) -> None:
    with pytest.raises(InvalidAttachment):
        Attachment(name, "", b"")


_VALID_FORM = form_body(
    [context_part(_order()), file_part(GERMAN, b"%PDF-1.7\r\n--x\r\n"), file_part("b", b"")]
)
_NEAR_MISSES = st.sampled_from(
    [b"\r\n", b"\r", b"\n", b"--", f"--{BOUNDARY}".encode(), b'"', b";", b":", b"\x00", b"\xff"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(_VALID_FORM)),
            st.integers(0, 8),
            _NEAR_MISSES | st.binary(max_size=8),
        ),
        min_size=1,
        max_size=4,
    )
)
async def test_a_damaged_form_is_answered_with_a_problem_never_a_500(
    edits: list[tuple[int, int, bytes]],
) -> None:
    body = bytearray(_VALID_FORM)
    for position, removed, inserted in edits:
        body[position : position + removed] = inserted
    client = _fuzz_app().test_client()
    response = await client.post("/v1/render/burger_receipt", data=bytes(body), headers=FORM)
    assert response.status_code in (200, 400, 413, 415, 422), await response.get_data()
    if response.status_code != 200:
        assert response.headers["Content-Type"] == "application/problem+json"


@functools.cache
def _fuzz_app() -> Any:
    return create_app(
        Settings.from_mapping(
            {
                "templates": {"dir": str(ROOT / "templates")},
                "outbox": {"path": "unused.sqlite3"},
                "limits": {"allowed_senders": ["*"]},
            }
        )
    )


# -- end to end -----------------------------------------------------------------------


def test_serve_sends_a_pdf_with_httpx_multipart(
    settings_file: Path, settings_data: dict[str, Any], smtp_capture: Any
) -> None:
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port}
    settings_data["subscribers"] = ["smtp"]
    settings_file.write_text(json.dumps(settings_data), encoding="utf-8")
    order = (ROOT / "templates" / "burger_receipt.example.json").read_bytes()
    pdf = pdf_document()
    process = ServeProcess.start(settings_file)
    try:
        with process.client() as http:
            response = http.post(
                "/v1/send/burger_receipt",
                files=[
                    ("context", ("order.json", order, "application/json")),
                    ("attachment", (GERMAN, pdf, "application/pdf")),
                ],
            )
            assert response.status_code == 202, response.text
        (captured,) = smtp_capture.wait_for(1, timeout=10)
    finally:
        process.stop()
    assert attachments_of(parse(captured.data)) == [(GERMAN, "application/pdf", pdf)]
