"""DKIM signing: checked with dkimpy's verifier against a DNS stub built from the test's
own key (no network), end to end through render, the outbox and the relay, and at
start-up (bad keys stop it with one line that never shows the key)."""

from __future__ import annotations

import base64
import json
import re
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from notifier.dkim import DkimSigner, load_signer
from notifier.errors import SettingsError
from notifier.renderer import LOOP_CONTEXT_BYTES, Renderer
from notifier.settings import DkimSettings, Settings
from notifier.signals import OutboundMessage
from notifier.subscribers import Subscriber
from tests.conftest import MakeClient, finished, wait_for_status
from tests.test_cli import notifier

SELECTOR = "mail2026"
SHOP = "example-shop.com"


class Key:
    """An RSA key pair as the operator would have it: PEM text, and the DNS record."""

    def __init__(self, bits: int = 2048) -> None:
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture(scope="module")
def key() -> Key:
    return Key()


@pytest.fixture(scope="module")
def other_key() -> Key:
    return Key()


def dns_for(records: dict[str, Key]) -> Any:
    """dkimpy's ``dnsfunc``: the TXT record of ``<selector>._domainkey.<domain>``."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        for domain, key in records.items():
            if name.decode().rstrip(".") == f"{SELECTOR}._domainkey.{domain}":
                return key.record
        return None

    return lookup


def verifies(data: bytes, records: dict[str, Key]) -> bool:
    return bool(dkim.verify(data, dnsfunc=dns_for(records)))


def signature_tags(data: bytes) -> dict[str, str]:
    match = re.match(rb"DKIM-Signature: (.*?)\r\n(?![ \t])", data, re.DOTALL)
    assert match, data[:200]
    value = re.sub(r"\s+", "", match[1].decode())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def signer_for(*entries: tuple[str, Key]) -> DkimSigner:
    keys = [{"domain": d, "selector": SELECTOR, "private_key": k.pem} for d, k in entries]
    signer = load_signer(DkimSettings.model_validate({"keys": keys}))
    assert signer is not None
    return signer


@pytest.fixture
def dkim_settings(settings_data: dict[str, Any], key: Key, tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "dkim.pem").write_text(key.pem)
    settings_data["dkim"] = {
        "keys": [
            {"domain": SHOP, "selector": SELECTOR, "private_key_file": str(tmp_path / "dkim.pem")}
        ]
    }
    return settings_data


def renderer_for(settings_data: dict[str, Any], base_dir: Path) -> Renderer:
    return Renderer.from_settings(Settings.from_mapping(settings_data, base_dir=base_dir))


def test_non_ascii_subject_is_signed_and_verifies(
    dkim_settings: dict[str, Any], tmp_path: Path, key: Key, burger_order: dict[str, Any]
) -> None:
    renderer = renderer_for(dkim_settings, tmp_path)
    burger_order["subject"] = "Ihre Bestellung: Grüße aus der Küche 🍔"
    data = renderer.render("burger_receipt", burger_order).data
    assert data.startswith(b"DKIM-Signature: ")
    assert verifies(data, {SHOP: key})
    tags = signature_tags(data)
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["d"] == SHOP
    assert tags["s"] == SELECTOR
    signed = tags["h"].split(":")
    # Every header present is signed twice (over-signed); absent ones (Cc) not at all.
    for name in ("from", "to", "subject", "date", "message-id", "mime-version", "content-type"):
        assert signed.count(name) == 2, (name, signed)
    assert "cc" not in signed
    # The verifier is not a rubber stamp: another key, or a changed body, fails.
    assert not verifies(data, {SHOP: Key()})
    assert not verifies(data.replace(b"Cheeseburger", b"Cheeseburgers"), {SHOP: key})


def test_an_added_from_header_breaks_the_signature(
    dkim_settings: dict[str, Any], tmp_path: Path, key: Key, burger_order: dict[str, Any]
) -> None:
    data = renderer_for(dkim_settings, tmp_path).render("burger_receipt", burger_order).data
    head, _, body = data.partition(b"\r\n\r\n")
    forged = head + b"\r\nFrom: ceo@example-shop.com\r\n\r\n" + body
    assert verifies(data, {SHOP: key})
    assert not verifies(forged, {SHOP: key})


def test_multipart_alternative_with_html_verifies(
    dkim_settings: dict[str, Any], tmp_path: Path, key: Key
) -> None:
    renderer = renderer_for(dkim_settings, tmp_path)
    example = renderer.templates.example("order_shipped")
    assert example is not None
    data = renderer.render("order_shipped", example).data
    assert b"multipart/alternative" in data
    assert verifies(data, {SHOP: key})


def test_multipart_mixed_with_an_attachment_verifies(key: Key) -> None:
    message = EmailMessage()
    message["From"] = "Shop <orders@example-shop.com>"
    message["To"] = "bob@example.com"
    message["Subject"] = "Rechnung Nr. 42: Ihre Bestellung für März"
    message["Date"] = "Sat, 21 Nov 2026 12:00:00 +0000"
    message["Message-ID"] = "<invoice-42@example-shop.com>"
    message.set_content("Your invoice is attached.\n")
    message.add_alternative("<p>Your invoice is attached.</p>\n", subtype="html")
    message.add_attachment(
        bytes(range(256)) * 64, maintype="application", subtype="pdf", filename="Rechnung_ä.pdf"
    )
    data = message.as_bytes(policy=SMTP)
    assert b"multipart/mixed" in data
    signed = signer_for((SHOP, key)).sign(data)
    assert signed.endswith(data)
    assert verifies(signed, {SHOP: key})
    assert "content-type" in signature_tags(signed)["h"].split(":")


def test_a_long_folded_header_verifies_also_when_refolded(
    dkim_settings: dict[str, Any], tmp_path: Path, key: Key, burger_order: dict[str, Any]
) -> None:
    burger_order["subject"] = "Ihre Bestellung " + " ".join(f"Artikel-{n}-ä" for n in range(40))
    data = renderer_for(dkim_settings, tmp_path).render("burger_receipt", burger_order).data
    subject = re.search(rb"\r\nSubject: .*?\r\n(?![ \t])", data, re.DOTALL)
    assert subject is not None
    assert subject[0].count(b"\r\n ") >= 3, "the Subject should be folded"
    assert verifies(data, {SHOP: key})
    # relaxed/relaxed: a relay that unfolds and respaces the header keeps it valid.
    unfolded = subject[0][:-2].replace(b"\r\n ", b"   ") + b"\r\n"
    assert verifies(data.replace(subject[0], unfolded), {SHOP: key})


def test_only_a_from_domain_with_a_key_is_signed(key: Key, other_key: Key) -> None:
    signer = signer_for((SHOP, key), ("bücher.example", other_key))
    plain = b"From: a@elsewhere.example\r\nTo: b@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    assert signer.sign(plain) is plain
    # A subdomain is signed with its parent's key (DMARC's relaxed alignment).
    sub = b"From: a@Mail.Example-Shop.COM\r\nTo: b@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    signed = signer.sign(sub)
    assert signature_tags(signed)["d"] == SHOP
    assert verifies(signed, {SHOP: key})
    # An internationalised domain matches its ASCII form, either way it is written.
    idn = (
        b"From: =?utf-8?q?B=C3=BCcher?= <a@xn--bcher-kva.example>\r\nTo: b@example.com\r\n\r\nx\r\n"
    )
    signed = signer.sign(idn)
    assert signature_tags(signed)["d"] == "xn--bcher-kva.example"
    assert verifies(signed, {"xn--bcher-kva.example": other_key})


def test_the_key_never_shows_in_repr_or_pickles_to_render_processes(key: Key) -> None:
    import pickle

    signer = signer_for((SHOP, key))
    body = key.pem.splitlines()[1]
    assert body not in repr(signer)
    inline = {"domain": SHOP, "selector": SELECTOR, "private_key": key.pem}
    assert body not in repr(Settings.from_mapping({"dkim": {"keys": [inline]}}))
    copy = pickle.loads(pickle.dumps(signer))  # noqa: S301 (our own bytes)
    data = b"From: a@example-shop.com\r\nTo: b@example.com\r\nSubject: x\r\n\r\nhi\r\n"
    assert verifies(copy.sign(data), {SHOP: key})


async def test_renders_in_render_processes_are_signed_too(
    dkim_settings: dict[str, Any], tmp_path: Path, key: Key, burger_order: dict[str, Any]
) -> None:
    renderer = renderer_for(dkim_settings, tmp_path)
    try:
        # A context this large is rendered in a render process from the start.
        burger_order["padding"] = "x" * (LOOP_CONTEXT_BYTES + 1)
        composed = await renderer.render_async(
            "burger_receipt", burger_order, context_bytes=len(json.dumps(burger_order))
        )
        assert verifies(composed.data, {SHOP: key})
        # A small one is composed here and signed in a render process.
        del burger_order["padding"]
        composed = await renderer.render_async("burger_receipt", burger_order)
        assert verifies(composed.data, {SHOP: key})
    finally:
        renderer.close()


class Recorder:
    """A subscriber that keeps the bytes it is given (those loaded from the outbox)."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    async def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
        self.data.append(message.data)


