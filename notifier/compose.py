"""Rendered template text -> RFC 5322 bytes: the one place that builds mail.

:func:`compose_message` parses the rendered header block, validates every value, fills
``Date``, ``Message-ID`` and ``MIME-Version``, computes the SMTP envelope (From; To, Cc
and Bcc) and serialises the message with CRLF line ends, never writing Bcc.

Two serialisers produce the bytes:

* the ``email`` package (policy ``SMTP``) handles everything: quoted-printable or base64
  bodies, multipart/alternative when the template has an HTML part (its HTML part a
  multipart/related with the inline images, when it shows any), structured headers;
  address headers, and text headers that are not ASCII or need folding, it takes as
  already written by :mod:`notifier.encoded_words` (RFC 2047 encoding and folding that
  keep every space, which the email package's own folder does not);
* a fast path writes the common case directly: every header ASCII and short enough not to
  need folding, a plain ASCII body with lines within 998 octets, no HTML part. Measured,
  the ``email`` package costs many times a cached Jinja render of the burger receipt
  (figures in docs/benchmarks.md), so it would dominate every request. Property tests
  (tests/test_compose_properties.py) check that both serialisers give messages that
  parse to the same headers and bodies.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import Address, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from email.utils import format_datetime, getaddresses, parsedate_to_datetime
from typing import Any

import idna

from notifier.encoded_words import FOLD_COLUMN, fold_mailboxes, fold_text
from notifier.errors import (
    ComposeError,
    HeaderInjection,
    InvalidAddress,
    InvalidAttachment,
    TemplateError,
)
from notifier.templates import (
    CR_MARK,
    LF_MARK,
    VALUE_END,
    VALUE_START,
    InlineImage,
    RenderedTemplate,
    strip_marks,
)

__all__ = ["Attachment", "ComposedMessage", "attach", "compose_message", "message_view"]

#: RFC 5322: at most 998 octets per line, excluding CRLF.
MAX_LINE_OCTETS = 998
#: Default caps on one header value and on the whole header block, in UTF-8 octets
#: (``limits.max_header_bytes``, ``limits.max_header_block_bytes``). The email package's
#: address parser and folder take time that grows with the square of a value's length,
#: so the caps are what bound the work one request can cause (docs/templates.md).
MAX_HEADER_BYTES = 4096
MAX_HEADER_BLOCK_BYTES = 16384
#: One mailbox in an address list (display name, comments and address), in octets: the
#: parser's cost is bounded per mailbox, and no mailbox needs more than a line.
MAX_MAILBOX_BYTES = MAX_LINE_OCTETS
#: RFC 5321 4.5.3.1: local part, domain and label lengths, in octets.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 253
MAX_LABEL = 63
#: Comments nested deeper than this in an address are refused (the parser recurses).
MAX_COMMENT_DEPTH = 8

# CRLF line ends, RFC 2047 for non-ASCII headers, and 7bit-safe bodies (quoted-printable or
# base64 for non-ASCII text): the output is always ASCII, whatever relay it meets.
_SMTP_POLICY = policy.SMTP.clone(cte_type="7bit")
_PARSE_POLICY = policy.default

ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender"})
ENVELOPE_RECIPIENT_HEADERS = ("to", "cc", "bcc")
# Headers RFC 5322 allows at most once (plus our MIME ones); a template repeating any
# header is refused, since repeated headers are either a mistake or a parser trick.
_GENERATED_BY_US = frozenset({"content-transfer-encoding"})

_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII except colon
_FORBIDDEN_IN_HEADER = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
# What _checked_value looks for, in one pattern over the whole header block ("\n" is
# left out: there it separates header lines).
# (An alternation with "=\\?" would stop the engine's fast scan for a character class, so
# encoded-words are looked for with a plain substring test.)
_SUSPICIOUS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff" + CR_MARK + LF_MARK + "]")
_BLANK_LINE = re.compile(r"^[ \t]*$", re.MULTILINE)
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_DATA_SPAN = re.compile(f"{VALUE_START}[^{VALUE_END}]*{VALUE_END}")
_LIST_SYNTAX = re.compile("[,;:]")
_MESSAGE_ID = re.compile(r"<[^<>\s@]+@[^<>\s@]+>")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+"
# The everyday mailbox forms, `bob@example.com` and `Bob Smith <bob@example.com>`;
# anything else (quoted names, comments, groups, IDN) goes to the email package's parser.
_SIMPLE_MAILBOX = re.compile(
    rf"(?:(?P<name>{_ATEXT}(?: {_ATEXT})*) <(?P<angle>{_DOT_ATOM}@{_DOMAIN})>"
    rf"|(?P<bare>{_DOT_ATOM}@{_DOMAIN}))"
)
# A domain is a host name (LDH labels; one label, like "localhost", is allowed) or an
# address literal such as [192.0.2.1]; RFC 5322 atoms would also allow "=" or "?".
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_ADDRESS_LITERAL = re.compile(r"\[[0-9A-Fa-f:.]+\]|\[IPv6:[0-9A-Fa-f:.]+\]")
_SIMPLE_ADDRESS_LIST = re.compile(r"[^\"()\\:;\[\]]*")  # no quotes, comments or groups


@dataclass(frozen=True, slots=True)
class ComposedMessage:
    """A message ready to hand over: its bytes and its SMTP envelope."""

    data: bytes
    sender: str
    recipients: list[str]
    message_id: str
    #: The version of the template files that rendered it ("" when not known).
    template_version: str = ""


#: ``(display name, addr-spec)``; the display name is "" when there is none.
Mailbox = tuple[str, str]


@dataclass(slots=True)
class _Header:
    name: str
    key: str  # lower-case name
    value: str  # data markers removed
    marked: str  # as rendered, with data markers
    #: False once an address header needed the email package's parser: then only the
    #: email package may write it, since it normalises what it parsed.
    fast_path_safe: bool = True


def compose_message(
    rendered: RenderedTemplate,
    *,
    message_id_domain: str,
    default_from: str | None = None,
    clock: Callable[[], datetime] | None = None,
    max_header_bytes: int = MAX_HEADER_BYTES,
    max_header_block_bytes: int = MAX_HEADER_BLOCK_BYTES,
) -> ComposedMessage:
    """Turn a rendered template into RFC 5322 bytes and an SMTP envelope.

    Raises :class:`HeaderInjection`, :class:`InvalidAddress` or :class:`ComposeError`
    (all 422) when a value would break the header block, add recipients, is invalid or
    longer than the caps, and :class:`TemplateError` when the template's own header
    block is malformed.
    """
    head, body_marked = _split_header_block(rendered.text)
    headers = _parse_header_lines(head)
    _check_header_sizes(headers, max_header_bytes, max_header_block_bytes)
    by_key = {header.key: header for header in headers}

    if "from" not in by_key:
        if default_from is None:
            raise ComposeError("the template sets no From header and defaults.from is unset")
        headers.insert(0, _Header("From", "from", default_from, default_from))
        by_key["from"] = headers[0]

    addresses = {
        header.key: _parse_addresses(header) for header in headers if header.key in ADDRESS_HEADERS
    }
    if not addresses["from"]:
        raise InvalidAddress("From holds no address", header="From")
    sender = addresses["from"][0][1]
    recipients = _envelope_recipients(addresses)
    if not recipients:
        raise ComposeError("the message has no recipients (To, Cc or Bcc)")

    if "date" in by_key:
        by_key["date"].value = _normalise_date(by_key["date"].value)
    else:
        date = format_datetime((clock or _utc_now)())
        headers.append(_Header("Date", "date", date, date))
    if "message-id" in by_key:
        message_id = by_key["message-id"].value
        if _MESSAGE_ID.fullmatch(message_id) is None:
            raise ComposeError(f"Message-ID {message_id!r} is not <id@domain>", header="Message-ID")
    else:
        message_id = f"<{os.urandom(16).hex()}@{message_id_domain}>"
        headers.append(_Header("Message-ID", "message-id", message_id, message_id))
    if "mime-version" in by_key and by_key["mime-version"].value != "1.0":
        raise ComposeError("MIME-Version must be 1.0", header="MIME-Version")

    content_type = by_key.get("content-type")
    subtype, params = _text_content_type(content_type.value if content_type else "text/plain")
    body = strip_marks(body_marked)

    data = None
    if rendered.html is None and not params:
        data = _fast_serialise(headers, body, subtype)
    if data is None:
        data = _email_serialise(
            headers, addresses, body, subtype, params, rendered.html, rendered.inline_images
        )
    return ComposedMessage(data=data, sender=sender, recipients=recipients, message_id=message_id)


def message_view(data: bytes) -> dict[str, Any]:
    """The JSON view of composed bytes, read back by the ``email`` parser so it agrees
    with the bytes: ``headers`` (decoded), ``text``, ``html``, ``raw``, and
    ``attachments``: ``filename``, ``content_type`` and ``size`` (decoded bytes) of each,
    in order (``[]`` without)."""
    message = BytesParser(policy=_PARSE_POLICY).parsebytes(data)
    assert isinstance(message, EmailMessage)
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    if text_part is None:  # a template whose Content-Type is text/html and no .html.j2
        text_part = html_part if message.get_content_maintype() == "text" else None
    mixed = message.get_content_type() == "multipart/mixed"
    return {
        "headers": {name: _decoded_header(raw) for name, raw in message.raw_items()},
        "text": _part_text(text_part) if text_part is not None else "",
        "html": _part_text(html_part) if html_part is not None else None,
        "raw": data.decode("ascii"),
        "attachments": [_attachment_view(part) for part in message.iter_attachments()]
        if mixed
        else [],
    }


def _attachment_view(part: MIMEPart) -> dict[str, Any]:
    content = part.get_payload(decode=True)
    return {
        "filename": part.get_filename(),
        "content_type": part.get_content_type(),
        "size": len(content) if isinstance(content, bytes) else 0,
    }


def _decoded_header(raw: str) -> str:
    """A header value as read from the wire: unfolded, encoded-words decoded.

    Decoded by RFC 2047's rules (``email.header``), not by ``policy.default``'s reader,
    which keeps the whitespace between two encoded-words in a display name.
    """
    unfolded = _FOLD.sub(r"\1", raw).strip(" \t")
    if "=?" not in unfolded:
        return unfolded
    return str(make_header(decode_header(unfolded)))


_FOLD = re.compile(r"\r?\n([ \t])")


def _part_text(part: MIMEPart) -> str:
    # The parser keeps the wire's CRLF inside 7bit bodies; readers want plain "\n".
    text: str = part.get_content()
    return text.replace("\r\n", "\n")


# -- parsing the rendered header block ---------------------------------------------------


def _split_header_block(text: str) -> tuple[str, str]:
    """Split rendered text at the first empty (or whitespace-only) line.

    Line breaks from request data were replaced by markers while rendering, so every
    ``\\n`` here was written by the template: the block structure cannot be injected.
    """
    end = text.find("\n\n")
    head = text if end < 0 else text[:end]
    # A whitespace-only line starts with a space or tab; without one, skip the regex.
    if ("\n " not in head and "\n\t" not in head and head[:1] not in (" ", "\t")) or (
        _BLANK_LINE.search(head) is None
    ):
        return head, "" if end < 0 else text[end + 2 :]
    lines = head.split("\n")
    for index, line in enumerate(lines):
        if not line.strip(" \t"):
            return "\n".join(lines[:index]), "\n".join(lines[index + 1 :]) + text[len(head) :]
    raise AssertionError("unreachable: _BLANK_LINE found a blank line")


def _parse_header_lines(head: str) -> list[_Header]:
    if not head:
        return []
    marked_lines = head.split("\n")
    # Markers never contain a line break, so the lines of the unmarked block line up
    # with the marked ones: strip the markers once for the whole block.
    plain_lines = _strip_data(head).split("\n")
    headers: list[_Header] = []
    seen: set[str] = set()
    for number, (marked_line, plain_line) in enumerate(
        zip(marked_lines, plain_lines, strict=True), 1
    ):
        if marked_line[0] in " \t":
            if not headers:
                raise TemplateError(f"header line {number} is a continuation of nothing")
            headers[-1].marked += marked_line.rstrip(" \t")
            headers[-1].value += plain_line.rstrip(" \t")
            continue
        # The name is taken from the marked line: a name that came from request data
        # carries markers and is refused, so data can never choose a header's name.
        name, colon, marked = marked_line.partition(":")
        key = _HEADER_KEYS.get(name) if colon else None
        if key is None:
            key = _header_key(name, number, plain_line)
        if key in seen:
            raise TemplateError(f"the header {name} appears more than once", header=name)
        seen.add(key)
        value = plain_line[len(name) + 1 :].strip(" \t")
        headers.append(_Header(name, key, value, marked.strip(" \t")))
    if "=?" in head or _SUSPICIOUS.search(head) is not None:
        # Rare: find which header holds the suspicious value and say so.
        for header in headers:
            header.value = _checked_value(header)
    return headers


def _check_header_sizes(headers: list[_Header], per_value: int, per_block: int) -> None:
    total = 0
    for header in headers:
        size = _octets(header.value)
        if size > per_value:
            raise ComposeError(
                f"the {header.name} header is {size} octets long; the limit is {per_value}"
                " (limits.max_header_bytes)",
                title="Header too long",
                header=header.name,
            )
        total += len(header.name) + 2 + size
    if total > per_block:
        raise ComposeError(
            f"the header block is {total} octets long; the limit is {per_block}"
            " (limits.max_header_block_bytes)",
            title="Header block too long",
        )


def _octets(text: str) -> int:
    # UTF-8 length without encoding when the answer is plain: ASCII is one octet each.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _header_key(name: str, number: int, line: str) -> str:
    """Validate a header name from a template and return its lower-case key.

    Names come from templates, so there are few of them: valid ones are remembered in
    :data:`_HEADER_KEYS` and later lines skip the checks.
    """
    if _HEADER_NAME.fullmatch(name) is None:
        raise TemplateError(f"header line {number} is not 'Name: value': {line[:80]!r}")
    key = name.lower()
    if key in _GENERATED_BY_US:
        raise TemplateError(f"{name} is chosen by notifier; remove it from the template")
    if len(_HEADER_KEYS) < 4096:
        _HEADER_KEYS[name] = key
    return key


_HEADER_KEYS: dict[str, str] = {}


def _checked_value(header: _Header) -> str:
    header.value = header.value.strip(" \t")
    if CR_MARK in header.marked or LF_MARK in header.marked:
        raise HeaderInjection(f"a value in {header.name} contains a line break", header=header.name)
    value = header.value
    if _FORBIDDEN_IN_HEADER.search(value) is not None:
        raise HeaderInjection(
            f"a value in {header.name} contains a control or line separator character",
            header=header.name,
        )
    if header.key not in ADDRESS_HEADERS and "=?" in value and _ENCODED_WORD.search(value):
        # Address headers are left to the email package's parser, which decodes display
        # names itself; decoding them here would lose their quoting.
        value = _decoded_encoded_words(header.name, value)
    return value


def _decoded_encoded_words(name: str, value: str) -> str:
    # An RFC 2047 encoded-word is decoded by mail readers, so it could smuggle a line
    # break past the checks above. Decode it, check the text, and let the serialiser
    # encode it again where needed.
    try:
        decoded = str(make_header(decode_header(value)))
    except (ValueError, LookupError) as exc:
        raise ComposeError(f"{name} holds a malformed encoded-word: {exc}", header=name) from None
    if _FORBIDDEN_IN_HEADER.search(decoded) is not None:
        raise HeaderInjection(
            f"an encoded-word in {name} hides a line break or control character", header=name
        )
    return decoded


def _strip_data(marked: str) -> str:
    return marked.replace(VALUE_START, "").replace(VALUE_END, "")


# -- addresses ---------------------------------------------------------------------------


def _parse_addresses(header: _Header) -> list[Mailbox]:
    value = header.value
    addresses: list[Mailbox] | None = None
    if "," not in header.marked and ";" not in header.marked and ":" not in header.marked:
        # One mailbox, and without list syntax no value can have added another.
        match = _SIMPLE_MAILBOX.fullmatch(value) if "=?" not in value else None
        if match is not None:
            addresses = [(match["name"] or "", match["angle"] or match["bare"])]
    elif "=?" not in value and _SIMPLE_ADDRESS_LIST.fullmatch(value):
        parsed = [_SIMPLE_MAILBOX.fullmatch(part.strip()) for part in value.split(",")]
        if all(parsed):
            addresses = [_simple_address(match) for match in parsed if match]
            _refuse_added_recipients(header, len(addresses))
    if addresses is None:
        header.fast_path_safe = False
        return _parse_addresses_fully(header)
    for index, (name, addr_spec) in enumerate(addresses):
        local, _, domain = addr_spec.rpartition("@")
        if "xn--" in domain or "XN--" in domain.upper():
            # An A-label must be valid punycode of a valid U-label: IDNA decides.
            domain = _ascii_domain(header.name, domain)
            addresses[index] = (name, f"{local}@{domain}")
        _check_lengths(header.name, local, domain)
    return addresses


def _check_lengths(header: str, local: str, domain: str) -> None:
    """RFC 5321's limits on an address, in octets (``domain`` in its ASCII form)."""
    if len(local) > MAX_LOCAL_PART:
        raise InvalidAddress(
            f"{header}: a local part is {len(local)} octets long; the limit is {MAX_LOCAL_PART}",
            header=header,
        )
    if len(domain) > MAX_DOMAIN:
        raise InvalidAddress(
            f"{header}: a domain is {len(domain)} octets long; the limit is {MAX_DOMAIN}",
            header=header,
        )
    if len(domain) > MAX_LABEL and any(len(label) > MAX_LABEL for label in domain.split(".")):
        raise InvalidAddress(
            f"{header}: a domain has a label longer than {MAX_LABEL} octets", header=header
        )


