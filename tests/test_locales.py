"""Locales: the context member ``locale`` picks ``<name>.<tag>.j2`` along the fallback
chain (``de-CH`` -> ``de`` -> ``<name>.j2``), the HTML part follows the text file chosen,
invalid tags are 422, and Babel's filters format in the requested locale."""

from __future__ import annotations

import email
import os
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quart.typing import TestClientProtocol as QuartClient

from notifier.errors import InvalidLocale
from notifier.locales import MAX_LOCALE_CHARS, requested_locale
from notifier.renderer import LOOP_CONTEXT_BYTES, Renderer
from notifier.settings import Settings
from notifier.templates import TemplateStore
from tests.test_cli import notifier

FORMATS = (
    "From: shop@example.com\nTo: bob@example.com\nSubject: prices\n\n"
    "currency={{ price | format_currency('EUR') }}\n"
    "decimal={{ amount | format_decimal }}\n"
    "percent={{ share | format_percent }}\n"
    "date={{ day | format_date('long') }}\n"
    "datetime={{ moment | format_datetime('short') }}\n"
)
FORMAT_VALUES = {
    "price": 1234.5,
    "amount": 1234.5,
    "share": 0.25,
    "day": "2024-03-01",
    "moment": "2024-03-01T12:30:00+01:00",
}


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body_of(message: EmailMessage, subtype: str = "plain") -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None, f"no text/{subtype} part"
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


async def render(client: QuartClient, name: str, context: dict[str, Any]) -> EmailMessage:
    response = await client.post(f"/v1/render/{name}", json=context)
    assert response.status_code == 200, await response.get_data(as_text=True)
    return parse(await response.get_data())


async def render_text(client: QuartClient, name: str, context: dict[str, Any]) -> str:
    return body_of(await render(client, name, context))


def write(path: Path, text: str) -> None:
    """Write ``text`` so that the file's and the directory's mtimes surely move."""
    before = path.parent.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    if path.parent.stat().st_mtime_ns == before:
        os.utime(path.parent, ns=(before + 1_000_000, before + 1_000_000))


SWISS = (
    "From: {{ from }}\nTo: {{ to }}\nSubject: {{ subject }}\n\n"
    "Grüezi {{ name }}\n{% for item in items %}{{ item.price | format_currency('CHF') }}\n"
    "{% endfor %}"
)


# -- the fallback chain ---------------------------------------------------------------------


async def test_every_link_of_the_fallback_chain(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    # de-CH present: it wins for de-CH (and for anything under de-CH).
    write(templates_dir / "burger_receipt.de-CH.j2", SWISS)
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": "de-CH"})
    ).startswith("Grüezi Bob")
    assert "Grüezi" in await render_text(
        client, "burger_receipt", {**burger_order, "locale": "de-CH-1996"}
    )
    # de-CH present, de asked for: the de file, not the more specific one.
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": "de"})
    ).startswith("Hallo Bob")
    # Only de present for de-AT: de.
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": "de-AT"})
    ).startswith("Hallo Bob")
    # Neither: the base file.
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": "fr-CA"})
    ).startswith("Hello Bob")
    # de-CH removed: de-CH falls back to de (the listing cache follows the directory).
    (templates_dir / "burger_receipt.de-CH.j2").unlink()
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": "de-CH"})
    ).startswith("Hallo Bob")
    # de removed too: the base file.
    (templates_dir / "burger_receipt.de.j2").unlink()
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": "de-CH"})
    ).startswith("Hello Bob")


