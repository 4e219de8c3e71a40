"""The capture server receives mail from real SMTP clients, byte for byte, durably."""

from __future__ import annotations

import json
import smtplib
import threading
from pathlib import Path

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifier.capture import BackgroundCaptureServer, MessageStore, WaitTimeout
from tests.capture_helpers import burger_receipt


def test_smtplib_message_arrives_byte_for_byte_with_envelope(smtp_capture):
    # A leading dot and a long line check dot-unstuffing and that nothing is rewrapped.
    data = burger_receipt() + b".dot at the start of a line\r\n" + b"x" * 990 + b"\r\n"
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        refused = client.sendmail(
            "bounces@example-shop.com", ["bob@example.com", "audit@example-shop.com"], data
        )
    assert refused == {}

    (captured,) = smtp_capture.wait_for(1, timeout=5)
    assert captured.data == data
    assert captured.envelope_from == "bounces@example-shop.com"
    assert captured.envelope_to == ("bob@example.com", "audit@example-shop.com")
    assert captured.subject == "Your Burger order"
    assert captured["From"] == "shopping@example-shop.com"
    assert captured.message["To"].addresses[0].addr_spec == "bob@example.com"
    assert "Cheeseburger" in (captured.text or "")


async def test_aiosmtplib_message_arrives_byte_for_byte_with_envelope(smtp_capture):
    data = burger_receipt(to="Bob <bob@example.com>")
    errors, reply = await aiosmtplib.send(
        data,
        sender="shopping@example-shop.com",
        recipients=["bob@example.com"],
        hostname=smtp_capture.host,
        port=smtp_capture.port,
        start_tls=False,
        timeout=10,
    )
    assert errors == {}
    assert reply.startswith("2.0.0 OK")

    (captured,) = await smtp_capture.wait_for_async(1, timeout=5)
    assert captured.data == data
    assert captured.envelope_from == "shopping@example-shop.com"
    assert captured.envelope_to == ("bob@example.com",)
    assert captured.id in reply  # the reply names the stored id, handy in logs


def test_each_message_is_one_eml_file_with_its_envelope_beside_it(smtp_capture):
    data = burger_receipt()
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        client.sendmail("shopping@example-shop.com", ["bob@example.com"], data)
    (captured,) = smtp_capture.wait_for(1)

    directory = smtp_capture.store.directory
    assert sorted(path.name for path in directory.iterdir()) == [
        f"{captured.id}.eml",
        f"{captured.id}.json",
    ]
    assert (directory / f"{captured.id}.eml").read_bytes() == data
    envelope = json.loads((directory / f"{captured.id}.json").read_text())
    assert envelope["from"] == "shopping@example-shop.com"
    assert envelope["to"] == ["bob@example.com"]


def test_restart_keeps_what_was_captured(tmp_path: Path):
    sent = [burger_receipt(subject=f"Order {number}") for number in range(3)]
    with BackgroundCaptureServer(tmp_path) as first:
        with smtplib.SMTP(first.host, first.port, timeout=10) as client:
            for data in sent:
                client.sendmail("shopping@example-shop.com", ["bob@example.com"], data)
        before = first.wait_for(3)

    with BackgroundCaptureServer(tmp_path) as second:
        after = second.messages
        assert [message.data for message in after] == sent
        assert [message.id for message in after] == [message.id for message in before]
        assert after[0].envelope_to == ("bob@example.com",)
        # New arrivals sort after the old ones.
        with smtplib.SMTP(second.host, second.port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.com"], burger_receipt())
        newest = second.wait_for(4)[-1]
        assert newest.id > after[-1].id


def test_interrupted_writes_are_not_shown_and_are_cleaned_up(tmp_path: Path):
    store = MessageStore(tmp_path)
    kept = store.add("a@example.com", ["b@example.com"], burger_receipt())
    # What a crash can leave: a temporary file, and an envelope whose .eml never landed.
    (tmp_path / ".00000000000000000001.eml.tmp").write_bytes(b"Subject: half")
    (tmp_path / "00000000000000000002.json").write_text('{"from": "", "to": []}')

    reloaded = MessageStore(tmp_path)

    assert [message.id for message in reloaded.messages()] == [kept.id]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        f"{kept.id}.eml",
        f"{kept.id}.json",
    ]


def test_wait_for_times_out_with_a_clear_message(smtp_capture):
    with pytest.raises(TimeoutError, match=r"at least 1 captured message\(s\) within 0.2s, got 0"):
        smtp_capture.wait_for(1, timeout=0.2)


async def test_wait_for_async_times_out_as_a_timeout_error(smtp_capture):
    with pytest.raises(WaitTimeout, match="got 0"):
        await smtp_capture.wait_for_async(1, timeout=0.2)


def test_wait_for_wakes_up_when_mail_arrives_from_another_thread(smtp_capture):
    def send_later() -> None:
        with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
            for _ in range(2):
                client.sendmail("a@example.com", ["b@example.com"], burger_receipt())

    sender = threading.Thread(target=send_later)
    sender.start()
    try:
        assert len(smtp_capture.wait_for(2, timeout=10)) == 2
    finally:
        sender.join()


def test_clear_forgets_messages_in_memory_and_on_disk(smtp_capture):
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.com"], burger_receipt())
    smtp_capture.wait_for(1)

    smtp_capture.clear()

    assert smtp_capture.messages == []
    assert list(smtp_capture.store.directory.iterdir()) == []


def test_null_reverse_path_is_kept_as_an_empty_sender(smtp_capture):
    with smtplib.SMTP(smtp_capture.host, smtp_capture.port, timeout=10) as client:
        client.sendmail("<>", ["bob@example.com"], burger_receipt())
    (captured,) = smtp_capture.wait_for(1)
    assert captured.envelope_from == ""


def test_fixture_servers_get_their_own_free_ports(smtp_capture, smtp_capture_factory):
    other = smtp_capture_factory()
    assert other.port != smtp_capture.port
    assert smtp_capture.host == other.host == "127.0.0.1"


def test_any_crlf_framed_bytes_arrive_unchanged(tmp_path: Path):
    # Property: whatever the octets (8-bit, leading dots, empty lines, NUL), a message of
    # CRLF-terminated lines is stored exactly as the client meant it.
    line = st.binary(max_size=200).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
    lines = st.lists(st.one_of(line, st.sampled_from([b".", b"..", b".x", b""])), max_size=30)

    with (
        BackgroundCaptureServer(tmp_path) as server,
        smtplib.SMTP(server.host, server.port, timeout=10) as client,
    ):

        @settings(max_examples=60, deadline=None)
        @given(lines)
        def round_trip(body_lines: list[bytes]) -> None:
            server.clear()
            data = b"Subject: property\r\n\r\n" + b"".join(part + b"\r\n" for part in body_lines)
            client.sendmail("a@example.com", ["b@example.com"], data)
            (captured,) = server.wait_for(1)
            assert captured.data == data

        round_trip()
