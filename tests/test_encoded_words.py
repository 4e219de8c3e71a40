"""notifier.encoded_words: every value comes back exactly to a strict RFC 2047 reader."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from notifier.encoded_words import MAX_ENCODED_WORD, fold_mailboxes, fold_text
from tests import header_samples, rfc2047_reader

# Header names of every length up to where "Name: " leaves too little room for even one
# encoded-word on the first line.
names = st.text(st.sampled_from("ABCXYZabcxyz-"), min_size=1, max_size=70).map(
    lambda name: "X" + name
)
# Values as the encoder may meet them: compose strips spaces and tabs at both ends, but
# the encoder must not need it.
values = header_samples.header_values() | st.builds(
    lambda lead, value, trail: lead + value + trail,
    st.sampled_from(["", " ", "\t", "  "]),
    header_samples.header_values(),
    st.sampled_from(["", " ", "\t", " \t"]),
)


def field_value(field: str, name: str) -> str:
    """What follows ``Name:`` in a field written with CRLF, without the final CRLF."""
    assert field.startswith(f"{name}:")
    assert field.endswith("\r\n")
    return field[len(name) + 1 : -2]


def assert_well_formed(field: str) -> None:
    assert field.isascii()
    lines = field[:-2].split("\r\n")
    assert max(len(line) for line in lines) <= 78, field
    # Every fold is CRLF, one space, then a word: readers that turn a line break and the
    # whitespace after it into one space get the same text as RFC 5322 unfolding.
    assert all(re.match(r" [^ \t]", line) for line in lines[1:]), field
    for word in rfc2047_reader.encoded_words(rfc2047_reader.unfold(field[:-2])):
        assert len(word) <= MAX_ENCODED_WORD
        # A cut never falls inside a UTF-8 sequence: each word decodes on its own (the
        # reader raises on bytes that are not UTF-8).
        assert rfc2047_reader.decode_text(" " + word) != word


@settings(max_examples=1000, deadline=None)
@given(name=names, value=values)
@example(name="Subject", value=header_samples.EXAMPLE_SUBJECT)
@example(name="X-Campaign-Reference-Title", value="Re: " + header_samples.EXAMPLE_SUBJECT)
@example(name="Subject", value="a  b\u00e9   c\t")
@example(name="Subject", value=" \t ")
def test_text_comes_back_exactly(name: str, value: str) -> None:
    field = fold_text(name, value)
    assert_well_formed(field)
    # Whitespace at the ends comes back too: a reader cannot tell it from the space
    # after the colon unless it is encoded, so it is.
    assert rfc2047_reader.decode_text(field_value(field, name)) == value


def test_leading_and_trailing_whitespace_is_encoded() -> None:
    field = fold_text("Subject", " \tdone ")
    assert field == "Subject: =?utf-8?q?_=09done_?=\r\n"
    assert rfc2047_reader.decode_text(field_value(field, "Subject")) == " \tdone "


@pytest.mark.parametrize("subject", header_samples.TRICKY_SUBJECTS)
def test_tricky_subjects_come_back_exactly(subject: str) -> None:
    field = fold_text("Subject", subject)
    assert_well_formed(field)
    assert rfc2047_reader.decode_text(field_value(field, "Subject")) == subject


def test_the_space_before_a_fold_travels_inside_an_encoded_word() -> None:
    # The bug report: the space before "ż" ended up between two encoded-words.
    field = fold_text("Comments", "Ünï " + header_samples.EXAMPLE_SUBJECT)
    assert "?=\r\n =?" in field
    assert rfc2047_reader.decode_text(field_value(field, "Comments")) == (
        "Ünï " + header_samples.EXAMPLE_SUBJECT
    )


def test_ascii_words_around_encoded_text_stay_legible() -> None:
    field = fold_text("Subject", "Your order — 🍔 is ready")
    assert field == "Subject: Your order =?utf-8?b?4oCUIPCfjZQ=?= is ready\r\n"


def test_words_between_two_encoded_words_are_encoded_with_them() -> None:
    # One run from the first encoded word to the last: a word and its spaces between two
    # encoded-words cannot stay outside them.
    field = fold_text("Subject", "é a é")
    assert field == "Subject: =?utf-8?b?w6kgYSDDqQ==?=\r\n"


def test_the_shorter_of_q_and_b_is_used() -> None:
    # Q: 4 of 27 octets take three characters (35 in all); B: 36 characters.
    assert fold_text("Subject", "é with some plain words é") == (
        "Subject: =?utf-8?q?=C3=A9_with_some_plain_words_=C3=A9?=\r\n"
    )
    # Q: 4 of 7 octets take three characters (15); B: 12.
    assert fold_text("Subject", "Grüße") == "Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"
    assert fold_text("Subject", "日本語") == "Subject: =?utf-8?b?5pel5pys6Kqe?=\r\n"


@pytest.mark.parametrize("word", ["=?utf-8?q?x?=", "=?", "a=?b", "=?utf-8?b?"])
def test_text_a_reader_could_take_for_an_encoded_word_is_encoded(word: str) -> None:
    field = fold_text("Subject", f"é {word} end")
    assert f" {word} " not in field
    assert rfc2047_reader.decode_text(field_value(field, "Subject")) == f"é {word} end"


def test_ascii_text_that_only_needs_folding_folds_at_spaces() -> None:
    value = " ".join(["word"] * 30)
    field = fold_text("Subject", value)
    assert "=?" not in field
    assert field.replace("\r\n", "") == f"Subject: {value}"
    assert_well_formed(field)


def test_a_long_ascii_word_is_encoded_to_fit_lines() -> None:
    field = fold_text("Subject", "see " + "x" * 200)
    assert_well_formed(field)
    assert field.startswith("Subject: see =?utf-8?q?xxx")


def test_a_megabyte_value_round_trips() -> None:
    # Linear work: a quadratic step would take minutes here (bench numbers in the
    # module docstring's terms: well under a second).
    value = ("żřżœřéřçÄü ab  🥤 " * 60_000)[:1_000_000]
    field = fold_text("Subject", value)
    assert max(len(line) for line in field.split("\r\n")) <= 78
    assert rfc2047_reader.decode_text(field_value(field, "Subject")) == value


# -- address lists -----------------------------------------------------------------------

addr_specs = st.sampled_from(["a@example.com", "bob.smith@mail.example.org", '"j d"@x.example'])
mailbox_lists = st.lists(
    st.tuples(header_samples.header_values().map(lambda name: name.strip(" \t")), addr_specs),
    min_size=1,
    max_size=4,
)


@settings(max_examples=500, deadline=None)
@given(
    name=st.sampled_from(["From", "To", "Reply-To", "X-Other-Long-Address-Name"]),
    mailboxes=mailbox_lists,
)
@example(
    name="From", mailboxes=[("Łukasz Żółć Świętochłowice Główny Dział Obsługi", "a@b.example")]
)
@example(name="To", mailboxes=[(name, "a@example.com") for name in header_samples.TRICKY_NAMES])
def test_display_names_come_back_exactly(name: str, mailboxes: list[tuple[str, str]]) -> None:
    field = fold_mailboxes(name, mailboxes)
    assert_well_formed(field)
    assert rfc2047_reader.decode_mailboxes(field_value(field, name)) == mailboxes


def test_plain_and_quoted_ascii_names_stay_legible() -> None:
    field = fold_mailboxes(
        "To", [("Bob Smith", "b@x.example"), ("Smith, Bob", "s@x.example"), ("", "c@x.example")]
    )
    assert field == 'To: Bob Smith <b@x.example>, "Smith, Bob" <s@x.example>, c@x.example\r\n'


def test_runs_of_spaces_in_an_ascii_name_are_quoted() -> None:
    # Unquoted, "a  b" reads as "a b": whitespace between atoms means one space.
    assert fold_mailboxes("To", [("a  b", "c@x.example")]) == 'To: "a  b" <c@x.example>\r\n'


def test_a_long_name_cannot_pass_for_a_second_address() -> None:
    display_name = "x" * 80 + " <eve@evil.example>"
    field = fold_mailboxes("From", [(display_name, "shop@example.com")])
    assert "<eve@evil.example>" not in field
    assert rfc2047_reader.decode_mailboxes(field_value(field, "From")) == [
        (display_name, "shop@example.com")
    ]


def test_q_in_a_display_name_uses_only_what_a_phrase_allows() -> None:
    field = fold_mailboxes("From", [('Zoë (the "boss"), x_y=z?', "z@x.example")])
    for word in rfc2047_reader.encoded_words(field):
        if word.lower().startswith("=?utf-8?q?"):
            assert re.fullmatch(r"[A-Za-z0-9!*+\-/=_]+", word[10:-2]), word
    assert rfc2047_reader.decode_mailboxes(field_value(field, "From")) == [
        ('Zoë (the "boss"), x_y=z?', "z@x.example")
    ]
