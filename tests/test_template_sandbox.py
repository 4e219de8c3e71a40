"""The template sandbox: macros and blocks print like values, JSON arrays are address
lists, request data cannot forge markers, and every render keeps to its budgets."""

from __future__ import annotations

import email
import time
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from notifier.compose import ComposedMessage
from notifier.errors import (
    ComposeError,
    HeaderInjection,
    RenderBudgetExceeded,
    TemplateError,
)
from notifier.renderer import Renderer
from notifier.sandbox import RenderBudget
from notifier.templates import TemplateStore

Render = Callable[..., ComposedMessage]
BUDGET = RenderBudget(seconds=0.5, max_output=64 * 1024)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "tpl"
    path.mkdir()
    return path


@pytest.fixture
def render(directory: Path) -> Render:
    def _render(source: str, context: dict[str, Any] | None = None) -> ComposedMessage:
        (directory / "t.j2").write_text(source, encoding="utf-8")
        renderer = Renderer(
            templates=TemplateStore(directory, budget=BUDGET),
            message_id_domain="mail.example.org",
            default_from=None,
        )
        return renderer.render("t", context or {})

    return _render


def parse(composed: ComposedMessage) -> EmailMessage:
    message = email.message_from_bytes(composed.data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(composed: ComposedMessage) -> str:
    part = parse(composed).get_body(preferencelist=("plain",))
    assert part is not None
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


HEAD = "From: shop@example.com\nTo: {{ to }}\nSubject: Hi\n\n"


# -- macros, call blocks and set blocks ---------------------------------------------------


def test_a_macro_footer_prints_with_its_values(render: Render) -> None:
    source = (
        HEAD + "{% macro footer(shop) %}--\n{{ shop }}\nBurgers since 1999{% endmacro %}"
        "Hello {{ name }}\n{{ footer(shop) }}\n"
    )
    composed = render(source, {"to": "bob@example.com", "name": "Bob", "shop": "Fictional"})
    assert text_of(composed) == "Hello Bob\n--\nFictional\nBurgers since 1999\n"


def test_call_and_set_blocks_print(render: Render) -> None:
    source = (
        HEAD + "{% macro boxed() %}[{{ caller() }}]{% endmacro %}"
        "{% set greeting %}Dear {{ name }},{% endset %}"
        "{{ greeting }}\n{% call boxed() %}order {{ order }}{% endcall %}\n"
    )
    composed = render(source, {"to": "bob@example.com", "name": "Bob", "order": 42})
    assert text_of(composed) == "Dear Bob,\n[order 42]\n"


def test_macro_output_in_a_header_is_data_and_cannot_inject(render: Render) -> None:
    source = (
        "{% macro subject(s) %}Order: {{ s }}{% endmacro %}"
        "From: shop@example.com\nTo: bob@example.com\nSubject: {{ subject(title) }}\n\nx\n"
    )
    assert parse(render(source, {"title": "42"}))["Subject"] == "Order: 42"
    with pytest.raises(HeaderInjection):
        render(source, {"title": "42\nBcc: eve@evil.example"})


def test_a_macro_with_line_breaks_of_its_own_cannot_start_a_header(render: Render) -> None:
    source = (
        "{% macro two_lines() %}a\nBcc: eve@evil.example{% endmacro %}"
        "From: shop@example.com\nTo: bob@example.com\nSubject: {{ two_lines() }}\n\nx\n"
    )
    with pytest.raises(HeaderInjection):
        render(source)


def test_a_macro_cannot_turn_data_into_extra_recipients(render: Render) -> None:
    source = (
        "{% macro to(address) %}{{ address }}{% endmacro %}"
        "From: shop@example.com\nTo: {{ to(address) }}\n\nx\n"
    )
    assert render(source, {"address": "bob@example.com"}).recipients == ["bob@example.com"]
    with pytest.raises(HeaderInjection, match="adds recipients"):
        render(source, {"address": "bob@example.com, eve@evil.example"})


@pytest.mark.parametrize(
    "forged",
    [
        "bob@example.com\ufdd1, \ufdd0eve@evil.example",
        "\ufdd0\ufdd1",
        "x\ufdd3Bcc: eve@evil.example",
        "\ufdd0" + "0" * 12 + "eve",  # the shape of a nonce marker, but not this render's
    ],
)
def test_request_data_cannot_forge_markers(render: Render, forged: str) -> None:
    with pytest.raises(TemplateError, match="noncharacter"):
        render(HEAD + "x\n", {"to": forged})


def test_a_template_holding_noncharacters_is_refused(render: Render) -> None:
    with pytest.raises(TemplateError, match="noncharacter"):
        render(HEAD + "x\ufdd1\n", {"to": "bob@example.com"})


# -- JSON arrays in address headers ------------------------------------------------------


def test_a_json_array_is_one_address_per_element(render: Render) -> None:
    composed = render(HEAD + "x\n", {"to": ["a@x.example", "B <b@y.example>"]})
    assert composed.recipients == ["a@x.example", "b@y.example"]
    assert parse(composed)["To"] == "a@x.example, B <b@y.example>"


def test_each_array_element_is_still_one_address(render: Render) -> None:
    with pytest.raises(HeaderInjection, match="adds recipients"):
        render(HEAD + "x\n", {"to": ["a@x.example", "b@y.example, eve@evil.example"]})


def test_a_comma_list_in_a_string_is_refused(render: Render) -> None:
    with pytest.raises(HeaderInjection, match="adds recipients"):
        render(HEAD + "x\n", {"to": "a@x.example, b@y.example"})


def test_an_array_with_a_quoted_name_holding_a_comma(render: Render) -> None:
    composed = render(HEAD + "x\n", {"to": ['"Smith, Bob" <bob@x.example>', "c@y.example"]})
    assert composed.recipients == ["bob@x.example", "c@y.example"]


def test_an_empty_array_gives_no_recipient(render: Render) -> None:
    with pytest.raises(ComposeError, match="no recipients"):
        render(HEAD + "x\n", {"to": []})


def test_an_array_in_the_body_prints_its_elements(render: Render) -> None:
    composed = render(HEAD + "{{ tags }}\n", {"to": "bob@example.com", "tags": ["a", "b"]})
    assert text_of(composed) == "a, b\n"


# -- budgets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in items %}{% if i == j %}{% endif %}"
        "{% endfor %}{% endfor %}",
        "{% macro f(n) %}{% for i in range(100000) %}{{ n }}{% endfor %}{% endmacro %}"
        "{% for i in range(100000) %}{% set x = f(i) %}{% endfor %}",
    ],
)
def test_a_render_that_runs_too_long_stops_at_its_time_budget(render: Render, body: str) -> None:
    started = time.perf_counter()
    with pytest.raises(RenderBudgetExceeded, match="render_timeout"):
        render(HEAD + body + "\n", {"to": "bob@example.com", "items": list(range(1000))})
    assert time.perf_counter() - started < BUDGET.seconds + 0.5


