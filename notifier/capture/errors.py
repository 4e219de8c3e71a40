"""Exceptions of the capture server, on notifier's one error base."""

from __future__ import annotations

from notifier.errors import NotifierError

__all__ = ["InvalidFault", "UnknownFault", "UnknownMessage", "WaitTimeout"]


class UnknownMessage(NotifierError, LookupError):
    """No captured message has this id (it never existed or was deleted)."""

    status = 404
    slug = "unknown-message"
    title = "Unknown message"


class UnknownFault(NotifierError, LookupError):
    """No fault rule has this id."""

    status = 404
    slug = "unknown-fault"
    title = "Unknown fault rule"


class InvalidFault(NotifierError, ValueError):
    """A fault rule cannot be understood: bad action, pattern or count."""

    status = 400
    slug = "invalid-fault"
    title = "Invalid fault rule"


class WaitTimeout(NotifierError, TimeoutError):
    """Fewer messages than awaited arrived before the deadline."""

    status = 408
    slug = "wait-timeout"
    title = "Messages did not arrive in time"