async def test_no_locale_and_null_locale_render_the_base_file(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    assert (await render_text(client, "burger_receipt", burger_order)).startswith("Hello Bob")
    assert (
        await render_text(client, "burger_receipt", {**burger_order, "locale": None})
    ).startswith("Hello Bob")


async def test_tags_match_file_names_whatever_their_case_or_separator(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    write(templates_dir / "burger_receipt.DE_ch.j2", SWISS)
    assert "Grüezi" in await render_text(
        client, "burger_receipt", {**burger_order, "locale": "de-ch"}
    )
    assert "Grüezi" in await render_text(
        client, "burger_receipt", {**burger_order, "locale": "DE-CH"}
    )
    listed = await (await client.get("/v1/templates")).get_json()
    [entry] = [e for e in listed["templates"] if e["name"] == "burger_receipt"]
    assert entry["locales"] == ["de", "de-CH"]


async def test_locale_files_are_not_templates_of_their_own(client: QuartClient) -> None:
    response = await client.post("/v1/render/burger_receipt.de", json={})
    assert response.status_code == 404
    listed = await (await client.get("/v1/templates")).get_json()
    assert sorted(e["name"] for e in listed["templates"]) == ["burger_receipt", "order_shipped"]


async def test_a_variant_without_its_base_file_is_no_template(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    write(templates_dir / "only_german.de.j2", SWISS)
    response = await client.post("/v1/render/only_german", json={**burger_order, "locale": "de"})
    assert response.status_code == 404


# -- the HTML part --------------------------------------------------------------------------

SHIPPED_DE = (
    "From: {{ shop_email | mailbox(shop_name) }}\nTo: {{ customer_email }}\n"
    "Subject: Bestellung {{ order_id }}\n\nHallo {{ customer_name }}, Ihr Paket ist unterwegs.\n"
)


async def test_html_part_follows_the_text_file_chosen(
    client: QuartClient, templates_dir: Path
) -> None:
    order = (templates_dir / "order_shipped.example.json").read_text(encoding="utf-8")
    import json

    context = json.loads(order)
    base = await render(client, "order_shipped", {**context, "locale": "de"})
    assert base.get_content_type() == "multipart/alternative"  # no German files yet

    write(templates_dir / "order_shipped.de.j2", SHIPPED_DE)
    german = await render(client, "order_shipped", {**context, "locale": "de-CH"})
    # A German text file and no German HTML: German text alone, never English HTML.
    assert german.get_content_type() == "text/plain"
    assert body_of(german).startswith("Hallo")

    write(templates_dir / "order_shipped.de.html.j2", "<p>Hallo {{ customer_name }}</p>")
    german = await render(client, "order_shipped", {**context, "locale": "de-CH"})
    assert german.get_content_type() == "multipart/alternative"
    assert body_of(german).startswith("Hallo")
    assert "<p>Hallo" in body_of(german, "html")

    english = await render(client, "order_shipped", context)
    assert english.get_content_type() == "multipart/alternative"
    assert "Hallo" not in body_of(english, "html")


async def test_a_german_html_file_alone_is_not_used(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "burger_receipt.de.j2").unlink()
    write(templates_dir / "burger_receipt.de.html.j2", "<p>Hallo</p>")
    message = await render(client, "burger_receipt", {**burger_order, "locale": "de"})
    assert message.get_content_type() == "text/plain"
    assert body_of(message).startswith("Hello Bob")


# -- invalid locales ------------------------------------------------------------------------

HOSTILE_LOCALES = [
    "",
    "x" * 10_000,
    "de-" + "-".join(["abcdefgh"] * 4),  # well-formed, but over 35 characters
    "../x",
    "../../etc/passwd",
    "de\x00",
    "de\r\nBcc: eve@example.com",
    "de_DE",  # BCP 47 joins subtags with hyphens
    "de-",
    "-de",
    "de--CH",
    "d e",
    "tlh",  # well-formed, but no language Babel knows
    "zz-ZZ",
    "de-CH.j2",
    "déu",
    42,
    True,
    ["de"],
    {"tag": "de"},
]


@pytest.mark.parametrize("locale", HOSTILE_LOCALES, ids=lambda value: repr(value)[:24])
async def test_invalid_locale_is_422_naming_the_member(
    client: QuartClient, burger_order: dict[str, Any], locale: Any
) -> None:
    response = await client.post(
        "/v1/render/burger_receipt", json={**burger_order, "locale": locale}
    )
    assert response.status_code == 422
    assert response.content_type == "application/problem+json"
    problem = await response.get_json()
    assert problem["type"] == "urn:notifier:problem:invalid-locale"
    assert problem["member"] == "locale"
    assert "'locale'" in problem["detail"]
    assert len(problem["detail"]) < 400


async def test_unknown_template_is_404_before_a_bad_locale(client: QuartClient) -> None:
    response = await client.post("/v1/render/nope", json={"locale": "../x"})
    assert response.status_code == 404


async def test_send_with_invalid_locale_stores_nothing(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    response = await client.post("/v1/send/burger_receipt", json={**burger_order, "locale": "x_y"})
    assert response.status_code == 422
    listed = await client.get("/v1/messages?status=queued")
    assert (await listed.get_json())["messages"] == []


# -- Babel's filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (
            None,
            [
                "currency=€1,234.50",
                "decimal=1,234.5",
                "percent=25%",
                "date=March 1, 2024",
                "datetime=3/1/24, 12:30\u202fPM",
            ],
        ),
        (
            "de",
            [
                "currency=1.234,50\xa0€",
                "decimal=1.234,5",
                "percent=25\xa0%",
                "date=1. März 2024",
                "datetime=01.03.24, 12:30",
            ],
        ),
        (
            # The requested locale formats, although only the base file exists.
            "de-CH",
            ["currency=EUR\xa01'234.50", "decimal=1'234.5"],
        ),
    ],
)
async def test_filters_format_in_the_requested_locale(
    client: QuartClient, templates_dir: Path, locale: str | None, expected: list[str]
) -> None:
    write(templates_dir / "formats.j2", FORMATS)
    context = {**FORMAT_VALUES, **({"locale": locale} if locale else {})}
    text = await render_text(client, "formats", context)
    for line in expected:
        assert line in text.splitlines(), (line, text)


async def test_filters_take_numbers_as_strings_and_values_from_set_blocks(
    client: QuartClient, templates_dir: Path
) -> None:
    write(
        templates_dir / "captured.j2",
        "From: a@example.com\nTo: b@example.com\n\n"
        "{% set shown %}{{ price }}{% endset %}{{ shown | format_currency('eur') }}\n"
        "{{ '7.25' | format_decimal }}\n",
    )
    text = await render_text(client, "captured", {"price": "4.5", "locale": "de"})
    assert text.splitlines() == ["4,50\xa0€", "7,25"]


async def test_filter_output_in_a_header_is_request_data(
    client: QuartClient, templates_dir: Path
) -> None:
    write(
        templates_dir / "subject.j2",
        "From: a@example.com\nTo: b@example.com\n"
        "Subject: Total {{ total | format_currency('EUR') }}\n\nbody\n",
    )
    message = await render(client, "subject", {"total": 9.5, "locale": "de"})
    assert message["Subject"] == "Total 9,50\xa0€"


BAD_VALUES = [
    ("format_date", "'2024-13-45'"),
    ("format_date", "'yesterday'"),
    ("format_date", "12"),
    ("format_date", "none"),
    ("format_datetime", "'2024-03-01T25:00'"),
    ("format_datetime", "'x' * 10000"),
    ("format_decimal", "'abc'"),
    ("format_decimal", "'1e999999999'"),
    ("format_decimal", "'NaN'"),
    ("format_decimal", "true"),
    ("format_decimal", "[1]"),
    ("format_percent", "'-Infinity'"),
]


@pytest.mark.parametrize(("filter_name", "value"), BAD_VALUES)
async def test_a_value_a_filter_cannot_format_is_422(
    client: QuartClient, templates_dir: Path, filter_name: str, value: str
) -> None:
    write(
        templates_dir / "bad.j2",
        f"From: a@example.com\nTo: b@example.com\n\n{{{{ {value} | {filter_name} }}}}\n",
    )
    response = await client.post("/v1/render/bad", json={"locale": "de"})
    assert response.status_code == 422, await response.get_data(as_text=True)
    problem = await response.get_json()
    assert problem["type"] == "urn:notifier:problem:template-error"
    assert problem["filter"] == filter_name


@pytest.mark.parametrize(
    "call",
    [
        "format_currency('EURO')",
        "format_currency(none)",
        "format_datetime('medium', 'Not/AZone')",
        "format_datetime('medium', '../../etc/passwd')",
        "format_decimal('#' * 1000)",
    ],
)
async def test_bad_filter_arguments_are_422(
    client: QuartClient, templates_dir: Path, call: str
) -> None:
    value = "'2024-03-01T12:00'" if "datetime" in call else "1.5"
    write(
        templates_dir / "bad.j2",
        f"From: a@example.com\nTo: b@example.com\n\n{{{{ {value} | {call} }}}}\n",
    )
    response = await client.post("/v1/render/bad", json={})
    assert response.status_code == 422, await response.get_data(as_text=True)


async def test_request_dates_from_json_are_iso_strings(
    client: QuartClient, templates_dir: Path
) -> None:
    write(
        templates_dir / "dates.j2",
        "From: a@example.com\nTo: b@example.com\n\n{{ when | format_datetime('long', tz) }}\n",
    )
    text = await render_text(
        client, "dates", {"when": "2024-03-01T11:30:00Z", "tz": "Europe/Zurich", "locale": "de"}
    )
    assert text.strip() == "1. März 2024, 12:30:00 MEZ"
    response = await client.post(
        "/v1/render/dates", json={"when": "2024-02-30", "tz": "UTC", "locale": "de"}
    )
    assert response.status_code == 422


# -- the German receipt, the listing, the check command -------------------------------------


async def test_german_burger_receipt(client: QuartClient, burger_order: dict[str, Any]) -> None:
    text = await render_text(client, "burger_receipt", {**burger_order, "locale": "de"})
    assert "- Cheeseburger (4,50\xa0€)" in text
    assert "Summe: 9,50\xa0€" in text
    english = await render_text(client, "burger_receipt", burger_order)
    assert "- Cheeseburger (4.5 Euros)" in english


async def test_listing_shows_each_templates_locales(
    client: QuartClient, templates_dir: Path
) -> None:
    write(templates_dir / "order_shipped.fr.j2", SHIPPED_DE)
    write(templates_dir / "order_shipped.de.j2", SHIPPED_DE)
    write(templates_dir / "order_shipped.de.html.j2", "<p>Hallo</p>")
    listed = await (await client.get("/v1/templates")).get_json()
    by_name = {entry["name"]: entry for entry in listed["templates"]}
    assert by_name["burger_receipt"]["locales"] == ["de"]
    assert by_name["order_shipped"]["locales"] == ["de", "fr"]
    assert by_name["order_shipped"]["valid"] is True


async def test_listing_reports_a_broken_variant(client: QuartClient, templates_dir: Path) -> None:
    write(templates_dir / "burger_receipt.fr.j2", "Subject: {{ oops\n\nbody\n")
    listed = await (await client.get("/v1/templates")).get_json()
    [entry] = [e for e in listed["templates"] if e["name"] == "burger_receipt"]
    assert entry["valid"] is False
    assert entry["error"].startswith("burger_receipt.fr.j2 line")
    assert entry["locales"] == ["de", "fr"]


def test_check_reports_each_locale_variant_on_its_own(
    settings_file: Path, templates_dir: Path
) -> None:
    write(templates_dir / "burger_receipt.fr.j2", "Subject: {{ oops\n\nbody\n")
    write(
        templates_dir / "burger_receipt.it.j2",
        "From: {{ from }}\nTo: {{ to }}\n\nCiao {{ nome }}\n",
    )
    result = notifier("check", "--settings", str(settings_file))
    assert result.returncode == 1
    report = result.stdout.decode()
    assert "ok    burger_receipt: ok" in report
    assert "ok    burger_receipt.de: ok" in report
    assert "FAIL  burger_receipt.fr: burger_receipt.fr.j2 line" in report
    assert "FAIL  burger_receipt.it: the template uses 'nome'" in report
    assert "3 passed, 2 failed" in report


# -- render processes ------------------------------------------------------------------------


async def test_locale_and_version_survive_the_render_processes(
    settings: Settings, burger_order: dict[str, Any]
) -> None:
    renderer = Renderer.from_settings(settings)
    try:
        context = {**burger_order, "locale": "de", "padding": "x" * LOOP_CONTEXT_BYTES}
        here = renderer.render("burger_receipt", context)
        # A context this large is rendered in a render process.
        there = await renderer.render_async(
            "burger_receipt", context, context_bytes=LOOP_CONTEXT_BYTES + 1
        )
        assert renderer._pool is not None
    finally:
        renderer.close()
    assert "Summe: 9,50\xa0€" in body_of(parse(there.data))
    assert there.template_version == here.template_version != ""


def test_store_resolves_files_without_rescanning(templates_dir: Path) -> None:
    store = TemplateStore(templates_dir)
    context = {
        "to": "b@example.com",
        "from": "a@example.com",
        "subject": "s",
        "name": "N",
        "items": [],
        "locale": "de-CH",
    }
    first = store.render("burger_receipt", context)
    listing = store._listing
    second = store.render("burger_receipt", context)
    assert store._listing is listing  # the directory did not change: no new scan
    assert first.version == second.version
    assert first.locale == second.locale == "de-CH"


# -- any value at all -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.from_regex(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,7}", fullmatch=True),
        st.integers(),
        st.none(),
    )
)
def test_any_locale_value_is_accepted_or_refused_never_an_other_error(value: Any) -> None:
    refused: InvalidLocale | None = None
    try:
        found = requested_locale(value)
    except InvalidLocale as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 422
        assert refused.extra == {"member": "locale"}
        return
    if value is None:
        assert found is None
        return
    assert found is not None
    assert len(value) <= MAX_LOCALE_CHARS
    assert found.tag.lower() == value.lower()
    # The chain runs from the whole tag to its language, one subtag shorter each time.
    assert found.chain[0] == value.lower()
    assert found.chain[-1] == value.split("-")[0].lower()
    assert all(len(a) > len(b) for a, b in zip(found.chain, found.chain[1:], strict=False))