@pytest.mark.parametrize(
    "expression",
    [
        "'x' * 10**9",
        "10**9 * 'x'",
        "[1] * 10**9",
        "10 ** (10 ** 9)",
        "'%01000000000d' % 1",
        "'%0*d' % (10**9, 1)",
        "'%.1000000000f'|format(1.0)",
        "'{:>1000000000}'.format(1)",
        "'{:>{w}}'.format(1, w=10**9)",
        "'x'.center(10**9)",
        "'x'.ljust(10**9)",
        "'x'|center(1000000000)",
        "'x'|indent(10**9, true)",
    ],
)
def test_a_huge_result_is_refused_before_it_is_built(render: Render, expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(RenderBudgetExceeded):
        render(HEAD + "{{ " + expression + " }}\n", {"to": "bob@example.com"})
    assert time.perf_counter() - started < 1.0


def test_output_that_grows_past_the_budget_is_refused(render: Render) -> None:
    with pytest.raises(RenderBudgetExceeded, match="max_rendered_chars"):
        render(
            HEAD + "{% for i in range(100000) %}{{ line }}\n{% endfor %}",
            {"to": "bob@example.com", "line": "x" * 100},
        )


def test_doubling_a_string_in_a_namespace_is_refused(render: Render) -> None:
    source = (
        HEAD + "{% set ns = namespace(s='x') %}"
        "{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}\n"
    )
    with pytest.raises(RenderBudgetExceeded, match="max_rendered_chars"):
        render(source, {"to": "bob@example.com"})


def test_ordinary_big_numbers_still_work(render: Render) -> None:
    source = HEAD + "{{ order|default(12345678) }} {{ 2 ** 64 }} {{ '%05d' % 42 }}\n"
    composed = render(source, {"to": "bob@example.com"})
    assert text_of(composed) == "12345678 18446744073709551616 00042\n"


def test_deep_recursion_is_a_budget_error(render: Render) -> None:
    source = HEAD + "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}\n"
    with pytest.raises(RenderBudgetExceeded):
        render(source, {"to": "bob@example.com"})


# -- templates that fail while compiling -------------------------------------------------


def test_a_huge_constant_is_refused_at_render_time(render: Render) -> None:
    # Jinja folds constant expressions while compiling; ** is left to the render, where
    # the budget refuses it, instead of failing (or hanging) the compile.
    with pytest.raises(RenderBudgetExceeded):
        render(HEAD + "{{ (10**100000)|string|length }}\n", {"to": "bob@example.com"})


def test_a_template_failing_at_compile_time_is_its_own_error(
    directory: Path, render: Render
) -> None:
    (directory / "ok.j2").write_text(HEAD + "fine\n", encoding="utf-8")
    deep = "{{ " + "(" * 400 + "1" + ")" * 400 + " }}"
    with pytest.raises(TemplateError, match="cannot be compiled"):
        render(HEAD + deep + "\n", {"to": "bob@example.com"})
    store = TemplateStore(directory, budget=BUDGET)
    infos = {name: store.info(name) for name in store.names()}
    assert infos["ok"].error is None
    assert infos["t"].error is not None
    assert "cannot be compiled" in infos["t"].error
