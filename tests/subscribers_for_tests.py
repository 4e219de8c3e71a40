"""Subscribers that tests name in settings by dotted path (tests.subscribers_for_tests:...).

Each records what it received in ``CALLS`` so a test can check the signal's arguments.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from notifier import PermanentFailure

CALLS: list[dict[str, Any]] = []
#: Set by a test to let ``slow`` finish.
RELEASE_SLOW = threading.Event()


def record(sender: Any, *, message: Any, **kwargs: Any) -> None:
    """A sync subscriber that accepts every message."""
    CALLS.append({"subscriber": "record", "sender": sender, "message": message, "kwargs": kwargs})


async def record_async(sender: Any, *, message: Any, **kwargs: Any) -> str:
    CALLS.append({"subscriber": "record_async", "sender": sender, "message": message})
    return "ok"


def refuse(sender: Any, *, message: Any, **kwargs: Any) -> None:
    CALLS.append({"subscriber": "refuse", "message": message})
    raise PermanentFailure("the signing service rejected this message")


def explode(sender: Any, *, message: Any, **kwargs: Any) -> None:
    CALLS.append({"subscriber": "explode", "message": message})
    raise ConnectionError("webhook endpoint unreachable")


async def slow(sender: Any, *, message: Any, **kwargs: Any) -> None:
    CALLS.append({"subscriber": "slow", "message": message})
    while not RELEASE_SLOW.is_set():
        await asyncio.sleep(0.01)


not_callable = 42
