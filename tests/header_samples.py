"""Header text that is hard to encode: the pieces the RFC 2047 tests build values from.

Emoji with ZWJ sequences and skin tones, combining marks, right-to-left scripts, CJK,
punctuation that RFC 5322 gives a meaning to, runs of spaces and tabs. Both the
Hypothesis strategy and the seeded random samples (for the mailparser corpus, which has
to be built without Hypothesis) join the same pieces.
"""

from __future__ import annotations

import random

from hypothesis import strategies as st

__all__ = [
    "EXAMPLE_SUBJECT",
    "MAX_LENGTH",
    "TRICKY_NAMES",
    "TRICKY_SUBJECTS",
    "header_values",
    "random_header_value",
]

#: The subject from the bug report: one message in five lost a space with it.
EXAMPLE_SUBJECT = "🥤🎉👍 ξ żřżœřéřçÄü رايحيامحاح"
MAX_LENGTH = 300

_EMOJI = ["🥤", "🎉", "👍", "👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "👩🏽‍💻", "🧑‍🤝‍🧑", "🇨🇭", "❤️", "🍔"]
_COMBINING = [
    "e\u0301",
    "a\u0308\u0323",
    "Z\u0324\u030a",
    "n\u0303",
    "\u0915\u094d\u0937",
    "\u0301",
]
_RTL = ["رايحيامحاح", "مرحبا", "שלום", "עִבְרִית", "\u200fشكرا\u200f", "\u202bابجد\u202c"]  # noqa: RUF001
_CJK = ["漢字", "日本語のテキスト", "한국어", "中文标题", "ｶﾀｶﾅ", "、", "。"]
_LATIN = ["ξ", "żřżœřéřçÄü", "Zoë", "Ünïcödé", "Główny", "Straße", "Œuvre", "ǅ"]
_ASCII = ["Your", "order", "a", "Re:", "Bob", "O'Neil", "x" * 80, "=?", "?=", "=?utf-8?", "_"]
_PUNCTUATION = list(",.\"()<>@;:\\?=_!'-/*+#%[]&~`|{}^$")
_PIECES = _EMOJI + _COMBINING + _RTL + _CJK + _LATIN + _ASCII + _PUNCTUATION
# The empty separator glues pieces into one word: punctuation next to letters, long words.
_SEPARATORS = [" ", " ", " ", "", "", "  ", "   ", "\t", " \t ", "\u00a0", "\u3000"]
# Characters notifier refuses in header values (422): controls but tab, line and
# paragraph separators, U+FEFF and the noncharacters it uses as markers.
_REFUSED = "".join(map(chr, [*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0)]))
_REFUSED += "\u2028\u2029\ufeff" + "".join(map(chr, range(0xFDD0, 0xFDF0)))

TRICKY_SUBJECTS = [
    EXAMPLE_SUBJECT,
    "Re: " + EXAMPLE_SUBJECT,
    "Ihre Bestellung — 🍔 bereit",
    "a  b\u00e9   c",
    'Zoë,\t"the" (boss) <here>',
    "ab" * 40 + " é",
    "é" + " " * 120 + "é",
    "x" * 200 + "é",
    "👨‍👩‍👧‍👦" * 30,
    "=?utf-8?q?not an encoded-word? é =? ?=",
    "טקסט עברי and English mixed ووو العربية 123",
    "日本語のテキスト、とても長い件名です。" * 6,
    "e\u0301" * 120,
]
TRICKY_NAMES = [
    "Łukasz Żółć Świętochłowice Główny Dział Obsługi",
    'Zoë, "the" <boss>',
    "Smith, Bob",
    "a  b",
    "a\tb",
    "O'Neil (Sales) é",
    "Bob 🍔",
    '\\ " é "',
    "=?? é",
    "محمد بن سلمان",
    "👩🏽‍💻 " * 20,
    "Ä" * 200,
]


def _join(parts: list[tuple[str, str]]) -> str:
    return "".join(piece + separator for piece, separator in parts)[:MAX_LENGTH]


_any_character = st.characters(codec="utf-8", exclude_characters=_REFUSED)


def header_values() -> st.SearchStrategy[str]:
    """Header values a request may send, up to 300 characters."""
    piece = st.one_of(
        st.sampled_from(_PIECES),
        st.text(st.sampled_from("abcXYZ019"), min_size=1, max_size=12),
        st.text(_any_character, min_size=1, max_size=8),
    )
    return st.one_of(
        st.lists(st.tuples(piece, st.sampled_from(_SEPARATORS)), max_size=60).map(_join),
        st.text(_any_character, max_size=MAX_LENGTH),
    )


def random_header_value(rng: random.Random) -> str:
    """The same kind of value from a seeded generator, for tests that cannot use
    Hypothesis."""
    parts = []
    for _ in range(rng.randint(1, 40)):
        kind = rng.random()
        if kind < 0.7:
            piece = rng.choice(_PIECES)
        elif kind < 0.85:
            piece = "".join(rng.choices("abcXYZ019", k=rng.randint(1, 12)))
        else:
            piece = "".join(_random_character(rng) for _ in range(rng.randint(1, 8)))
        parts.append((piece, rng.choice(_SEPARATORS)))
    return _join(parts)


def _random_character(rng: random.Random) -> str:
    while True:
        code = rng.choice(
            [rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0x10FFFF)]
        )
        char = chr(code)
        if not 0xD800 <= code <= 0xDFFF and char not in _REFUSED:
            return char
