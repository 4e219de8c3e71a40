"""notifier's signals, in one place.

Subscribers named in settings (``subscribers: [smtp, log, "mypkg.hooks:sign"]``) are
called through :data:`message_ready` for every accepted message, with retries and a
recorded outcome each. A receiver looks like this (sync or async)::

    def my_subscriber(sender: Quart, *, message: OutboundMessage, **kwargs: Any) -> Any:
        ...

Returning means delivered. Raising :class:`notifier.PermanentFailure` means failed at
once; :class:`notifier.TransientFailure` or any other exception means "try again later",
with backoff, up to the ``delivery`` settings' limits. A retry only reaches subscribers
that have not finished, so a subscriber may be called more than once for a message
(at-least-once: use ``message.message_id`` to de-duplicate), but never again after it
returned.

Receivers connected directly with ``message_ready.connect`` are called too, but nothing
records their outcome or retries them: list them in settings for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from blinker import Namespace

__all__ = ["OutboundMessage", "message_ready"]

_signals = Namespace()

#: Sent by the dispatcher for each accepted message that has subscribers left to reach,
#: with ``sender`` the app. Receiver: ``receiver(sender, *, message: OutboundMessage,
#: **kwargs)``; keyword arguments may be added in later versions, so accept ``**kwargs``.
message_ready = _signals.signal("message-ready")


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message as subscribers see it."""

    #: The outbox id, as in ``GET /v1/messages/<id>``.
    id: str
    #: The template it was rendered from.
    template: str
    #: The Message-ID header, ``<...@domain>``; the same on every attempt.
    message_id: str
    #: Envelope sender (MAIL FROM).
    sender: str
    #: Envelope recipients (RCPT TO): To, Cc and Bcc. On a retry after some recipients
    #: were refused for a while, only those recipients.
    recipients: list[str]
    #: The RFC 5322 bytes, CRLF line ends, without Bcc.
    data: bytes = field(repr=False)
    #: When the message was accepted (UTC).
    created_at: datetime
    #: Which attempt this is for the subscriber being called (1 for the first).
    attempt: int = 1
    #: The id of the HTTP request that accepted the message (``X-Request-ID``).
    request_id: str | None = None
    #: Which version of the template files rendered it (as in ``GET /v1/messages/<id>``;
    #: None for messages stored before versions were recorded).
    template_version: str | None = None

    def for_attempt(self, *, attempt: int, recipients: list[str] | None) -> OutboundMessage:
        """A copy for one subscriber's attempt (optionally for fewer recipients)."""
        return replace(self, attempt=attempt, recipients=list(recipients or self.recipients))
