"""compose_message: header block rules, envelope, encodings, and the checks on values."""

from __future__ import annotations

import email
import re
from collections.abc import Callable
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from notifier.compose import ComposedMessage
from notifier.errors import ComposeError, HeaderInjection, InvalidAddress, TemplateError
from notifier.renderer import Renderer
from notifier.settings import Settings
from notifier.templates import TemplateStore

FIXED_NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)

Render = Callable[..., ComposedMessage]


@pytest.fixture
def render(tmp_path: Path) -> Render:
    """Write a template and render it: ``render(source, context, default_from=None)``."""
    directory = tmp_path / "tpl"
    directory.mkdir()

    def _render(
        source: str,
        context: dict[str, Any] | None = None,
        *,
        html: str | None = None,
        default_from: str | None = None,
    ) -> ComposedMessage:
        (directory / "t.j2").write_text(source, encoding="utf-8")
        if html is not None:
            (directory / "t.html.j2").write_text(html, encoding="utf-8")
        renderer = Renderer(
            templates=TemplateStore(directory, clock=lambda: FIXED_NOW),
            message_id_domain="mail.example.org",
            default_from=default_from,
            clock=lambda: FIXED_NOW,
        )
        return renderer.render("t", context or {})

    return _render


def parse(composed: ComposedMessage) -> EmailMessage:
    message = email.message_from_bytes(composed.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage) -> str:
    content: str = message.get_content()
    return content.replace("\r\n", "\n")


BASIC = "From: a@example.com\nTo: {{ to }}\nSubject: {{ subject }}\n\nHello\n"


def test_bcc_is_in_the_envelope_only(render: Render) -> None:
    composed = render(
        "From: a@example.com\nTo: b@example.com\nCc: c@example.com\nBcc: {{ hidden }}\n"
        "Subject: s\n\nbody\n",
        {"hidden": "secret@example.com"},
    )
    assert composed.recipients == ["b@example.com", "c@example.com", "secret@example.com"]
    assert composed.sender == "a@example.com"
    assert b"secret@example.com" not in composed.data
    assert b"Bcc" not in composed.data


def test_envelope_recipients_are_deduplicated(render: Render) -> None:
    composed = render(
        "From: a@example.com\nTo: b@example.com\nCc: B@example.com\nBcc: b@example.com\n\nx"
    )
    assert composed.recipients == ["b@example.com"]


def test_recipients_from_a_loop_are_allowed(render: Render) -> None:
    composed = render(
        "From: a@example.com\n"
        "To: {% for r in people %}{{ r }}{% if not loop.last %}, {% endif %}{% endfor %}\n\nx",
        {"people": ["b@example.com", "Carol <c@example.com>", "d@example.com"]},
    )
    assert composed.recipients == ["b@example.com", "c@example.com", "d@example.com"]


def test_defaults_from_is_used_when_the_template_has_no_from(render: Render) -> None:
    composed = render("To: b@example.com\nSubject: s\n\nx", default_from="Shop <shop@example.com>")
    assert composed.sender == "shop@example.com"
    assert parse(composed)["From"] == "Shop <shop@example.com>"


def test_no_from_and_no_default_is_an_error(render: Render) -> None:
    with pytest.raises(ComposeError, match="From"):
        render("To: b@example.com\n\nx")


def test_no_recipients_is_an_error(render: Render) -> None:
    with pytest.raises(ComposeError, match="recipients"):
        render("From: a@example.com\nSubject: s\n\nx")


def test_date_message_id_and_mime_version_are_added(render: Render) -> None:
    message = parse(render(BASIC, {"to": "b@example.com", "subject": "s"}))
    assert message["Date"] == "Sat, 21 Nov 2026 12:00:00 +0000"
    assert message["Message-ID"].endswith("@mail.example.org>")
    assert message["MIME-Version"] == "1.0"


def test_template_message_id_is_kept_and_checked(render: Render) -> None:
    source = "From: a@example.com\nTo: b@example.com\nMessage-ID: {{ mid }}\n\nx"
    assert render(source, {"mid": "<order-1@shop.example>"}).message_id == "<order-1@shop.example>"
    with pytest.raises(ComposeError):
        render(source, {"mid": "order-1"})


