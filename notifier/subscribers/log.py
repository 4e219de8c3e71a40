"""The ``log`` subscriber: one structured line per message, never the body.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import logging
from typing import Any

from notifier.settings import LogSettings
from notifier.signals import OutboundMessage

__all__ = ["LogSubscriber"]

logger = logging.getLogger("notifier.delivery")


class LogSubscriber:
    """Logs id, template, Message-ID and the recipient count of each message.

    Full addresses only with ``log.include_addresses: true``; bodies never. Its line
    is the message's delivery record in the log: the dispatcher does not write a second
    one for a delivered attempt of this subscriber (``logs_each_message``).
    """

    #: The dispatcher writes no "delivery attempt" line of its own for a success.
    logs_each_message = True

    def __init__(self, settings: LogSettings) -> None:
        self._include_addresses = settings.include_addresses

    async def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
        # Async although it does not wait for anything: a sync subscriber runs in a
        # thread, and the hand-off would cost more than the line.
        record: dict[str, Any] = {
            "id": message.id,
            "template": message.template,
            "message_id": message.message_id,
            "recipients": len(message.recipients),
            "attempt": message.attempt,
            "request_id": message.request_id,
        }
        if self._include_addresses:
            record["from"] = message.sender
            record["to"] = message.recipients
        logger.info("message", extra={"fields": record})
