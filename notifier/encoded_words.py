"""RFC 2047 encoded-words and RFC 5322 folding for header fields that carry text.

:func:`fold_text` writes an unstructured field (Subject, X-anything) and
:func:`fold_mailboxes` an address list with display names; both return the whole field,
``Name: value`` and its line break, folded, in ASCII.

What every value keeps, whatever it holds:

* Words stay as they are while they are printable ASCII (in a display name: RFC 5322
  atom characters), hold no ``=?`` (a reader could take them for an encoded-word), fit on
  a line and have a single space on each side. From the first word that does not to the
  last, the text is encoded whole, the whitespace in it included: whitespace that
  separates two encoded-words is dropped by readers (RFC 2047 section 6.2), so no
  whitespace of the value may sit between two of them. A display name of ASCII that only
  needs quoting (``Smith, Bob``) is written as a quoted-string instead, when it is short.
* Lines fold only at the single spaces between those pieces, so a fold is always CRLF,
  one space, then a word: unfolding (removing the CRLF) gives back the value, and so does
  a reader that turns a line break and all the whitespace after it into one space
  (nodemailer's mailparser does). Literal words are at most 76 characters and
  encoded-words at most 75 (RFC 2047 section 2), so every line fits in 78 characters,
  however long the value (an addr-spec is written whole).
* Encoded-words split the UTF-8 text only between characters, never inside one
  character's bytes; two code points of one grapheme (an emoji and its skin tone, a
  letter and its combining mark) may land in two adjacent encoded-words, which readers
  join.

Encoding: all encoded-words are ``utf-8``. A run uses Q when that is no longer than B for
the whole run (mostly-Latin text stays legible in the raw message), otherwise B. Q writes
only letters, digits and ``!*+-/`` as themselves, the characters RFC 2047 section 5(3)
allows in a display name, so the same encoder serves both kinds of field.

The work is linear in the length of the value: one split into words, one UTF-8 encoding,
and a constant amount of Python-level work per literal word and per encoded-word.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["FOLD_COLUMN", "MAX_ENCODED_WORD", "fold_mailboxes", "fold_text"]

#: RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters, excluding CRLF.
FOLD_COLUMN = 78
#: RFC 2047 section 2: an encoded-word is at most 75 characters long.
MAX_ENCODED_WORD = 75
# A literal word must fit on a line of its own, after the folding space.
_MAX_LITERAL = FOLD_COLUMN - 2

_B_PREFIX, _Q_PREFIX, _SUFFIX = "=?utf-8?b?", "=?utf-8?q?", "?="
_OVERHEAD = len(_B_PREFIX) + len(_SUFFIX)

_WHITESPACE = re.compile(r"([ \t]+)")
# Words that may stay literal: printable ASCII (in a phrase, atom characters), no "=?"
# (a reader could take it for the start of an encoded-word), short enough for a line.
_TEXT_WORD = re.compile(rf"(?:[!-<>-~]|=(?!\?)){{1,{_MAX_LITERAL}}}")
_ATOM = re.compile(rf"(?:[A-Za-z0-9!#$%&'*+/?^_`{{|}}~-]|=(?!\?)){{1,{_MAX_LITERAL}}}")
# What a quoted-string may hold as it is: printable ASCII, spaces and tabs.
_QUOTABLE = re.compile(r"[!-~]+(?:[ \t]+[!-~]+)*")

_Q_LITERAL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/"
# The Q form of each octet: itself, "_" for a space, "=XX" for anything else.
_Q_FORMS = [
    chr(octet) if octet in _Q_LITERAL else "_" if octet == 0x20 else f"={octet:02X}"
    for octet in range(256)
]
# Octets whose Q form is one character (deleting them leaves the ones that take three).
_Q_SHORT = _Q_LITERAL + b" "
# The Q form of a UTF-8 continuation octet (0x80-0xBF): a cut may not fall before one.
_Q_CONTINUATION = re.compile("=[89AB][0-9A-F]")

Mailbox = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """Text to be written as one or more adjacent encoded-words."""

    text: str


_Piece = str | _Encoded


def fold_text(name: str, value: str, *, linesep: str = "\r\n") -> str:
    """The unstructured field ``name: value``, encoded and folded, ending in ``linesep``.

    Every character of ``value`` comes back to an RFC 2047 reader, spaces and tabs
    included (at the ends too, though callers usually strip those).
    """
    return _fold(name, _pieces(value, _TEXT_WORD), linesep)


def fold_mailboxes(name: str, mailboxes: Sequence[Mailbox], *, linesep: str = "\r\n") -> str:
    """The address field ``name: mailbox, ...``, encoded and folded, ending in ``linesep``.

    ``mailboxes`` are ``(display name, addr-spec)`` pairs, the display name "" for none;
    an addr-spec must already be valid ASCII (quoted where needed), it is written as it
    is. A display name comes back exactly to an RFC 2047 reader: plain words, a
    quoted-string when it is ASCII that needs quoting and is short, encoded-words
    otherwise.
    """
    pieces: list[_Piece] = []
    last = len(mailboxes) - 1
    for index, (display_name, addr_spec) in enumerate(mailboxes):
        comma = "," if index < last else ""
        if display_name:
            pieces += _phrase(display_name)
            pieces.append(f"<{addr_spec}>{comma}")
        else:
            pieces.append(addr_spec + comma)
    return _fold(name, pieces, linesep)


def _phrase(display_name: str) -> list[_Piece]:
    pieces = _pieces(display_name, _ATOM)
    if all(isinstance(piece, str) for piece in pieces):
        return pieces
    # ASCII that only needs quoting reads better quoted than encoded: "Smith, Bob".
    quoted = '"' + display_name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if (
        len(quoted) <= _MAX_LITERAL
        and "=?" not in display_name
        and _QUOTABLE.fullmatch(display_name) is not None
    ):
        return [quoted]
    return pieces


def _pieces(value: str, literal_word: re.Pattern[str]) -> list[_Piece]:
    """Split ``value`` into literal words and one run to encode, to be joined by single
    spaces: the run goes from the first word that cannot stay literal to the last.

    One run rather than one per stretch of such words: "é a é a é ..." would otherwise
    give an encoded-word per character, several times longer, and as many Python-level
    steps as characters on values of up to a megabyte. The per-word checks run in
    ``map`` and comprehensions for the same reason.
    """
    core = value.strip(" \t")
    if not core:
        return [_Encoded(value)] if value else []
    lead = value[: len(value) - len(value.lstrip(" \t"))]
    trail = value[len(value.rstrip(" \t")) :]
    parts = _WHITESPACE.split(core)  # word, whitespace, word, ..., word
    words = parts[0::2]
    single = [gap == " " for gap in parts[1::2]]
    literal = [
        bool(match) and before and after
        for match, before, after in zip(
            map(literal_word.fullmatch, words),
            [not lead, *single],
            [*single, not trail],
            strict=True,
        )
    ]
    if all(literal):
        return list(words)
    first = literal.index(False)
    last = len(literal) - 1 - literal[::-1].index(False)
    text = "".join(parts[2 * first : 2 * last + 1])
    if first == 0:
        text = lead + text
    if last == len(words) - 1:
        text += trail
    return [*words[:first], _Encoded(text), *words[last + 1 :]]


def _fold(name: str, pieces: list[_Piece], linesep: str) -> str:
    out = [name, ":"]
    column = len(name) + 1
    for piece in pieces:
        if isinstance(piece, str):
            if column + 1 + len(piece) > FOLD_COLUMN:
                out.append(linesep)
                column = 0
            out += (" ", piece)
            column += 1 + len(piece)
        else:
            column = _write_encoded(piece.text, out, column, linesep)
    out.append(linesep)
    return "".join(out)


def _write_encoded(text: str, out: list[str], column: int, linesep: str) -> int:
    """Append ``text`` as encoded-words (each after a space, folding where a line is
    full) and return the column the last line ends at."""
    octets = text.encode("utf-8")
    size = len(octets)
    long_forms = len(octets.translate(None, _Q_SHORT))
    use_q = size + 2 * long_forms <= -(-size // 3) * 4
    quoted = "".join(map(_Q_FORMS.__getitem__, octets)) if use_q else ""
    start, end = 0, len(quoted) if use_q else size
    while start < end:
        room = min(MAX_ENCODED_WORD, FOLD_COLUMN - column - 1) - _OVERHEAD
        cut = _q_cut(quoted, start, room) if use_q else _b_cut(octets, start, room)
        if cut == start:  # not even one character fits on this line
            out.append(linesep)
            column = 0
            continue
        if use_q:
            word = _Q_PREFIX + quoted[start:cut] + _SUFFIX
        else:
            encoded = binascii.b2a_base64(octets[start:cut], newline=False)
            word = _B_PREFIX + encoded.decode("ascii") + _SUFFIX
        out += (" ", word)
        column += 1 + len(word)
        start = cut
    return column


def _b_cut(octets: bytes, start: int, room: int) -> int:
    """Where a B encoded-word of at most ``room`` characters of text starting at octet
    ``start`` ends: on a character boundary, ``start`` when none fits."""
    if room < 4:
        return start
    cut = start + room // 4 * 3
    if cut >= len(octets):
        return len(octets)
    while cut > start and 0x80 <= octets[cut] < 0xC0:  # inside a UTF-8 sequence
        cut -= 1
    return cut


def _q_cut(quoted: str, start: int, room: int) -> int:
    """Where a Q encoded-word of at most ``room`` characters starting at ``start`` of
    the Q text ends: after a whole ``=XX``, on a character boundary, ``start`` when none
    fits."""
    if room <= 0:
        return start
    cut = start + room
    if cut >= len(quoted):
        return len(quoted)
    # "=" only ever opens an escape, so one in the last two places would be cut through.
    if quoted[cut - 1] == "=":
        cut -= 1
    elif cut - 2 >= start and quoted[cut - 2] == "=":
        cut -= 2
    while cut > start and _Q_CONTINUATION.match(quoted, cut):
        cut -= 3
    return cut
