"""A real mail reader gets every subject and display name back: nodemailer's mailparser.

mailparser (tests/js, pinned in package-lock.json) is an RFC 2047 reader written
independently of Python's email package and of tests/rfc2047_reader.py. How it reads a
header (libmime and nodemailer's addressparser, as installed): a line break and all the
whitespace after it become one space; the value is trimmed; whitespace between two
encoded-words is removed and adjacent encoded-words in one charset are joined before
decoding; an address list is split into display names and addresses first, and each
display name (unquoted, trimmed) is decoded after. What it returns is what a Node mail
client shows, and it must equal what the request sent, spaces and tabs included.

The corpus is built without Hypothesis (one Node process reads it all): the tricky
values from tests/header_samples.py and 200 random ones from a seeded generator.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from notifier.compose import compose_message
from notifier.templates import TemplateStore
from tests import header_samples

JS_DIR = Path(__file__).resolve().parent / "js"
FIXED_NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
TEMPLATE = (
    "From: {{ sender | mailbox(sender_name) }}\n"
    "To: {{ to | mailbox(to_name) }}, b@example.com, {{ other | mailbox(other_name) }}\n"
    "Subject: {{ subject }}\n"
    "\n"
    "x\n"
)
# Request data holding an encoded-word is decoded before use, so it does not come back
# as written; the corpus leaves such values out.
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


def corpus() -> list[dict[str, str]]:
    """Subjects and display names to render: the tricky ones, then 200 random ones."""
    cases = []
    names = header_samples.TRICKY_NAMES
    for index, subject in enumerate(header_samples.TRICKY_SUBJECTS):
        cases.append(
            {
                "subject": subject,
                "sender_name": names[index % len(names)],
                "to_name": names[(index + 1) % len(names)],
                "other_name": names[(index + 2) % len(names)],
            }
        )
    rng = random.Random(2047)
    while len(cases) < len(header_samples.TRICKY_SUBJECTS) + 200:
        case = {
            key: header_samples.random_header_value(rng)
            for key in ("subject", "sender_name", "to_name", "other_name")
        }
        if case["subject"].strip(" \t") and not any(map(_ENCODED_WORD.search, case.values())):
            cases.append(case)
    return cases


def expected_reading(case: dict[str, str]) -> dict[str, Any]:
    # compose strips spaces and tabs at both ends of a value, the mailbox filter at both
    # ends of a name.
    return {
        "subject": case["subject"].strip(" \t"),
        "from": [[case["sender_name"].strip(" \t"), "shop@example.com"]],
        "to": [
            [case["to_name"].strip(" \t"), "carol@example.com"],
            ["", "b@example.com"],
            [case["other_name"].strip(" \t"), "dave@example.org"],
        ],
    }


def mailparser_readings(messages: list[bytes]) -> list[dict[str, Any]]:
    """What mailparser reads from each message, in one Node process."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "this test needs Node.js and npm (Debian: apt-get install nodejs npm); "
            "`make pytest` then installs tests/js"
        )
    if not (JS_DIR / "node_modules" / "mailparser" / "package.json").is_file():
        pytest.fail(
            "mailparser is not installed in tests/js/node_modules: run "
            "`npm ci --prefix tests/js --no-audit --no-fund` (`make pytest` does)"
        )
    corpus_lines = "".join(json.dumps(data.decode("ascii")) + "\n" for data in messages)
    finished = subprocess.run(
        [node, str(JS_DIR / "decode_headers.mjs")],
        input=corpus_lines,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, f"node failed:\n{finished.stderr}"
    readings = [json.loads(line) for line in finished.stdout.splitlines()]
    assert len(readings) == len(messages), finished.stderr
    return readings


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def test_mailparser_reads_every_subject_and_display_name_exactly(tmp_path: Path) -> None:
    (tmp_path / "encoded.j2").write_text(TEMPLATE, encoding="utf-8")
    store = TemplateStore(tmp_path, clock=lambda: FIXED_NOW)
    cases = corpus()
    messages = [
        compose_message(
            store.render(
                "encoded",
                {
                    **case,
                    "sender": "shop@example.com",
                    "to": "carol@example.com",
                    "other": "dave@example.org",
                },
            ),
            message_id_domain="mailparser.example",
            clock=lambda: FIXED_NOW,
        ).data
        for case in cases
    ]
    readings = mailparser_readings(messages)
    mismatches = [
        f"{case!r}\n  read:     {reading!r}\n  expected: {expected_reading(case)!r}\n"
        f"  header:   {header_block(data)!r}"
        for case, reading, data in zip(cases, readings, messages, strict=True)
        if reading != expected_reading(case)
    ]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} read differently:\n" + "\n".join(
        mismatches[:5]
    )
