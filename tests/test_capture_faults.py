"""Fault injection, observed by real SMTP clients; and TLS on the capture server."""

from __future__ import annotations

import smtplib
import ssl
import time
from pathlib import Path

import aiosmtplib
import httpx
import pytest
import trustme

from notifier.capture import BackgroundCaptureServer, InvalidFault
from notifier.capture.faults import parse_rule_spec
from tests.capture_helpers import burger_receipt


async def send(server, *recipients: str, timeout: float = 10, **options) -> tuple[dict, str]:
    return await aiosmtplib.send(
        burger_receipt(),
        sender="shopping@example-shop.com",
        recipients=list(recipients),
        hostname=server.host,
        port=server.port,
        timeout=timeout,
        **{"start_tls": False, **options},
    )


@pytest.mark.parametrize("code", [421, 451, 452])
def test_fail_4xx_tag_refuses_the_recipient_with_a_transient_reply(smtp_capture, code: int):
    with (
        smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client,
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
    ):
        client.sendmail("a@example.com", [f"fail-{code}@example.com"], burger_receipt())
    reply_code, reply_text = refused.value.recipients[f"fail-{code}@example.com"]
    assert reply_code == code
    assert b"Injected failure" in reply_text
    assert smtp_capture.messages == []


async def test_fail_550_tag_is_a_permanent_refusal(smtp_capture):
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(smtp_capture, "fail-550@example.com")
    assert refused.value.recipients[0].code == 550
    assert smtp_capture.messages == []


async def test_plus_tag_fails_only_that_recipient_and_the_rest_is_delivered(smtp_capture):
    errors, _ = await send(smtp_capture, "bob+fail-550@example.com", "carol@example.com")

    assert errors["bob+fail-550@example.com"].code == 550
    (captured,) = await smtp_capture.wait_for_async(1)
    assert captured.envelope_to == ("carol@example.com",)


def test_fail_data_tag_answers_the_end_of_data_and_stores_nothing(smtp_capture):
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as failed:
            client.sendmail("a@example.com", ["fail-data-554@example.com"], burger_receipt())
        assert failed.value.smtp_code == 554
        # The session goes on: the next message on the same connection is accepted.
        client.sendmail("a@example.com", ["bob@example.com"], burger_receipt())
    (captured,) = smtp_capture.wait_for(1)
    assert captured.envelope_to == ("bob@example.com",)


async def test_drop_data_closes_the_connection_before_replying(smtp_capture):
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(smtp_capture, "drop-data@example.com")
    assert smtp_capture.messages == []

    # The server itself is fine afterwards.
    await send(smtp_capture, "bob@example.com")
    assert len(await smtp_capture.wait_for_async(1)) == 1


async def test_delay_holds_the_reply_past_a_short_client_timeout(smtp_capture):
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await send(smtp_capture, "delay-3@example.com", timeout=0.5)


async def test_delay_then_accepts(smtp_capture):
    started = time.monotonic()
    errors, _ = await send(smtp_capture, "bob+delay-0.5@example.com")
    elapsed = time.monotonic() - started

    assert errors == {}
    assert elapsed >= 0.5
    assert len(await smtp_capture.wait_for_async(1)) == 1


async def test_rule_with_times_fails_the_first_attempts_then_accepts(smtp_capture):
    smtp_capture.faults.add("*@flaky.example", "fail-451", times=2)

    for _attempt in range(2):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(smtp_capture, "bob@flaky.example")
        assert refused.value.recipients[0].code == 451
    errors, _ = await send(smtp_capture, "bob@flaky.example")

    assert errors == {}
    assert len(await smtp_capture.wait_for_async(1)) == 1
    assert len(smtp_capture.faults) == 0  # spent rules go away


async def test_rule_patterns_are_case_insensitive_globs(smtp_capture):
    smtp_capture.faults.add("ALERTS-*@Example.com", "fail-data-451")

    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
        await send(smtp_capture, "alerts-ops@example.com")
    assert failed.value.code == 451
    errors, _ = await send(smtp_capture, "bob@example.com")
    assert errors == {}


async def test_address_tags_can_be_switched_off(smtp_capture_factory):
    server = smtp_capture_factory(address_faults=False)

    errors, _ = await send(server, "fail-550@example.com")

    assert errors == {}
    assert (await server.wait_for_async(1))[0].envelope_to == ("fail-550@example.com",)


def test_rules_added_over_http_apply_to_smtp(tmp_path: Path):
    with BackgroundCaptureServer(tmp_path, http_port=0) as server:
        assert server.http_url is not None
        created = httpx.post(
            f"{server.http_url}/api/faults",
            json={"pattern": "bob@example.com", "action": "fail-452", "times": 1},
            timeout=10,
        )
        assert created.status_code == 201

        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
                client.sendmail("a@example.com", ["bob@example.com"], burger_receipt())
            assert refused.value.recipients["bob@example.com"][0] == 452
            client.sendmail("a@example.com", ["bob@example.com"], burger_receipt())
        assert len(server.wait_for(1)) == 1


def test_command_line_fault_specs_parse():
    assert parse_rule_spec("*@flaky.test=fail-451*2") == ("*@flaky.test", "fail-451", 2)
    assert parse_rule_spec("slow@x.test=delay-1.5") == ("slow@x.test", "delay-1.5", None)
    for bad in ("no-equals", "=fail-451", "*@x=explode", "*@x=fail-451*many", "*@x=fail-250"):
        with pytest.raises(InvalidFault):
            parse_rule_spec(bad)


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def client_tls(certificate_authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certificate_authority.configure_trust(context)
    return context


async def test_starttls_with_a_given_certificate(smtp_capture_factory, server_tls, client_tls):
    server = smtp_capture_factory(starttls_context=server_tls, require_starttls=True)

    async with aiosmtplib.SMTP(
        hostname=server.host, port=server.port, tls_context=client_tls, start_tls=True
    ) as client:
        assert client.is_connected
        assert client.get_transport_info("sslcontext") is not None
        errors, _ = await client.sendmail(
            "shopping@example-shop.com", ["bob@example.com"], burger_receipt()
        )
    assert errors == {}
    assert (await server.wait_for_async(1))[0].data == burger_receipt()


def test_require_starttls_refuses_plaintext_mail(smtp_capture_factory, server_tls):
    server = smtp_capture_factory(starttls_context=server_tls, require_starttls=True)

    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.mail("a@example.com")
    assert code == 530


def test_starttls_is_not_advertised_without_a_context(smtp_capture):
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        client.ehlo()
        assert not client.has_extn("starttls")
        assert client.has_extn("smtputf8")
        assert client.has_extn("size")


async def test_implicit_tls(smtp_capture_factory, server_tls, client_tls):
    server = smtp_capture_factory(tls_context=server_tls)

    errors, _ = await send(server, "bob@example.com", use_tls=True, tls_context=client_tls)

    assert errors == {}
    assert len(await server.wait_for_async(1)) == 1