def _mailbox_texts(header: _Header) -> list[str]:
    """The address list of ``header`` cut into one text per mailbox, in linear time.

    The email package's address parser takes time that grows with the square of the
    text it is given (measured: 0.7 s for 8,000 quote characters), so each mailbox is
    parsed on its own and may be at most :data:`MAX_MAILBOX_BYTES` long. A list that uses
    group syntax (``team: a@x, b@y;``) stays in one piece, within the same cap. Comments
    nested deeper than :data:`MAX_COMMENT_DEPTH` are refused before the parser recurses.
    """
    value = header.value
    if not value.strip(" \t"):
        return []
    texts: list[str] = []
    start = depth = 0
    quoted = angle = group = False
    for token in _ADDRESS_SYNTAX.finditer(value):
        char = token.group()
        if len(char) == 2:  # a quoted pair: the escaped character is plain text
            continue
        if quoted:
            quoted = char != '"'
        elif depth:
            depth += 1 if char == "(" else -1 if char == ")" else 0
        elif char == '"':
            quoted = True
        elif char == "(":
            depth = 1
        elif char in "<>":
            angle = char == "<"
        elif char == ":" and not angle:
            group = True
        elif char == "," and not angle and not group:
            texts.append(value[start : token.start()])
            start = token.end()
        if depth > MAX_COMMENT_DEPTH:
            raise InvalidAddress(
                f"{header.name}: comments are nested more than {MAX_COMMENT_DEPTH} deep",
                header=header.name,
            )
    texts.append(value[start:])
    for text in texts:
        if not text.strip(" \t"):
            raise InvalidAddress(
                f"{header.name} has an empty entry in its list", header=header.name
            )
        if _octets(text) > MAX_MAILBOX_BYTES:
            raise InvalidAddress(
                f"{header.name}: one mailbox is longer than {MAX_MAILBOX_BYTES} octets",
                header=header.name,
            )
    return texts