FIXED_IDS = """\
Date: {{ date }}
Message-ID: {{ message_id }}
From: {{ from }}
To: {{ to }}
Subject: {{ subject }}

Hello {{ name }}, your order is on its way.
"""


async def test_rendered_stored_and_sent_bytes_are_the_same_signed_bytes(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    dkim_settings: dict[str, Any],
    smtp_capture: Any,
    templates_dir: Path,
    key: Key,
) -> None:
    from tests.test_send import with_smtp

    (templates_dir / "fixed.j2").write_text(FIXED_IDS)
    context = {
        "date": "Sat, 21 Nov 2026 12:00:00 +0000",
        "message_id": "<order-7@example-shop.com>",
        "from": "Küche <orders@example-shop.com>",
        "to": "bob@example.com",
        "subject": "Unterwegs: Ihre Bestellung",
        "name": "Bob",
    }
    recorder = Recorder()
    settings = {**delivery_settings, **dkim_settings}
    client = await serving(
        settings, subscribers=with_smtp(settings, Subscriber("recorder", recorder))
    )
    rendered = await (await client.post("/v1/render/fixed", json=context)).get_data()
    response = await client.post("/v1/send/fixed", json=context)
    assert response.status_code == 202
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    (stored,) = recorder.data
    assert captured.data == stored
    assert verifies(captured.data, {SHOP: key})
    assert verifies(rendered, {SHOP: key})
    # The render and the send were signed apart, so only the signing time (t=, in
    # seconds) and with it b= may differ; everything else is byte for byte the same.
    if rendered != stored:
        time_and_signature = re.compile(rb"(t=\d+|b=[A-Za-z0-9+/=\r\n\t ]+)")
        assert time_and_signature.sub(b"", rendered) == time_and_signature.sub(b"", stored)