def test_invalid_date_is_an_error(render: Render) -> None:
    with pytest.raises(ComposeError, match="Date"):
        render("From: a@example.com\nTo: b@example.com\nDate: {{ date }}\n\nx", {"date": "soon"})


def test_trailing_whitespace_on_header_lines_is_ignored(render: Render) -> None:
    # The printed copy of the burger template has a trailing space on every line.
    source = "From: {{ from }} \nTo: {{ to }} \nSubject: {{ subject }}\t \n \nHello \n"
    message = parse(
        render(source, {"from": "a@example.com", "to": "b@example.com", "subject": "s"})
    )
    assert message["From"] == "a@example.com"
    assert message["Subject"] == "s"
    assert body(message) == "Hello \n"


def test_whitespace_only_line_ends_the_header_block(render: Render) -> None:
    message = parse(render("From: a@example.com\nTo: b@example.com\n \t\nX-Not: a header\n"))
    assert "X-Not" not in message
    assert body(message) == "X-Not: a header\n"


def test_folded_header_lines_are_unfolded(render: Render) -> None:
    message = parse(render("From: a@example.com\nTo: b@example.com\nSubject: one\n  two\n\nx"))
    assert message["Subject"] == "one  two"


def test_duplicate_header_is_refused(render: Render) -> None:
    with pytest.raises(TemplateError, match="more than once"):
        render("From: a@example.com\nTo: b@example.com\nSubject: a\nSubject: b\n\nx")


def test_content_transfer_encoding_belongs_to_notifier(render: Render) -> None:
    with pytest.raises(TemplateError, match="Content-Transfer-Encoding"):
        render("From: a@example.com\nTo: b@example.com\nContent-Transfer-Encoding: 8bit\n\nx")


def test_data_cannot_choose_a_header_name(render: Render) -> None:
    with pytest.raises(TemplateError):
        render("From: a@example.com\nTo: b@example.com\n{{ name }}: x\n\nbody", {"name": "Bcc"})


def test_html_content_type_is_honoured(render: Render) -> None:
    message = parse(
        render("From: a@example.com\nTo: b@example.com\nContent-Type: text/html\n\n<p>hi</p>")
    )
    assert message.get_content_type() == "text/html"
    assert message.get_content_charset() == "utf-8"


def test_non_text_content_type_is_refused(render: Render) -> None:
    with pytest.raises(ComposeError, match="text/"):
        render("From: a@example.com\nTo: b@example.com\nContent-Type: image/png\n\nx")


def test_non_ascii_subject_and_display_name_are_rfc2047_encoded(render: Render) -> None:
    composed = render(
        "From: {{ sender | mailbox('Zoë Café') }}\nTo: b@example.com\nSubject: {{ subject }}\n\n"
        "Grüße\n",
        {"sender": "zoe@example.com", "subject": "Ihre Bestellung — 🍔 bereit"},
    )
    assert composed.data.isascii()
    message = parse(composed)
    assert message["Subject"] == "Ihre Bestellung — 🍔 bereit"
    assert message["From"].addresses[0].display_name == "Zoë Café"
    assert body(message) == "Grüße\n"
    assert b"=?utf-8?" in composed.data


def test_long_body_lines_stay_within_998_octets(render: Render) -> None:
    composed = render("From: a@example.com\nTo: b@example.com\n\n{{ text }}", {"text": "y" * 5000})
    assert max(len(line) for line in composed.data.split(b"\r\n")) <= 998
    assert body(parse(composed)) == "y" * 5000 + "\n"


def test_idn_domain_is_encoded(render: Render) -> None:
    composed = render(BASIC, {"to": "bob@bücher.example", "subject": "s"})
    assert composed.recipients == ["bob@xn--bcher-kva.example"]


def test_non_ascii_local_part_is_refused(render: Render) -> None:
    with pytest.raises(InvalidAddress, match="non-ASCII"):
        render(BASIC, {"to": "bøb@example.com", "subject": "s"})