# Characters that open or close a syntactic unit of an address list, and quoted pairs.
_ADDRESS_SYNTAX = re.compile(r'\\.|["(),<>:]', re.DOTALL)


def _simple_address(match: re.Match[str]) -> Mailbox:
    return (match["name"] or "", match["angle"] or match["bare"])


def _parse_addresses_fully(header: _Header) -> list[Mailbox]:
    parsed_addresses = []
    defects = []
    for text in _mailbox_texts(header):
        parsed = _parse_address_text(header, text)
        parsed_addresses.extend(parsed.addresses)
        defects.extend(parsed.defects)
    # A value that adds recipients also makes the list malformed more often than not;
    # naming the added recipients is the more useful error.
    _refuse_added_recipients(header, len(parsed_addresses))
    if defects:
        raise InvalidAddress(
            f"{header.name} is not a valid address list: {defects[0]}",
            header=header.name,
        )
    addresses: list[Mailbox] = []
    for address in parsed_addresses:
        if _FORBIDDEN_IN_HEADER.search(address.display_name):
            raise HeaderInjection(
                f"a display name in {header.name} hides a control character", header=header.name
            )
        if not address.username or not address.domain:
            raise InvalidAddress(
                f"{header.name}: {str(address)!r} is not a complete address", header=header.name
            )
        if not address.username.isascii():
            raise InvalidAddress(
                f"{header.name}: non-ASCII local parts need SMTPUTF8, which notifier does not send",
                header=header.name,
            )
        domain = _ascii_domain(header.name, address.domain)
        _check_lengths(header.name, address.username, domain)
        if _HOSTNAME.fullmatch(domain) is None and _ADDRESS_LITERAL.fullmatch(domain) is None:
            raise InvalidAddress(
                f"{header.name}: {domain!r} is not a valid domain", header=header.name
            )
        checked = Address(address.display_name, address.username, domain)
        addresses.append((checked.display_name, checked.addr_spec))
    return addresses