async def test_a_send_with_attachments_is_signed_after_they_are_attached(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    dkim_settings: dict[str, Any],
    smtp_capture: Any,
    key: Key,
    burger_order: dict[str, Any],
) -> None:
    from tests.test_attachments import FORM, context_part, file_part, form_body, pdf_document

    settings = {**delivery_settings, **dkim_settings, "subscribers": ["smtp"]}
    client = await serving(settings)
    # Large enough to be attached in a thread: the signature must cover the final bytes.
    pdf, photo = pdf_document(), bytes(range(256)) * 1024
    body = form_body(
        [
            context_part(burger_order),
            file_part("Rechnung März.pdf", pdf),
            file_part("photo.bin", photo, "application/octet-stream"),
        ]
    )
    rendered = await client.post("/v1/render/burger_receipt", data=body, headers=FORM)
    assert rendered.status_code == 200
    assert verifies(await rendered.get_data(), {SHOP: key})
    response = await client.post("/v1/send/burger_receipt", data=body, headers=FORM)
    assert response.status_code == 202, await response.get_data(as_text=True)
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    assert captured.data.startswith(b"DKIM-Signature: ")
    assert b"multipart/mixed" in captured.data
    assert verifies(captured.data, {SHOP: key})


def test_check_shows_which_templates_would_be_signed(
    dkim_settings: dict[str, Any], tmp_path: Path, templates_dir: Path
) -> None:
    (templates_dir / "elsewhere.j2").write_text(
        "From: a@elsewhere.example\nTo: b@example.com\n\nhi"
    )
    (templates_dir / "elsewhere.example.json").write_text("{}")
    path = tmp_path / "settings.yml"
    path.write_text(json.dumps(dkim_settings))
    result = notifier("check", "--settings", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.decode().splitlines()
    signed = f"DKIM-signed d={SHOP} s={SELECTOR}"
    assert any(line.startswith("ok    burger_receipt:") and signed in line for line in lines)
    assert any(line.startswith("ok    order_shipped:") and signed in line for line in lines)
    (elsewhere,) = [line for line in lines if "elsewhere:" in line]
    assert "DKIM" not in elsewhere


def serve_error(tmp_path: Path, settings: dict[str, Any], env: dict[str, str] | None = None) -> str:
    import os
    import subprocess
    import sys

    path = tmp_path / "bad.yml"
    path.write_text(json.dumps(settings))
    result = subprocess.run(
        [sys.executable, "-m", "notifier", "serve", "--settings", str(path), "--port", "0"],
        capture_output=True,
        timeout=60,
        check=False,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")},
            **(env or {}),
        },
    )
    assert result.returncode == 2
    error = result.stderr.decode()
    assert "Traceback" not in error
    assert error.count("\n") == 1, error
    return error


