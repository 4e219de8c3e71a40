"""Clients that misbehave: hang-ups, bare LF, 8-bit and SMTPUTF8, oversize, many recipients."""

from __future__ import annotations

import smtplib

import aiosmtplib
import pytest

from tests.capture_helpers import RawSMTPClient, burger_receipt


def open_transaction(server, recipient: str = "bob@example.com") -> RawSMTPClient:
    client = RawSMTPClient(server.host, server.port)
    try:
        assert client.command("EHLO client.example").startswith("250")
        assert client.command("MAIL FROM:<a@example.com>").startswith("250")
        assert client.command(f"RCPT TO:<{recipient}>").startswith("250")
        assert client.command("DATA").startswith("354")
    except BaseException:
        client.close()
        raise
    return client


def assert_nothing_on_disk(server) -> None:
    assert server.messages == []
    assert list(server.store.directory.iterdir()) == []


def test_client_hanging_up_mid_data_leaves_nothing_behind(smtp_capture):
    with open_transaction(smtp_capture) as client:
        client.send_raw(b"Subject: half a message\r\n\r\nthe rest never comes")

    # A complete message after the hang-up is the one and only message stored.
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as polite:
        polite.sendmail("a@example.com", ["bob@example.com"], burger_receipt())
    (captured,) = smtp_capture.wait_for(1)
    assert captured.data == burger_receipt()
    assert len(list(smtp_capture.store.directory.iterdir())) == 2


def test_bare_lf_line_ends_are_stored_as_sent(smtp_capture):
    with open_transaction(smtp_capture) as client:
        client.send_raw(b"Subject: bare LF\n\nline one\nline two\r\n")
        reply = client.command(".")

    assert reply.startswith("250")
    (captured,) = smtp_capture.wait_for(1)
    assert captured.data == b"Subject: bare LF\n\nline one\nline two\r\n"
    assert captured.subject == "bare LF"


def test_bare_lf_dot_does_not_end_data(smtp_capture):
    # "<LF>.<LF>" is not the end of DATA; treating it so would allow SMTP smuggling.
    with open_transaction(smtp_capture) as client:
        client.send_raw(b"Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@example.com>\r\n")
        reply = client.command(".")
        noop = client.command("NOOP")

    assert reply.startswith("250")
    assert noop.startswith("250")
    (captured,) = smtp_capture.wait_for(1)
    assert b"\n.\nMAIL FROM:<evil@example.com>\r\n" in captured.data


def test_smtputf8_addresses_and_8bit_data_arrive_intact(smtp_capture):
    data = (
        "From: José <josé@exämple.com>\r\n"
        "To: zoë@例え.jp\r\n"
        "Subject: Grüße, your order\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Käsebrötchen, Pommes, Root Beer 🍔\r\n"
    ).encode()
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        client.sendmail(
            "josé@exämple.com", ["zoë@例え.jp"], data, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
        )

    (captured,) = smtp_capture.wait_for(1)
    assert captured.data == data
    assert captured.envelope_from == "josé@exämple.com"
    assert captured.envelope_to == ("zoë@例え.jp",)
    assert captured.text == "Käsebrötchen, Pommes, Root Beer 🍔\n"


def test_raw_8bit_data_without_declaring_it_is_kept_byte_for_byte(smtp_capture):
    with open_transaction(smtp_capture) as client:
        data = b"Subject: latin-1 \xe9t\xe9\r\n\r\ncaf\xe9 \xff\xfe\r\n"
        client.send_raw(data)
        reply = client.command(".")

    assert reply.startswith("250")
    assert smtp_capture.wait_for(1)[0].data == data


def test_oversize_declared_with_size_is_refused_at_mail_from(smtp_capture_factory):
    server = smtp_capture_factory(max_message_size=4096)

    with (
        smtplib.SMTP(server.host, server.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        client.sendmail("a@example.com", ["bob@example.com"], b"x" * 8192)
    assert refused.value.smtp_code == 552
    assert_nothing_on_disk(server)


def test_oversize_data_gets_552_after_data_and_nothing_is_stored(smtp_capture_factory):
    server = smtp_capture_factory(max_message_size=4096)
    with open_transaction(server) as client:
        client.send_raw(b"Subject: big\r\n\r\n" + (b"y" * 500 + b"\r\n") * 20)
        reply = client.command(".")
        # The session survives: a small message right after is accepted.
        assert client.command("MAIL FROM:<a@example.com>").startswith("250")
        assert client.command("RCPT TO:<bob@example.com>").startswith("250")
        assert client.command("DATA").startswith("354")
        client.send_raw(b"Subject: small\r\n\r\nok\r\n")
        small_reply = client.command(".")

    assert reply.startswith("552")
    assert small_reply.startswith("250")
    (captured,) = server.wait_for(1)
    assert captured.subject == "small"


def test_overlong_line_is_refused_and_not_stored(smtp_capture):
    with open_transaction(smtp_capture) as client:
        client.send_raw(b"Subject: long\r\n\r\n" + b"z" * 2000 + b"\r\n")
        reply = client.command(".")

    assert reply.startswith("500")
    assert_nothing_on_disk(smtp_capture)


async def test_many_recipients_are_all_in_the_envelope(smtp_capture):
    recipients = [f"user{number}@example.com" for number in range(250)]

    errors, _ = await aiosmtplib.send(
        burger_receipt(),
        sender="shopping@example-shop.com",
        recipients=recipients,
        hostname=smtp_capture.host,
        port=smtp_capture.port,
        start_tls=False,
        timeout=30,
    )

    assert errors == {}
    (captured,) = await smtp_capture.wait_for_async(1)
    assert list(captured.envelope_to) == recipients


def test_garbage_commands_get_errors_not_a_crash(smtp_capture):
    with RawSMTPClient(smtp_capture.host, smtp_capture.port) as client:
        assert client.command(b"\xff\xfe BOGUS").startswith("500")
        assert client.command("RCPT TO:<bob@example.com>").startswith("503")
        assert client.command("DATA").startswith("503")
        assert client.command("HELO client.example").startswith("250")
        assert client.command("MAIL FROM:<a@example.com> XYZZY=1").startswith("501")
    assert smtp_capture.messages == []


def test_a_store_that_cannot_write_answers_451_not_250(smtp_capture, caplog):
    # The directory vanishing under the server is the simplest real "disk" failure.
    directory = smtp_capture.store.directory
    directory.rmdir()

    with (
        smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPDataError) as failed,
    ):
        client.sendmail("a@example.com", ["bob@example.com"], burger_receipt())
    assert failed.value.smtp_code == 451
    assert smtp_capture.messages == []
    assert "capture session failed" in caplog.text