def _ascii_domain(header: str, domain: str) -> str:
    """``domain`` in the ASCII form the envelope uses, or :class:`InvalidAddress`.

    International domains are converted by IDNA 2008 with the UTS 46 mapping (the
    ``idna`` package), as browsers and mail clients do: Python's own "idna" codec
    implements IDNA 2003, which maps ``straße.de`` to ``strasse.de``, another domain.
    """
    if not domain.isascii() or "xn--" in domain.lower():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidAddress(
                f"{header}: {domain!r} is not a valid international domain: {exc}",
                header=header,
            ) from None
    return domain


def _parse_address_text(header: _Header, text: str) -> Any:
    try:
        return _PARSE_POLICY.header_factory(header.name, text)
    except ValueError as exc:
        if "CR or LF" in str(exc):  # an encoded-word in a display name hides a line break
            raise HeaderInjection(
                f"an encoded-word in {header.name} hides a line break", header=header.name
            ) from None
        raise InvalidAddress(
            f"{header.name} is not a valid address list", header=header.name
        ) from None
    except (IndexError, TypeError, AttributeError, RecursionError):
        # The email package's address parser raises on some malformed input (for
        # instance "bob@") instead of recording a defect.
        raise InvalidAddress(
            f"{header.name} is not a valid address list", header=header.name
        ) from None