def test_a_malformed_key_file_stops_serve_with_one_line_without_the_key(
    settings_data: dict[str, Any], tmp_path: Path
) -> None:
    garbage = "TOPSECRETKEYMATERIAL" + "A" * 200
    (tmp_path / "bad.pem").write_text(
        f"-----BEGIN PRIVATE KEY-----\n{garbage}\n-----END PRIVATE KEY-----\n"
    )
    settings_data["dkim"] = {
        "keys": [{"domain": SHOP, "selector": SELECTOR, "private_key_file": "bad.pem"}]
    }
    error = serve_error(tmp_path, settings_data)
    assert "dkim.keys[0]" in error
    assert "not an RSA private key" in error
    assert "TOPSECRET" not in error


def test_an_unreadable_key_file_stops_serve_with_one_line(
    settings_data: dict[str, Any], tmp_path: Path
) -> None:
    settings_data["dkim"] = {
        "keys": [{"domain": SHOP, "selector": SELECTOR, "private_key_file": "missing.pem"}]
    }
    error = serve_error(tmp_path, settings_data)
    assert "cannot read private_key_file" in error
    assert "missing.pem" in error


def test_a_malformed_inline_key_from_the_environment_stops_serve(
    settings_data: dict[str, Any], tmp_path: Path, key: Key
) -> None:
    # A real key cut short: it still looks like PEM.
    lines = key.pem.splitlines()
    broken = "\n".join([*lines[:5], lines[-1]])
    keys = [{"domain": SHOP, "selector": SELECTOR, "private_key": broken}]
    error = serve_error(tmp_path, settings_data, env={"NOTIFIER_DKIM__KEYS": json.dumps(keys)})
    assert "dkim.keys[0]" in error
    for line in lines[1:5]:
        assert line not in error


def test_a_short_or_wrongly_typed_key_setting_never_echoes_the_key(key: Key) -> None:
    body = key.pem.splitlines()[1]
    with pytest.raises(SettingsError) as raised:
        Settings.from_mapping({"dkim": {"keys": [{"domain": SHOP, "private_key": key.pem}]}})
    assert "selector" in raised.value.detail
    assert body not in raised.value.detail
    with pytest.raises(SettingsError) as raised:
        Settings.from_mapping({"dkim": {"keys": [{"domain": SHOP, "selector": 5, "x": key.pem}]}})
    assert body not in raised.value.detail


def test_a_domain_listed_twice_is_refused(key: Key) -> None:
    keys = [
        {"domain": d, "selector": SELECTOR, "private_key": key.pem}
        for d in (SHOP, "EXAMPLE-shop.com")
    ]
    with pytest.raises(SettingsError, match=r"dkim\.keys\[1\].*has a key already"):
        load_signer(DkimSettings.model_validate({"keys": keys}))


def test_the_key_is_not_in_the_logs_of_a_serving_process(
    dkim_settings: dict[str, Any], tmp_path: Path, key: Key, burger_order: dict[str, Any]
) -> None:
    from tests.servers import ServeProcess

    dkim_settings["log"] = {"level": "DEBUG"}
    dkim_settings["subscribers"] = ["log"]
    dkim_settings["dkim"]["keys"][0] = {
        "domain": SHOP,
        "selector": SELECTOR,
        "private_key": key.pem,
    }
    path = tmp_path / "settings.yml"
    path.write_text(json.dumps(dkim_settings))
    with ServeProcess.start(path) as served, served.client() as http:
        response = http.post("/v1/send/burger_receipt", json=burger_order)
        assert response.status_code == 202
        rendered = http.post("/v1/render/burger_receipt", json=burger_order)
        assert verifies(rendered.content, {SHOP: key})
    log = served.log_text()
    assert "message" in log
    for line in key.pem.splitlines()[1:-1]:
        assert line not in log
