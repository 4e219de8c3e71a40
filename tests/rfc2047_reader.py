"""A strict reader of RFC 2047 encoded headers, independent of the ``email`` package.

The tests compare what notifier writes with what a reader following the RFCs gets back,
so this reader is written from RFC 5322 (unfolding, phrases, quoted strings) and
RFC 2047 (encoded-words) alone, and it refuses what those RFCs do not allow instead of
guessing: an encoded-word over 75 characters, with empty or badly encoded text, with a Q
character a phrase may not hold, or bytes that are not valid in its charset. The
``email`` package's own readers are no use as the reference here: ``policy.default``
keeps the whitespace between two encoded-words of a display name, and
``email.header.decode_header`` adds or drops spaces next to encoded-words.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

__all__ = [
    "EncodedWordError",
    "decode_mailboxes",
    "decode_text",
    "encoded_words",
    "header_fields",
    "unfold",
]

#: RFC 2047 section 2: "An 'encoded-word' may not be more than 75 characters long".
MAX_ENCODED_WORD = 75

# RFC 2047 section 2: charset and encoding are tokens (no SPACE, CTLs or especials);
# encoded-text is printable ASCII other than "?" and SPACE, at least one character.
_TOKEN = r"[!#$%&'*+\-0-9A-Z^_`a-z{|}~]+"
_ENCODED_WORD = re.compile(
    rf"=\?(?P<charset>{_TOKEN})\?(?P<encoding>{_TOKEN})\?(?P<text>[!->@-~]+)\?="
)
# What a reader may take for an encoded-word even when the grammar above refuses it.
_LOOKS_ENCODED = re.compile(r"=\?[^?\s]*\?[^?\s]*\?[^\s]*\?=")
# RFC 2047 section 5(3): in a phrase, Q text is limited to these characters.
_PHRASE_Q_TEXT = re.compile(r"[A-Za-z0-9!*+\-/=_]+")
_Q_ESCAPE = re.compile(r"=([0-9A-Fa-f]{2})")
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
# A local part is a dot-atom or a quoted-string; these tests need no domain literals.
_ADDR_SPEC = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^\s"()<>,;:\\\[\]@]+)@[^\s"()<>,;:\\\[\]@]+')
_FOLD = re.compile(r"\r\n(?=[ \t])")
_WSP_SPLIT = re.compile(r"([ \t]+)")


class EncodedWordError(ValueError):
    """The header breaks a rule of RFC 2047 or RFC 5322 that a reader relies on."""


def header_fields(data: bytes) -> dict[str, str]:
    """The header fields of a message, keyed by lower-case name, values still folded.

    The value is everything after the colon up to the CRLF that ends the field.
    """
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields: dict[str, str] = {}
    for field in re.split(r"\r\n(?![ \t])", head):
        name, colon, value = field.partition(":")
        if not colon:
            raise EncodedWordError(f"not a header field: {field[:80]!r}")
        fields[name.lower()] = value
    return fields


def unfold(value: str) -> str:
    """RFC 5322 section 2.2.3: unfolding removes each CRLF that is followed by WSP."""
    if re.search(r"\r(?!\n)|(?<!\r)\n|\r\n(?![ \t])", value):
        raise EncodedWordError(f"a line break that is not folding: {value[:80]!r}")
    return _FOLD.sub("", value)


def encoded_words(value: str) -> list[str]:
    """Every run of characters in an unfolded value that a reader may take for an
    encoded-word."""
    return _LOOKS_ENCODED.findall(value)


@dataclass(frozen=True, slots=True)
class _Encoded:
    charset: str
    octets: bytes


def _decode_word(word: str, *, in_phrase: bool) -> _Encoded | None:
    """The octets of an encoded-word, or None when ``word`` is not one."""
    match = _ENCODED_WORD.fullmatch(word)
    if match is None:
        if _LOOKS_ENCODED.fullmatch(word):
            raise EncodedWordError(f"malformed encoded-word {word!r}")
        return None
    if len(word) > MAX_ENCODED_WORD:
        raise EncodedWordError(f"encoded-word of {len(word)} characters: {word!r}")
    encoding, text = match["encoding"].upper(), match["text"]
    if encoding == "B":
        try:
            octets = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error as exc:
            raise EncodedWordError(f"bad base64 in {word!r}: {exc}") from None
    elif encoding == "Q":
        if in_phrase and _PHRASE_Q_TEXT.fullmatch(text) is None:
            raise EncodedWordError(f"Q text with characters a phrase may not hold: {word!r}")
        if re.search(r"=(?![0-9A-Fa-f]{2})", text):
            raise EncodedWordError(f"bad escape in {word!r}")
        octets = _Q_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text.replace("_", " ")).encode(
            "latin-1"
        )
    else:
        raise EncodedWordError(f"unknown encoding in {word!r}")
    # RFC 2231 section 5 allows a language after "*"; it does not change the text.
    return _Encoded(match["charset"].partition("*")[0].lower(), octets)


def _joined(parts: list[str | _Encoded]) -> str:
    """Text of decoded parts: adjacent encoded-words in one charset are one octet string,
    so a character split across two of them still decodes."""
    out: list[str] = []
    pending: list[_Encoded] = []

    def flush() -> None:
        if pending:
            octets = b"".join(part.octets for part in pending)
            try:
                out.append(octets.decode(pending[0].charset))
            except (LookupError, UnicodeDecodeError) as exc:
                raise EncodedWordError(f"undecodable encoded-words: {exc}") from None
            pending.clear()

    for part in parts:
        if isinstance(part, _Encoded):
            if pending and pending[0].charset != part.charset:
                flush()
            pending.append(part)
        else:
            flush()
            out.append(part)
    flush()
    return "".join(out)


def decode_text(value: str) -> str:
    """An unstructured field body (Subject, say) as a reader shows it.

    ``value`` is what follows the colon, folded or not. The whitespace after the colon is
    not part of the text; linear whitespace between two encoded-words is dropped (RFC 2047
    section 6.2); every other character is kept as it is.
    """
    tokens = _WSP_SPLIT.split(unfold(value).lstrip(" \t"))
    parts: list[str | _Encoded] = []
    previous_encoded = False
    for index, token in enumerate(tokens):
        if index % 2:  # whitespace: kept unless it separates two encoded-words
            next_word = tokens[index + 1] if index + 1 < len(tokens) else ""
            if previous_encoded and _decode_word(next_word, in_phrase=False) is not None:
                continue
            parts.append(token)
        elif token:
            encoded = _decode_word(token, in_phrase=False)
            parts.append(token if encoded is None else encoded)
            previous_encoded = encoded is not None
    return _joined(parts)


def decode_mailboxes(value: str) -> list[tuple[str, str]]:
    """An address list of mailboxes as ``(display name, addr-spec)`` pairs.

    Display names are phrases (RFC 5322 section 3.2.5): atoms, quoted strings and
    encoded-words, where whitespace between two words means one space, except between two
    encoded-words, where it means nothing. Groups and comments are not expected and
    raise.
    """
    mailboxes = []
    for mailbox in _split_top_level(unfold(value)):
        opening = _angle_addr_start(mailbox)
        if opening < 0:
            addr_spec = mailbox.strip(" \t")
            if _ADDR_SPEC.fullmatch(addr_spec) is None:
                raise EncodedWordError(f"not a bare addr-spec: {mailbox!r}")
            mailboxes.append(("", addr_spec))
            continue
        phrase, rest = mailbox[:opening], mailbox[opening + 1 :]
        addr_spec, close, after = rest.partition(">")
        if not close or after.strip(" \t"):
            raise EncodedWordError(f"malformed angle-addr in {mailbox!r}")
        mailboxes.append((_decode_phrase(phrase), addr_spec))
    return mailboxes


def _split_top_level(value: str) -> list[str]:
    """Split an address list at the commas outside quoted strings and angle-addrs."""
    items, start, index, in_angle = [], 0, 0, False
    while index < len(value):
        char = value[index]
        if char == '"' and not in_angle:
            index = _end_of_quoted(value, index)
            continue
        if char in "();:":
            raise EncodedWordError(f"comments and groups are not expected: {value[:80]!r}")
        if char == "<":
            in_angle = True
        elif char == ">":
            in_angle = False
        elif char == "," and not in_angle:
            items.append(value[start:index])
            start = index + 1
        index += 1
    items.append(value[start:])
    return items


def _angle_addr_start(mailbox: str) -> int:
    """Index of the "<" that opens the angle-addr outside quoted strings, or -1."""
    index = 0
    while index < len(mailbox):
        if mailbox[index] == '"':
            index = _end_of_quoted(mailbox, index)
        elif mailbox[index] == "<":
            return index
        else:
            index += 1
    return -1


def _end_of_quoted(value: str, start: int) -> int:
    """Index just past the quoted string that opens at ``start``."""
    index = start + 1
    while index < len(value):
        if value[index] == "\\":
            index += 2
        elif value[index] == '"':
            return index + 1
        else:
            index += 1
    raise EncodedWordError(f"unterminated quoted string: {value[start : start + 80]!r}")


def _decode_phrase(phrase: str) -> str:
    words: list[str | _Encoded] = []
    # Whether whitespace came before each word: between words it reads as one space.
    spaced: list[bool] = []
    index, gap = 0, False
    while index < len(phrase):
        char = phrase[index]
        if char in " \t":
            gap = True
            index += 1
            continue
        if char == '"':
            end = _end_of_quoted(phrase, index)
            words.append(re.sub(r"\\(.)", r"\1", phrase[index + 1 : end - 1]))
        else:
            end = index
            while end < len(phrase) and phrase[end] not in ' \t"':
                end += 1
            atom = phrase[index:end]
            encoded = _decode_word(atom, in_phrase=True)
            if encoded is None and _ATEXT.fullmatch(atom) is None:
                raise EncodedWordError(f"not an atom: {atom!r}")
            if encoded is not None and (
                (words and not gap) or (end < len(phrase) and phrase[end] == '"')
            ):
                # RFC 2047 section 5(3): whitespace separates it from any adjacent word.
                raise EncodedWordError(f"encoded-word next to a quoted string: {atom!r}")
            words.append(atom if encoded is None else encoded)
        spaced.append(gap)
        gap = False
        index = end
    parts: list[str | _Encoded] = []
    for position, word in enumerate(words):
        if position and spaced[position]:
            both_encoded = isinstance(word, _Encoded) and isinstance(words[position - 1], _Encoded)
            if not both_encoded:
                parts.append(" ")
        parts.append(word)
    return _joined(parts)