def _refuse_added_recipients(header: _Header, count: int) -> None:
    """Each ``{{ value }}`` in an address header may stand for at most one address.

    The template's own text (literal commas, loops) decides how many addresses a header
    holds; a value such as ``bob@example.com, eve@example.net`` must not add one.
    """
    if _LIST_SYNTAX.search(header.marked) is None:
        return
    spans = _DATA_SPAN.findall(header.marked)
    if not any(_LIST_SYNTAX.search(span) for span in spans):
        return  # without list syntax in the data, the data cannot add an address
    skeleton = _DATA_SPAN.sub("x", header.marked)
    if count > len(getaddresses([skeleton])):
        raise HeaderInjection(
            f"a value in {header.name} adds recipients; each value may hold one address "
            "(write lists with a loop in the template)",
            header=header.name,
        )


def _envelope_recipients(addresses: dict[str, list[Mailbox]]) -> list[str]:
    recipients: list[str] = []
    seen: set[str] = set()
    for key in ENVELOPE_RECIPIENT_HEADERS:
        for _, addr_spec in addresses.get(key, ()):
            folded = addr_spec.lower()
            if folded not in seen:
                seen.add(folded)
                recipients.append(addr_spec)
    return recipients


# -- other structured headers ------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=1024)
def _normalise_date(value: str) -> str:
    try:
        parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        pass
    else:
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ComposeError(
            f"Date {value[:80]!r} is neither an RFC 5322 date nor ISO 8601", header="Date"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment)


def _text_content_type(value: str) -> tuple[str, dict[str, str]]:
    if value == "text/plain":
        return "plain", {}
    parsed = _PARSE_POLICY.header_factory("Content-Type", value)
    if parsed.defects or parsed.maintype != "text":
        raise ComposeError(
            f"Content-Type {value[:80]!r} must be a text/* type (notifier builds multipart "
            "messages itself when a .html.j2 part exists)",
            header="Content-Type",
        )
    # The body is always encoded as UTF-8, whatever charset the template names.
    params = {key: val for key, val in parsed.params.items() if key.lower() != "charset"}
    return parsed.subtype, params


# -- serialisers -------------------------------------------------------------------------


def _fast_serialise(headers: list[_Header], body: str, subtype: str) -> bytes | None:
    """Write the common case directly; None when the ``email`` package is needed.

    The output matches what the ``email`` package writes for the same input (header
    order, ``charset="utf-8"``, ``7bit``, one final line break), so either serialiser may
    handle a message without a difference a reader could see.
    """
    out: list[str] = []
    for header in headers:
        if header.key in _NOT_COPIED:
            continue
        line = f"{header.name}: {header.value}"
        if len(line) > FOLD_COLUMN or not line.isascii() or not header.fast_path_safe:
            return None
        out.append(line)
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.isascii() or _NOT_7BIT_SAFE.search(body) is not None:
        return None
    if len(body) > MAX_LINE_OCTETS and max(map(len, body.split("\n"))) > MAX_LINE_OCTETS:
        return None
    if not body.endswith("\n"):
        body += "\n"
    out.append(f'Content-Type: text/{subtype}; charset="utf-8"')
    out.append("Content-Transfer-Encoding: 7bit")
    out.append("MIME-Version: 1.0")
    out.append("")
    out.append(body.replace("\n", "\r\n"))
    return "\r\n".join(out).encode("ascii")