def test_comma_in_a_display_name_value_is_refused(render: Render) -> None:
    source = "From: a@example.com\nTo: {{ name }} <{{ email }}>\n\nx"
    with pytest.raises(HeaderInjection, match="adds recipients"):
        render(source, {"name": "Smith, Bob", "email": "bob@example.com"})


def test_mailbox_filter_quotes_a_display_name(render: Render) -> None:
    composed = render(
        "From: a@example.com\nTo: {{ email | mailbox(name) }}\n\nx",
        {"name": "Smith, Bob", "email": "bob@example.com"},
    )
    assert composed.recipients == ["bob@example.com"]
    assert parse(composed)["To"].addresses[0].display_name == "Smith, Bob"


def test_multipart_alternative_has_both_parts(render: Render) -> None:
    composed = render(
        "From: a@example.com\nTo: b@example.com\nSubject: s\n\nHello {{ who }}\n",
        {"who": "<Bob>"},
        html="<p>Hello {{ who }}</p>",
    )
    message = parse(composed)
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None
    assert html_part is not None
    assert body(text_part) == "Hello <Bob>\n"
    assert body(html_part) == "<p>Hello &lt;Bob&gt;</p>\n"


def test_settings_domain_reaches_message_id(tmp_path: Path) -> None:
    settings = Settings.from_mapping(
        {
            "templates": {"dir": str(Path(__file__).parent.parent / "templates")},
            "message_id_domain": "notify.example.net",
            "limits": {"allowed_senders": ["@example-shop.com"]},
        }
    )
    renderer = Renderer.from_settings(settings)
    example = renderer.templates.example("burger_receipt")
    assert example is not None
    assert renderer.render("burger_receipt", example).message_id.endswith("@notify.example.net>")


def test_long_non_ascii_display_name_keeps_its_spaces(render: Render) -> None:
    # The email package's own folder would break the line between two encoded-words at
    # the space in "Główny Dział", and RFC 2047 readers drop that whitespace.
    name = "Łukasz Żółć Świętochłowice Główny Dział Obsługi"
    composed = render(
        "From: {{ shop | mailbox(name) }}\nTo: b@example.com, {{ other | mailbox(name) }}\n\nx",
        {"shop": "shop@example.com", "other": "c@example.com", "name": name},
    )
    assert composed.data.isascii()
    assert max(len(line) for line in composed.data.split(b"\r\n")) <= 78
    assert composed.recipients == ["b@example.com", "c@example.com"]
    from email.header import decode_header, make_header

    from notifier.compose import message_view

    head = composed.data.split(b"\r\n\r\n")[0].decode()
    raw_from = re.search(r"^From: (.*?)\r\n(?! )", head, re.MULTILINE | re.DOTALL)
    assert raw_from is not None
    unfolded = re.sub(r"\r\n ", " ", raw_from.group(1))
    assert str(make_header(decode_header(unfolded))) == f"{name} <shop@example.com>"
    view = message_view(composed.data)
    assert view["headers"]["From"] == f"{name} <shop@example.com>"
    assert view["headers"]["To"] == f"b@example.com, {name} <c@example.com>"


@pytest.mark.parametrize("escape", ["e", "escape", "safe", "forceescape"])
@pytest.mark.parametrize(
    "subject",
    ["hello\nBcc: eve@evil.example", "hello\r\n\r\nInjected body", "hello\u2028Bcc: x@y.z"],
)
def test_filters_returning_markup_cannot_inject(render: Render, escape: str, subject: str) -> None:
    with pytest.raises((HeaderInjection, ComposeError)):
        render(
            f"From: a@example.com\nTo: b@example.com\nSubject: {{{{ subject|{escape} }}}}\n\nx",
            {"subject": subject},
        )


def test_forged_markers_cannot_add_a_recipient(render: Render) -> None:
    with pytest.raises(TemplateError, match="noncharacter"):
        render(
            "From: a@example.com\nTo: {{ to|e }}\n\nx",
            {"to": "bob@example.com\ufdd1, \ufdd0eve@evil.example"},
        )
