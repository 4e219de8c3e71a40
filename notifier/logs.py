"""Log output: one JSON object per line (``log.format: json``) or readable text.

Code logs with ``logger.info("event name", extra={"fields": {...}})``; the formatter
writes the fields as members of the JSON line (or ``key=value`` pairs in text). Nothing
here logs request bodies, headers, tokens or passwords, and callers must not put them in
``fields``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from notifier.settings import LogSettings

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "fields"]

_HANDLER_NAME = "notifier"


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: ``logger.info("delivery", extra=fields(id=...))``."""
    return {"fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = getattr(record, "fields", {})
        if extra:
            text += " " + " ".join(f"{key}={_one_line(value)}" for key, value in extra.items())
        return text


def _one_line(value: Any) -> str:
    # A value with a line break (a URL path with %0A, say) must not start a forged line.
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def configure_logging(settings: LogSettings) -> None:
    """Send notifier's and the servers' logs to stderr in the configured format.

    Called by ``notifier serve`` (not by :func:`notifier.app.create_app`, so tests and
    embedding applications keep their own logging). Calling it again replaces the
    handler it installed instead of adding another.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.level)
