"""Many concurrent senders: every message captured once, none lost, none duplicated."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiosmtplib

SENDERS = 50
MESSAGES_PER_SENDER = 20


def numbered_message(sender: int, number: int) -> bytes:
    return (
        f"From: sender{sender}@example.com\r\n"
        f"To: bob@example.com\r\n"
        f"Subject: load {sender}-{number}\r\n"
        f"Message-ID: <{sender}.{number}@load.example>\r\n"
        "\r\n"
        f"message {number} of sender {sender}\r\n"
    ).encode()


async def test_50_concurrent_senders_times_20_messages_all_captured_once(smtp_capture):
    all_connected = asyncio.Barrier(SENDERS)

    async def sender(index: int) -> None:
        async with aiosmtplib.SMTP(
            hostname=smtp_capture.host, port=smtp_capture.port, start_tls=False, timeout=60
        ) as client:
            # Every connection is open before anyone sends: 50 sessions at once, for real.
            await all_connected.wait()
            for number in range(MESSAGES_PER_SENDER):
                errors, _ = await client.sendmail(
                    f"sender{index}@example.com",
                    ["bob@example.com"],
                    numbered_message(index, number),
                )
                assert errors == {}

    async with asyncio.timeout(90):
        await asyncio.gather(*(sender(index) for index in range(SENDERS)))
        captured = await smtp_capture.wait_for_async(SENDERS * MESSAGES_PER_SENDER, timeout=30)

    expected = {
        numbered_message(index, number)
        for index in range(SENDERS)
        for number in range(MESSAGES_PER_SENDER)
    }
    counts = Counter(message.data for message in captured)
    assert len(captured) == SENDERS * MESSAGES_PER_SENDER
    assert set(counts) == expected
    assert max(counts.values()) == 1
    assert len({message.id for message in captured}) == len(captured)
    assert smtp_capture.peak_sessions >= SENDERS
    # Per sender, arrival order (id order) is sending order.
    for index in range(SENDERS):
        mine = [m for m in captured if m.envelope_from == f"sender{index}@example.com"]
        assert [m.data for m in mine] == [
            numbered_message(index, number) for number in range(MESSAGES_PER_SENDER)
        ]
