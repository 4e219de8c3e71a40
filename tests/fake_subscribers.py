"""Subscribers a test owns: each instance keeps what it saw, nothing lives in module
globals, and a test hands them to ``create_app(subscribers=...)``.

``accept`` is the one plain function here, for the test that names a subscriber in
settings by its dotted path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from notifier import OutboundMessage, PermanentFailure


def accept(sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
    """A dotted-path subscriber (``tests.fake_subscribers:accept``) that accepts all."""


@dataclass
class Call:
    sender: Any
    message: OutboundMessage
    kwargs: dict[str, Any]


@dataclass
class Recording:
    """Accepts every message and keeps each call (a sync subscriber: run in a thread)."""

    calls: list[Call] = field(default_factory=list)

    def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
        self.calls.append(Call(sender, message, kwargs))


@dataclass
class AsyncRecording:
    """Accepts every message and keeps each call (an async subscriber)."""

    calls: list[Call] = field(default_factory=list)

    async def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> str:
        self.calls.append(Call(sender, message, kwargs))
        return "ok"


@dataclass
class Refusing:
    """Fails every message for good (PermanentFailure)."""

    calls: int = 0

    def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
        self.calls += 1
        raise PermanentFailure("the signing service rejected this message")


@dataclass
class Exploding:
    """Fails every message with an exception worth retrying."""

    calls: int = 0

    def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
        self.calls += 1
        raise ConnectionError("webhook endpoint unreachable")


@dataclass
class Holding:
    """Waits, per message, until the test calls :meth:`release`."""

    calls: int = 0
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
        self.calls += 1
        await self._released.wait()

    def release(self) -> None:
        self._released.set()


#: Named in settings by a test that expects "not callable" at start-up.
not_callable = "a value, not a subscriber"
