"""Log output: one JSON object per line (``log.format: json``) or readable text.

Code logs with ``logger.info("event name", extra={"fields": {...}})``; the formatter
writes the fields as members of the JSON line (or ``key=value`` pairs in text). Nothing
here logs request bodies, headers, tokens or passwords, and callers must not put them in
``fields``.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from notifier.settings import LogSettings

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "fields"]

_HANDLER_NAME = "notifier"

#: Line ends that ``json.dumps(ensure_ascii=False)`` writes as they are (it escapes only
#: the C0 controls): ``str.splitlines`` and many log shippers end a line at them, so one
#: record would arrive as several lines, the later ones forged by whoever chose the text.
#: They can only occur inside JSON strings, where the ``\u`` escape means the same text.
_JSON_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


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
        return json.dumps(line, default=str, ensure_ascii=False).translate(_JSON_LINE_BREAKS)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # The message may hold text from a request (a path, a header) just like the
        # fields; a traceback, added below it, stays the one multi-line part.
        one_line = copy.copy(record)
        one_line.msg, one_line.args = _one_line(record.getMessage()), None
        text = super().format(one_line)
        extra = getattr(record, "fields", {})
        if extra:
            text += " " + " ".join(f"{key}={_one_line(value)}" for key, value in extra.items())
        return text


def _one_line(value: Any) -> str:
    # A value with a line break (a URL path with %0A, say) must not start a forged line.
    # isprintable() is False for every line end str.splitlines() knows (CR, LF, VT, FF,
    # FS, GS, RS, NEL, U+2028, U+2029), and for other controls a terminal would act on.
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
    # httpx logs every request's full URL at INFO (and httpcore its traffic at DEBUG):
    # a webhook URL may carry a token, and the webhook subscriber logs its own outcomes.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