# Control characters have no place in a 7bit body.
_NOT_7BIT_SAFE = re.compile("[^\t\n\x20-\x7e]")
# Headers the serialisers write themselves (MIME) or never write (Bcc).
_NOT_COPIED = frozenset({"bcc", "content-type", "mime-version"})


def _email_serialise(
    headers: list[_Header],
    addresses: dict[str, list[Mailbox]],
    body: str,
    subtype: str,
    params: dict[str, str],
    html: str | None,
    inline_images: tuple[InlineImage, ...] = (),
) -> bytes:
    message = EmailMessage(policy=_SMTP_POLICY)
    for header in headers:
        if header.key in _NOT_COPIED:
            continue
        mailboxes = addresses.get(header.key)
        if mailboxes is not None:
            message[header.name] = _FoldedAddressHeader(header.name, mailboxes)
        elif _is_unstructured(header.key) and (
            not header.value.isascii() or len(header.name) + 2 + len(header.value) > FOLD_COLUMN
        ):
            message[header.name] = _FoldedTextHeader(header.name, header.value)
        else:
            # Short ASCII text needs neither encoding nor folding: the email package
            # writes it unchanged. Structured headers (Date, Message-ID) it also checks.
            message[header.name] = header.value
    text = "\n".join(_LINE_BREAK.split(body))
    # Control characters (NUL from request data, say) are not 7bit-safe: force an encoding.
    cte = None if _PLAIN_TEXT.fullmatch(text) else "quoted-printable"
    message.set_content(text, subtype=subtype, charset="utf-8", cte=cte, params=params or None)
    if html is not None:
        message.add_alternative("\n".join(_LINE_BREAK.split(html)), subtype="html", charset="utf-8")
        if inline_images:
            _add_related_images(list(message.iter_parts())[-1], inline_images)
        for part in message.walk():
            # add_alternative and add_related copy MIME-Version into the parts; it
            # belongs on top only.
            if part is not message:
                del part["MIME-Version"]
    data = message.as_bytes()
    for line in data.split(b"\r\n"):
        if len(line) > MAX_LINE_OCTETS:
            raise ComposeError("a header cannot be folded within 998 octets per line")
    return data


def _add_related_images(html_part: MIMEPart, images: tuple[InlineImage, ...]) -> None:
    """Turn the HTML part into multipart/related[text/html, image, ...] (RFC 2387), each
    image base64 with the Content-ID its ``cid:`` URL names, shown inline."""
    for image in images:
        maintype, _, subtype = image.content_type.partition("/")
        html_part.add_related(
            image.data,
            maintype,
            subtype,
            cid=f"<{image.content_id}>",
            disposition="inline",
            filename=image.filename,
        )
    # RFC 2387 requires the type of the root part; the email package leaves it out.
    html_part.set_param("type", "text/html")


# The same header classes as the policies' default header factory.
_HEADER_CLASSES = HeaderRegistry()


@functools.lru_cache(maxsize=256)
def _is_unstructured(key: str) -> bool:
    """Whether the email package would write the header as plain text (Subject, X-...),
    not parse it (Date, Message-ID, Content-Disposition, Resent-To)."""
    return issubclass(_HEADER_CLASSES[key], UnstructuredHeader)


class _FoldedTextHeader:
    """An unstructured header encoded and folded by :mod:`notifier.encoded_words`.

    The email package's folder can put a line break between two encoded-words where the
    text had a space, and RFC 2047 readers drop whitespace between encoded-words: the
    space is lost. It also writes encoded-words of 76 and 77 characters (RFC 2047 allows
    75). The message takes this object as an already-built header (``EmailPolicy`` uses
    any value with ``name`` and ``fold``).
    """

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def fold(self, *, policy: policy.Policy) -> str:
        return fold_text(self.name, self._value, linesep=policy.linesep)

    def __str__(self) -> str:
        return self._value


class _FoldedAddressHeader:
    """An address header encoded and folded by :mod:`notifier.encoded_words`.

    The email package loses spaces in non-ASCII display names the same way. When it folds
    a long ASCII display name it can drop the name's quotes, and a name such as
    ``x...x <eve@evil.example>`` then reads as a second address; it also leaves a run of
    spaces in an ASCII name unquoted, which readers take as one space.
    ``email.header.Header`` keeps the spaces but writes encoded-words over 75 characters.
    """

    def __init__(self, name: str, mailboxes: list[Mailbox]) -> None:
        self.name = name
        self._mailboxes = mailboxes

    def fold(self, *, policy: policy.Policy) -> str:
        return fold_mailboxes(self.name, self._mailboxes, linesep=policy.linesep)

    def __str__(self) -> str:
        return ", ".join(str(Address(name, addr_spec=spec)) for name, spec in self._mailboxes)


