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

    Full addresses only with ``log.include_addresses: true``; bodies never.
    """

    def __init__(self, settings: LogSettings) -> None:
        self._include_addresses = settings.include_addresses

    def __call__(self, sender: Any, *, message: OutboundMessage, **kwargs: Any) -> None:
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
