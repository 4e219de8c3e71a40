"""Property tests over Unicode subjects, display names and bodies, and the proof that the
fast serialiser and the email package give messages that parse to the same content."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from notifier import compose
from notifier.templates import TemplateStore, strip_marks
from tests import header_samples, rfc2047_reader

FIXED_NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
TEMPLATE = (
    "From: {{ sender | mailbox(sender_name) }}\n"
    "To: {{ to }}\n"
    "Subject: {{ subject }}\n"
    "Content-Type: text/plain\n"
    "\n"
    "{{ body }}"
)
EXPECTED_HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
}

# Text a header may legitimately hold: no control characters, no line or paragraph
# separators, no noncharacters (those are refused with a 422, tested elsewhere).
header_text = st.text(
    st.characters(
        codec="utf-8",
        exclude_categories=("Cs", "Cc", "Zl", "Zp", "Co"),
        exclude_characters="\ufeff" + "".join(map(chr, range(0xFDD0, 0xFDF0))),
    ),
    min_size=1,
    max_size=300,
)
body_text = st.text(
    st.characters(
        codec="utf-8",
        exclude_categories=("Cs",),
        exclude_characters="".join(map(chr, range(0xFDD0, 0xFDF0))),
    ),
    max_size=3000,
)
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TemplateStore:
    directory: Path = tmp_path_factory.mktemp("templates")
    (directory / "prop.j2").write_text(TEMPLATE, encoding="utf-8")
    (directory / "agree.j2").write_text(AGREEMENT_TEMPLATE, encoding="utf-8")
    return TemplateStore(directory, clock=lambda: FIXED_NOW)


def compose_with(store: TemplateStore, context: dict[str, Any]) -> compose.ComposedMessage:
    return compose.compose_message(
        store.render("prop", context), message_id_domain="prop.example", clock=lambda: FIXED_NOW
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def expected_body(text: str) -> str:
    lines = re.split(r"\r\n|\r|\n", text)
    if lines[-1] == "":
        lines.pop()
    return "".join(line + "\n" for line in lines) or "\n"


def rfc2047_display_name(data: bytes) -> str:
    """The From display name decoded by RFC 2047's rules.

    Not ``policy.default``'s parser: it keeps the folding space between two adjacent
    encoded-words inside a display name, which RFC 2047 section 6.2 says to drop, so a
    long non-ASCII name written correctly would read back with a stray space; and it
    turns a run of spaces inside one encoded-word into one space. tests/rfc2047_reader.py
    is the strict reader; this one checks what ``email.header`` makes of the same bytes.
    """
    raw = email.message_from_bytes(data, policy=policy.compat32)["From"]
    unfolded = re.sub(r"\r?\n([ \t])", r"\1", str(raw))
    decoded = str(make_header(decode_header(unfolded))).strip(" \t")
    name, _, _ = decoded.rpartition(" <")
    if len(name) >= 2 and name[0] == name[-1] == '"':
        name = re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def assert_wire_safe(data: bytes) -> None:
    assert data.isascii()
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None, "bare CR or LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(subject=header_text, sender_name=header_text, body=body_text)
@example(subject="x" * 300, sender_name="a" * 300, body="y" * 2000)
@example(subject="=?", sender_name='"\\', body="\r\n\r")
@example(subject="Ünïcödé 🍔", sender_name='Zoë, "the" <boss>', body="line\x00\x0b\x0cend")
def test_any_unicode_round_trips_as_wire_safe_ascii(
    store: TemplateStore, subject: str, sender_name: str, body: str
) -> None:
    assume(not _ENCODED_WORD.search(subject) and not _ENCODED_WORD.search(sender_name))
    assume(subject.strip(" \t"))
    composed = compose_with(
        store,
        {
            "sender": "shop@example.com",
            "sender_name": sender_name,
            "to": "bob@example.com",
            "subject": subject,
            "body": body,
        },
    )
    assert_wire_safe(composed.data)
    message = parse(composed.data)
    assert set(message.keys()) == EXPECTED_HEADERS
    assert str(message["Subject"]) == subject.strip(" \t")
    assert rfc2047_display_name(composed.data) == sender_name.strip(" \t")
    assert message["From"].addresses[0].addr_spec == "shop@example.com"
    assert composed.recipients == ["bob@example.com"]
    content: str = message.get_content()
    assert content.replace("\r\n", "\n") == expected_body(body)


ascii_header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=90
)
ascii_body = st.lists(
    st.sampled_from([*map(chr, range(0x20, 0x7F)), "\t", "\n", "\r\n", "\r"]), max_size=1500
).map("".join)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(subject=ascii_header_text, sender_name=ascii_header_text, body=ascii_body)
@example(subject="Your Burger order", sender_name="Shop", body="Hello Bob,\n\n- Fries\n")
@example(subject="a" * 70, sender_name="b", body="c" * 998 + "\n" + "d" * 80)
def test_fast_path_and_email_package_agree(
    store: TemplateStore, subject: str, sender_name: str, body: str
) -> None:
    assume(not _ENCODED_WORD.search(subject) and not _ENCODED_WORD.search(sender_name))
    assume(subject.strip(" \t"))
    rendered = store.render(
        "prop",
        {
            "sender": "shop@example.com",
            "sender_name": sender_name,
            "to": "bob@example.com",
            "subject": subject,
            "body": body,
        },
    )
    head, body_marked = compose._split_header_block(rendered.text)
    headers = compose._parse_header_lines(head)
    addresses = {
        h.key: compose._parse_addresses(h) for h in headers if h.key in compose.ADDRESS_HEADERS
    }
    plain_body = strip_marks(body_marked)
    fast = compose._fast_serialise(headers, plain_body, "plain")
    slow = compose._email_serialise(headers, addresses, plain_body, "plain", {}, None)
    assert_wire_safe(slow)
    if fast is None:
        # The fast path may decline only for a reason: a header line past 78 characters,
        # an address the email package had to parse (quoted names, say), a body line past
        # 998, or a character that is not 7bit-safe in the body.
        long_header = any(len(f"{h.name}: {h.value}") > 78 or not h.fast_path_safe for h in headers)
        lines = re.split(r"\r\n|\r|\n", plain_body)
        assert (
            long_header or max(map(len, lines)) > 998 or re.search("[^\t\x20-\x7e\r\n]", plain_body)
        )
        return
    assert_same_message(fast, slow)


def assert_same_message(fast: bytes, slow: bytes) -> None:
    assert_wire_safe(fast)
    fast_message, slow_message = parse(fast), parse(slow)
    assert list(fast_message.keys()) == list(slow_message.keys())
    for name in fast_message:
        assert str(fast_message[name]) == str(slow_message[name]), name
    fast_content: str = fast_message.get_content()
    slow_content: str = slow_message.get_content()
    assert fast_content.replace("\r\n", "\n") == slow_content.replace("\r\n", "\n")


AGREEMENT_TEMPLATE = (
    "{% if date is defined %}Date: {{ date }}\n{% endif %}"
    "From: {{ sender }}\nTo: {{ to }}\n"
    "{% if cc %}Cc: {{ cc }}\n{% endif %}"
    "{% if reply_to %}Reply-To: {{ reply_to }}\n{% endif %}"
    "Subject: {{ subject }}\n\n{{ body }}"
)
# Short enough that every header stays within 78 characters, where the fast path applies.
_atom = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_local = st.lists(_atom, min_size=1, max_size=2).map(".".join)
_domain = st.lists(_atom, min_size=2, max_size=3).map(".".join)
_addr_spec = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain)
_mailbox = st.one_of(
    _addr_spec,
    st.builds(
        lambda name, spec: f"{name} <{spec}>",
        st.lists(_atom, min_size=1, max_size=2).map(" ".join),
        _addr_spec,
    ),
)
_tiny = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=4)
_short_list = st.lists(
    st.builds(
        lambda local, domain: f"{local}@{domain}",
        st.lists(_tiny, min_size=1, max_size=2).map(".".join),
        st.lists(_tiny, min_size=2, max_size=3).map(".".join),
    ),
    max_size=2,
)
_dates = st.sampled_from(
    [None, "Sat, 21 Nov 2026 12:00:00 +0000", "2026-11-24T09:30:00+01:00", "2026-11-24 09:30:00"]
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    to=_mailbox,
    cc=_short_list,
    reply_to=st.one_of(st.just(""), _mailbox),
    date=_dates,
    subject=st.text("abcdefghij ABC,.-!?0123", min_size=1, max_size=40).filter(str.strip),
    body=st.lists(st.text("abcdefghijklmnop .,-", max_size=200), max_size=20).map("\n".join),
)
def test_fast_path_and_email_package_agree_on_everyday_messages(
    store: TemplateStore,
    to: str,
    cc: list[str],
    reply_to: str,
    date: str | None,
    subject: str,
    body: str,
) -> None:
    """Inputs the fast path takes (short ASCII headers, plain lines): it must take them,
    and write what the email package writes."""
    context: dict[str, Any] = {
        "sender": "Shop <shop@example.com>",
        "to": to,
        "cc": cc,
        "reply_to": reply_to,
        "subject": subject,
        "body": body,
    }
    if date is not None:
        context["date"] = date
    rendered = store.render("agree", context)
    head, body_marked = compose._split_header_block(rendered.text)
    headers = compose._parse_header_lines(head)
    if (date_header := next((h for h in headers if h.key == "date"), None)) is not None:
        date_header.value = compose._normalise_date(date_header.value)
    addresses = {
        h.key: compose._parse_addresses(h) for h in headers if h.key in compose.ADDRESS_HEADERS
    }
    plain_body = strip_marks(body_marked)
    fast = compose._fast_serialise(headers, plain_body, "plain")
    slow = compose._email_serialise(headers, addresses, plain_body, "plain", {}, None)
    assert fast is not None, "the fast path declined an everyday message"
    assert_same_message(fast, slow)


def test_fast_path_handles_the_burger_receipt() -> None:
    root = Path(__file__).resolve().parent.parent
    store = TemplateStore(root / "templates", clock=lambda: FIXED_NOW)
    import json

    context = json.loads((root / "templates" / "burger_receipt.example.json").read_text())
    rendered = store.render("burger_receipt", context)
    head, body_marked = compose._split_header_block(rendered.text)
    headers = compose._parse_header_lines(head)
    assert compose._fast_serialise(headers, compose._strip_data(body_marked), "plain") is not None


# -- RFC 2047: what a strict reader gets back ---------------------------------------------

ENCODED_TEMPLATE = (
    "From: {{ sender | mailbox(sender_name) }}\n"
    "To: {{ to | mailbox(to_name) }}, b@example.com, {{ other | mailbox(other_name) }}\n"
    "Subject: {{ subject }}\n"
    # A longer name moves every fold point of the same value.
    "Thread-Topic: Re: {{ subject }}\n"
    "Content-Type: text/plain\n"
    "\n"
    "x\n"
)


@pytest.fixture(scope="module")
def encoded_store(tmp_path_factory: pytest.TempPathFactory) -> TemplateStore:
    directory: Path = tmp_path_factory.mktemp("encoded")
    (directory / "encoded.j2").write_text(ENCODED_TEMPLATE, encoding="utf-8")
    return TemplateStore(directory, clock=lambda: FIXED_NOW)


def compose_encoded(
    store: TemplateStore, *, subject: str, sender_name: str, to_name: str, other_name: str
) -> compose.ComposedMessage:
    context = {
        "sender": "shop@example.com",
        "sender_name": sender_name,
        "to": "carol@example.com",
        "to_name": to_name,
        "other": "dave@example.org",
        "other_name": other_name,
        "subject": subject,
    }
    return compose.compose_message(
        store.render("encoded", context),
        message_id_domain="prop.example",
        clock=lambda: FIXED_NOW,
    )


def assert_strict_reader_gets_back(
    data: bytes, *, subject: str, sender_name: str, to_name: str, other_name: str
) -> None:
    assert data.isascii()
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    fields = rfc2047_reader.header_fields(data)
    # compose strips spaces and tabs at both ends of a value, and the mailbox filter at
    # both ends of a name: everything else must come back exactly.
    assert rfc2047_reader.decode_text(fields["subject"]) == subject.strip(" \t")
    topic = rfc2047_reader.decode_text(fields["thread-topic"])
    assert topic == ("Re: " + subject).strip(" \t")
    assert rfc2047_reader.decode_mailboxes(fields["from"]) == [
        (sender_name.strip(" \t"), "shop@example.com")
    ]
    assert rfc2047_reader.decode_mailboxes(fields["to"]) == [
        (to_name.strip(" \t"), "carol@example.com"),
        ("", "b@example.com"),
        (other_name.strip(" \t"), "dave@example.org"),
    ]


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    subject=header_samples.header_values(),
    sender_name=header_samples.header_values(),
    to_name=header_samples.header_values(),
    other_name=header_samples.header_values(),
)
@example(
    subject=header_samples.EXAMPLE_SUBJECT,
    sender_name="Łukasz Żółć Świętochłowice Główny Dział Obsługi",
    to_name='Zoë, "the" <boss>',
    other_name="a  b",
)
def test_a_strict_rfc2047_reader_gets_every_subject_and_name_back(
    encoded_store: TemplateStore, subject: str, sender_name: str, to_name: str, other_name: str
) -> None:
    values = (subject, sender_name, to_name, other_name)
    # An encoded-word in request data is decoded before use (and checked): such values
    # are not expected back as written.
    assume(not any(_ENCODED_WORD.search(value) for value in values))
    assume(subject.strip(" \t"))
    composed = compose_encoded(
        encoded_store,
        subject=subject,
        sender_name=sender_name,
        to_name=to_name,
        other_name=other_name,
    )
    assert_strict_reader_gets_back(
        composed.data,
        subject=subject,
        sender_name=sender_name,
        to_name=to_name,
        other_name=other_name,
    )