_PLAIN_TEXT = re.compile("[^\x00-\x08\x0b-\x1f\x7f-\x9f]*")


# -- attachments -------------------------------------------------------------------------

#: Longest attachment file name, in characters (most file systems take 255).
MAX_FILENAME_CHARS = 255
#: Longest attachment media type (RFC 6838 4.2: 127 characters for type and subtype each).
MAX_MEDIA_TYPE_CHARS = 255
#: Input bytes per base64 line: 57 bytes make the 76 characters RFC 2045 6.8 allows.
_BASE64_LINE_BYTES = 57
#: Input bytes encoded per step: big enough for C to do the work, small enough that the
#: intermediate pieces stay small (and that a thread doing this lets the GIL go often).
_BASE64_BLOCK_BYTES = _BASE64_LINE_BYTES * 2048

# Control characters, line and paragraph separators, lone surrogates, and path separators
# have no place in a file name a mail client will save under; nor do the bidirectional
# controls that make "invoice\u202efdp.exe" read as "invoiceexe.pdf", or U+FFFD, what a
# name in a wrong encoding was decoded to.
_FORBIDDEN_IN_FILENAME = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069"
    "\ud800-\udfff\ufffd]"
)
_PATH_SEPARATOR = re.compile(r"[/\\]")
# RFC 6838 4.2: the characters of a type or subtype name.
_RESTRICTED_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"({_RESTRICTED_NAME})/({_RESTRICTED_NAME})")
_CHARSET_PARAMETER = re.compile(
    r";\s*charset\s*=\s*\"?([A-Za-z0-9_.:-]{1,40})\"?\s*(?:;|$)", re.IGNORECASE
)
# RFC 2231 attribute-char (RFC 5987 attr-char): what an extended value writes as itself.
_ATTRIBUTE_CHARS = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&+-.^_`|~"
)
# A file name written as a plain quoted-string: printable ASCII without quote or backslash
# (a backslash-escaped quote is valid, but some clients save it with the backslash).
_PLAIN_FILENAME = re.compile(r"[!#-\[\]-~](?:[ !#-\[\]-~]*[!#-\[\]-~])?")
_HEADER_END = re.compile(rb"\r\n\r\n")


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file to attach to a message: its name, media type and bytes.

    Checked when made: a file name that holds a path separator or a control character,
    or that is empty, ``.``, ``..`` or longer than :data:`MAX_FILENAME_CHARS` once the
    whitespace around it is removed, and a media type that is not ``type/subtype`` (or is
    multipart or message, which cannot be sent base64-encoded), raise
    :class:`InvalidAttachment` (422). An empty ``content_type`` means
    ``application/octet-stream``; only a ``charset`` parameter is kept.
    """

    filename: str
    content_type: str
    content: bytes
    #: SHA-256 of ``content``: computed here when not given (the multipart reader hashes
    #: the bytes as they arrive, so that nothing runs over 10 MiB on the event loop).
    sha256: bytes = b""

    def __post_init__(self) -> None:
        # Readers strip whitespace around a file name (Python's email package, mail
        # clients saving the file): strip it here, so that the name sent is the name read.
        # Control characters are refused before, not stripped (\x1c to \x1f count as
        # whitespace for str.strip).
        _check_filename(self.filename)
        object.__setattr__(self, "filename", self.filename.strip())
        _check_filename(self.filename)
        object.__setattr__(self, "content_type", _attachment_media_type(self.content_type))
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.content).digest())


def _check_filename(filename: str) -> None:
    if not filename:
        raise InvalidAttachment("an attachment needs a file name", filename=filename)
    if len(filename) > MAX_FILENAME_CHARS:
        raise InvalidAttachment(
            f"an attachment's file name is {len(filename)} characters long; the limit is"
            f" {MAX_FILENAME_CHARS}",
            filename=filename[:MAX_FILENAME_CHARS],
        )
    if _FORBIDDEN_IN_FILENAME.search(filename) is not None:
        raise InvalidAttachment(
            "an attachment's file name holds a control character (CR, LF, NUL, a"
            " bidirectional control or another) or U+FFFD",
            filename=filename.encode("ascii", "backslashreplace").decode("ascii"),
        )
    if _PATH_SEPARATOR.search(filename) is not None or filename in (".", ".."):
        raise InvalidAttachment(
            "an attachment's file name must be a name, not a path", filename=filename
        )


def _attachment_media_type(value: str) -> str:
    media_type, _, parameters = value.strip(" \t").partition(";")
    media_type = media_type.strip(" \t").lower()
    if not media_type:
        return "application/octet-stream"
    match = _MEDIA_TYPE.fullmatch(media_type)
    if match is None or len(media_type) > MAX_MEDIA_TYPE_CHARS:
        raise InvalidAttachment(
            f"an attachment's content type {value[:80]!r} is not type/subtype",
            content_type=value[:MAX_MEDIA_TYPE_CHARS],
        )
    if match[1] in ("multipart", "message"):
        # RFC 2046 5: composite types may not be base64-encoded; send the bytes as data.
        raise InvalidAttachment(
            f"an attachment cannot be {match[1]}/*; send it as application/octet-stream",
            content_type=media_type,
        )
    charset = _CHARSET_PARAMETER.search(";" + parameters) if match[1] == "text" else None
    if charset is not None:
        return f'{media_type}; charset="{charset[1].lower()}"'
    return media_type


def attach(data: bytes, attachments: Sequence[Attachment], *, boundary: str | None = None) -> bytes:
    """Composed message bytes with ``attachments`` added: a multipart/mixed message.

    The message's own content (its Content-Type and Content-Transfer-Encoding and its
    body: text, or the multipart/alternative of text and HTML) becomes the first part,
    unchanged; every other header stays on top. Each attachment follows as a base64 part
    (lines of 76 characters) with ``Content-Disposition: attachment``; its file name is
    written per RFC 2231 (``filename*=utf-8''...``, continued over several lines when
    long) and, for clients that only read Content-Type's ``name``, as RFC 2047
    encoded-words there, as Thunderbird writes them. Every line fits in 78 characters.

    ``boundary`` is for tests; by default a random one is chosen. Without attachments,
    ``data`` is returned as it is.
    """
    if not attachments:
        return data
    end = _HEADER_END.search(data)
    if end is None:
        raise ValueError("composed bytes without a header block")
    head, body = data[: end.start() + 2], data[end.end() :]
    top: list[bytes] = []
    content: list[bytes] = []
    for field in _header_fields(head):
        name = field[: field.index(b":")].strip().lower()
        (content if name in (b"content-type", b"content-transfer-encoding") else top).append(field)
    if boundary is None:
        boundary = _new_boundary(body)
    elif f"--{boundary}".encode("ascii") in body:
        raise ValueError("the boundary occurs in the message")
    delimiter = f"\r\n--{boundary}".encode("ascii")
    out = [
        b"".join(top),
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode("ascii"),
        delimiter[2:],
        b"\r\n",
        *content,
        b"\r\n",
        body,
    ]
    for attachment in attachments:
        out += (delimiter, b"\r\n", _attachment_headers(attachment), b"\r\n")
        out += _base64_lines(attachment.content)
    out += (delimiter, b"--\r\n")
    return b"".join(out)


def _header_fields(head: bytes) -> list[bytes]:
    """The header block's fields, each with its continuation lines and final CRLF."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def _new_boundary(body: bytes) -> str:
    # "=_" cannot occur in base64 or quoted-printable text; the random part makes it
    # unguessable for the request data in a 7bit text part.
    while True:
        boundary = f"=_notifier_{os.urandom(12).hex()}"
        if f"--{boundary}".encode("ascii") not in body:
            return boundary


def _attachment_headers(attachment: Attachment) -> bytes:
    filename = attachment.filename
    if _PLAIN_FILENAME.fullmatch(filename) and len(filename) <= FOLD_COLUMN - 13:
        name = f' name="{filename}"'
        disposition = f' filename="{filename}"'
    else:
        name = ' name="' + "\r\n ".join(_encoded_words(filename)) + '"'
        disposition = _rfc2231_parameter("filename", filename)
    return (
        f"Content-Type: {attachment.content_type};\r\n{name}\r\n"
        f"Content-Disposition: attachment;\r\n{disposition}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
    ).encode("ascii")


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 B encoded-words of whole characters, each short enough that
    ``name="`` and the word fit on one line."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        octets = char.encode("utf-8")
        if len(chunk) + len(octets) > 42:  # 42 octets: 56 base64 characters, a 68-char word
            words.append(_b_word(chunk))
            chunk.clear()
        chunk += octets
    words.append(_b_word(chunk))
    return words


def _b_word(octets: bytes | bytearray) -> str:
    return "=?utf-8?b?" + binascii.b2a_base64(octets, newline=False).decode("ascii") + "?="


def _rfc2231_parameter(attribute: str, value: str) -> str:
    """`` attribute*=utf-8''...`` (RFC 2231), as numbered continuations on lines of their
    own when it is too long for one; a continuation never splits a character."""
    pieces = [
        "".join(chr(o) if o in _ATTRIBUTE_CHARS else f"%{o:02X}" for o in char.encode("utf-8"))
        for char in value
    ]
    room = FOLD_COLUMN - len(attribute) - 8  # " attribute*NN*=" and ";"
    whole = "utf-8''" + "".join(pieces)
    if len(whole) <= room:
        return f" {attribute}*={whole}"
    segments = ["utf-8''"]
    for piece in pieces:
        if len(segments[-1]) + len(piece) > room:
            segments.append("")
        segments[-1] += piece
    return ";\r\n".join(f" {attribute}*{number}*={text}" for number, text in enumerate(segments))


def _base64_lines(content: bytes) -> list[bytes]:
    """``content`` in base64, lines of 76 characters ending in CRLF, in blocks.

    ``base64.encodebytes`` would loop over the lines the same way, in one piece, and
    then the line ends would still need a second copy to become CRLF.
    """
    view = memoryview(content)
    blocks: list[bytes] = []
    step = _BASE64_LINE_BYTES
    for start in range(0, len(view), _BASE64_BLOCK_BYTES):
        block = view[start : start + _BASE64_BLOCK_BYTES]
        lines = [binascii.b2a_base64(block[i : i + step]) for i in range(0, len(block), step)]
        blocks.append(b"".join(lines).replace(b"\n", b"\r\n"))
    return blocks
