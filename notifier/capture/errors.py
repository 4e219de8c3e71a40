"""Exceptions of the capture server, on notifier's one error base (an unknown message
is :class:`notifier.errors.UnknownMessage`, as in the API).

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from notifier.errors import NotifierError

__all__ = ["InvalidFault", "UnknownFault", "WaitTimeout"]


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
