"""Log lines: one record is one line, whatever characters its message and fields hold."""

from __future__ import annotations

import json
import logging
import sys

from hypothesis import example, given
from hypothesis import strategies as st

from notifier.logs import JsonFormatter, TextFormatter

#: Everything ``str.splitlines`` ends a line at, as line readers and log shippers may.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
FORGED = "path\r\nforged\x85next\u2028line\u2029end"


def record(message: str, **fields: object) -> logging.LogRecord:
    made = logging.LogRecord("notifier.test", logging.WARNING, __file__, 1, message, (), None)
    made.fields = fields
    return made


def test_json_line_keeps_line_separators_escaped_and_text_intact() -> None:
    line = JsonFormatter().format(record(f"request {FORGED}", path=FORGED, **{FORGED: "key"}))

    assert len(line.splitlines()) == 1
    for character in LINE_BREAKS:
        assert character not in line
    parsed = json.loads(line)
    assert parsed["message"] == f"request {FORGED}"
    assert parsed["path"] == FORGED
    assert parsed[FORGED] == "key"


@given(message=st.text(), value=st.text())
@example(message="\x85", value="\u2028\u2029")
def test_any_json_record_is_one_line_that_parses_back(message: str, value: str) -> None:
    line = JsonFormatter().format(record(message, value=value, nested={"list": [value]}))

    assert len(line.splitlines()) == 1
    parsed = json.loads(line)
    assert parsed["message"] == message
    assert parsed["value"] == value
    assert parsed["nested"] == {"list": [value]}


def test_json_line_keeps_an_exception_on_the_one_line() -> None:
    try:
        raise ValueError(f"bad {FORGED}")
    except ValueError:
        failed = record("failed", id="x")
        failed.exc_info = sys.exc_info()

    line = JsonFormatter().format(failed)

    assert len(line.splitlines()) == 1
    assert f"ValueError: bad {FORGED}" in json.loads(line)["exception"]


def test_text_line_escapes_line_breaks_in_message_and_fields() -> None:
    line = TextFormatter().format(record(f"request {FORGED}", path=FORGED))

    assert len(line.splitlines()) == 1
    for character in LINE_BREAKS:
        assert character not in line
    assert "request path\\r\\nforged\\x85next\\u2028line\\u2029end" in line
    assert "path=path\\r\\nforged\\x85next\\u2028line\\u2029end" in line


def test_text_line_leaves_printable_text_as_it_is() -> None:
    line = TextFormatter().format(record("Grüße an Zoë", subject="Grüße"))

    assert line.endswith("notifier.test: Grüße an Zoë subject=Grüße")
