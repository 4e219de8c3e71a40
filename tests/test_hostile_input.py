"""Hostile input through the HTTP service: every request is a success or a 4xx problem,
in bounded time, and never mail to an address the request did not name."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import idna
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from quart.typing import TestClientProtocol as QuartClient

from tests.servers import ServeProcess, healthz_probe
from tests.test_api_bad_input import BURGER, assert_problem
from tests.test_cli import notifier

LONG_SUBJECT = "a " * 500_000
COMMENTED_ADDRESS = "(x)" * 16_000 + "bob@example.com"
LONG_DISPLAY_NAME = '"' + "Bob " * 25_000 + '" <bob@example.com>'
NESTED_COMMENTS = "(" * 1000 + "x" + ")" * 1000 + "bob@example.com"


# -- lone surrogates ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [BURGER, "/v1/send/burger_receipt"])
@pytest.mark.parametrize(
    "raw",
    [
        '"name": "B\\ud800b"',  # a field the template prints
        '"unused": "B\\udfffb"',  # a field nobody reads
        '"B\\uDA00b": 1',  # a key
        '"items": [{"name": "x\\ud83d", "price": 1}]',  # a high surrogate without its pair
    ],
)
async def test_a_lone_surrogate_is_400(
    client: QuartClient, burger_order: dict[str, Any], path: str, raw: str
) -> None:
    body = json.dumps(burger_order)[:-1] + ", " + raw + "}"
    response = await client.post(path, data=body, headers={"Content-Type": "application/json"})
    problem = await assert_problem(response, 400)
    assert "surrogate" in problem["detail"]


@pytest.mark.parametrize("path", [BURGER, "/v1/send/burger_receipt"])
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "latin-1"])
async def test_json_that_is_not_utf8_is_400(
    client: QuartClient, burger_order: dict[str, Any], path: str, encoding: str
) -> None:
    # json.loads would read UTF-16 and UTF-32 bytes, and with them a lone surrogate that
    # no check had seen; JSON between systems is UTF-8 (RFC 8259 8.1).
    name = "Zo\u00eb" if encoding == "latin-1" else "Zo\u00eb \ud800"
    raw = json.dumps({**burger_order, "name": name}, ensure_ascii=False).encode(
        encoding, "surrogatepass"
    )
    response = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    problem = await assert_problem(response, 400)
    assert "UTF-8" in problem["detail"] or "not valid JSON" in problem["detail"]


async def test_a_context_part_that_is_not_utf8_is_400(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    from tests.test_attachments import FORM, context_part, form_body

    raw = json.dumps({**burger_order, "name": "\ud800"}).encode("utf-16")
    response = await client.post(BURGER, data=form_body([context_part(raw)]), headers=FORM)
    await assert_problem(response, 400)


async def test_a_surrogate_pair_is_one_character(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    body = json.dumps({**burger_order, "name": "B"})[:-1] + ', "name": "\\ud83c\\udf54"}'
    response = await client.post(
        BURGER,
        data=body,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    assert response.status_code == 200
    assert "Hello \U0001f354," in (await response.get_json())["text"]


# -- addresses ----------------------------------------------------------------------------


async def test_nested_comments_in_an_address_are_422(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    burger_order["to"] = NESTED_COMMENTS
    problem = await assert_problem(await client.post(BURGER, json=burger_order), 422)
    assert problem["header"] == "To"


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("a" * 65 + "@example.com", "local part"),
        ('"Bob" <' + "a" * 65 + "@example.com>", "local part"),
        ("bob@" + "a" * 64 + ".example", "label"),
        ('"Bob" <bob@' + "a" * 64 + ".example>", "label"),
        ("bob@" + ".".join(["a" * 60] * 5) + ".example", "domain"),
        ('"Bob" <bob@' + ".".join(["a" * 60] * 5) + ".example>", "domain"),
        ("bob@" + "ü" * 64 + ".example", "domain"),
    ],
)
async def test_address_lengths_are_checked_on_every_path(
    client: QuartClient, burger_order: dict[str, Any], address: str, what: str
) -> None:
    burger_order["to"] = address
    problem = await assert_problem(await client.post(BURGER, json=burger_order), 422)
    assert what in problem["detail"]


@pytest.mark.parametrize("address", ["a" * 64 + "@example.com", "bob@" + "a" * 63 + ".example"])
async def test_addresses_at_the_limits_are_fine(
    client: QuartClient, burger_order: dict[str, Any], address: str
) -> None:
    burger_order["to"] = address
    response = await client.post(BURGER, json=burger_order)
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("address", "envelope"),
    [
        ("bob@straße.de", "bob@xn--strae-oqa.de"),  # IDNA 2003 would say strasse.de
        ("Bob <bob@faß.de>", "bob@xn--fa-hia.de"),
        ("bob@BÜCHER.example", "bob@xn--bcher-kva.example"),  # UTS 46 maps case
        ("bob@ﬁle.example", "bob@file.example"),  # UTS 46 maps the ligature
    ],
)
async def test_international_domains_follow_idna_2008(
    client: QuartClient, burger_order: dict[str, Any], address: str, envelope: str
) -> None:
    burger_order["to"] = address
    response = await client.post(BURGER, json=burger_order, headers={"Accept": "application/json"})
    assert response.status_code == 200, await response.get_data(as_text=True)
    view = await response.get_json()
    assert view["envelope"]["to"] == [envelope]
    assert envelope in view["headers"]["To"]


@pytest.mark.parametrize("domain", ["xn--zz.example", "a\u200db.example", "bob.-bad-.example"])
async def test_invalid_international_domains_are_422(
    client: QuartClient, burger_order: dict[str, Any], domain: str
) -> None:
    burger_order["to"] = f"bob@{domain}"
    await assert_problem(await client.post(BURGER, json=burger_order), 422)


async def test_a_json_array_of_recipients_is_one_address_each(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    burger_order["to"] = ["a@x.example", "B <b@y.example>"]
    response = await client.post(BURGER, json=burger_order, headers={"Accept": "application/json"})
    assert response.status_code == 200
    view = await response.get_json()
    assert view["envelope"]["to"] == ["a@x.example", "b@y.example"]


# Address-shaped text: the characters that mean something in an address list, plus
# letters, digits, non-ASCII letters and encoded-word pieces.
address_text = st.lists(
    st.sampled_from([*'abcXYZ019 ._-+@<>()[]",;:\\=?ßü中\t', "=?utf-8?q?", "?="]),
    max_size=400,
).map("".join)
address_shapes = st.one_of(
    address_text,
    st.builds(lambda n, s: "(" * n + s + ")" * n, st.integers(0, 50), address_text),
    st.builds(lambda s: f'"{s}" <bob@example.com>', address_text),
    st.builds(lambda s: f"bob@{s}.example", address_text),
    st.builds(lambda local: f"{local}@example.com", st.text("a.", max_size=200)),
    st.lists(address_text, max_size=8),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(to=address_shapes)
@example(to=NESTED_COMMENTS)
@example(to="(" * 20 + "bob@example.com")
@example(to='"' * 999)
@example(to="," * 3000)
async def test_any_address_is_200_or_a_4xx_problem_quickly(
    client: QuartClient, burger_order: dict[str, Any], to: Any
) -> None:
    started = time.perf_counter()
    response = await client.post(
        BURGER, json={**burger_order, "to": to}, headers={"Accept": "application/json"}
    )
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, f"{elapsed:.2f} s for {to!r}"
    if response.status_code != 200:
        assert 400 <= response.status_code < 500, await response.get_data(as_text=True)
        assert response.mimetype == "application/problem+json"
        return
    # Never mail to an address the request did not name: each recipient's local part and
    # domain (in either IDNA form) are in the input.
    named = str(to).lower()
    for recipient in (await response.get_json())["envelope"]["to"]:
        local, _, domain = recipient.lower().rpartition("@")
        assert local in named, (recipient, to)
        assert domain in named or idna.decode(domain) in named, (recipient, to)


# -- templates -----------------------------------------------------------------------------


async def test_a_template_failing_to_compile_is_listed_and_only_it_fails(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "deep.j2").write_text(
        "From: a@example.com\nTo: {{ to }}\n\n{{ " + "(" * 400 + "1" + ")" * 400 + " }}\n"
    )
    listing = await client.get("/v1/templates")
    assert listing.status_code == 200
    by_name = {t["name"]: t for t in (await listing.get_json())["templates"]}
    assert by_name["deep"]["valid"] is False
    assert "cannot be compiled" in by_name["deep"]["error"]
    assert by_name["burger_receipt"]["valid"] is True
    await assert_problem(await client.post("/v1/render/deep", json=burger_order), 422)
    assert (await client.post(BURGER, json=burger_order)).status_code == 200


async def test_a_constant_too_large_to_print_is_422(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "huge.j2").write_text(
        "From: a@example.com\nTo: {{ to }}\n\n{{ (10**100000)|string|length }}\n"
    )
    problem = await assert_problem(await client.post("/v1/render/huge", json=burger_order), 422)
    assert problem["type"].endswith("render-budget-exceeded")
    listing = await (await client.get("/v1/templates")).get_json()
    assert {t["name"] for t in listing["templates"]} >= {"huge", "burger_receipt"}


def test_check_reports_a_template_failing_to_compile_and_checks_the_rest(
    settings_file: Path, templates_dir: Path
) -> None:
    (templates_dir / "deep.j2").write_text(
        "From: a@example.com\nTo: b@example.com\n\n{{ " + "(" * 400 + "1" + ")" * 400 + " }}\n"
    )
    result = notifier("check", "--settings", str(settings_file))
    output = result.stdout.decode()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr.decode()
    assert "FAIL  deep: deep.j2 cannot be compiled" in output
    assert "ok    burger_receipt" in output


# -- a real server under the worst requests ------------------------------------------------

SLOW_TEMPLATE = (
    "From: shop@example.com\nTo: {{ to }}\n\n"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
)
HUGE_TEMPLATE = "From: shop@example.com\nTo: {{ to }}\n\n{{ 'x' * 10**9 }}\n"
GROWING_TEMPLATE = (
    "From: shop@example.com\nTo: {{ to }}\n\n"
    "{% for i in range(100000) %}{% for item in items %}{{ item }}{% endfor %}{% endfor %}\n"
)


@pytest.fixture
def hostile_serve(tmp_path: Path, settings_data: dict[str, Any], templates_dir: Path) -> Any:
    (templates_dir / "slow.j2").write_text(SLOW_TEMPLATE)
    (templates_dir / "huge.j2").write_text(HUGE_TEMPLATE)
    (templates_dir / "growing.j2").write_text(GROWING_TEMPLATE)
    settings_data["limits"]["max_body_bytes"] = 1024 * 1024  # the default, not the tests' 64 KiB
    path = tmp_path / "hostile.yml"
    path.write_text(json.dumps(settings_data))
    server = ServeProcess.start(path)
    yield server
    server.stop()


def hostile_requests(order: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (BURGER, {**order, "subject": LONG_SUBJECT}),
        (BURGER, {**order, "to": COMMENTED_ADDRESS}),
        (BURGER, {**order, "to": LONG_DISPLAY_NAME}),
        (BURGER, {**order, "to": NESTED_COMMENTS}),
        ("/v1/send/burger_receipt", {**order, "subject": LONG_SUBJECT}),
        ("/v1/render/slow", {"to": "bob@example.com"}),
        ("/v1/render/huge", {"to": "bob@example.com"}),
        ("/v1/render/growing", {"to": "bob@example.com", "items": ["x" * 100] * 3000}),
        (BURGER, {**order, "items": [{"name": "Fries " * 20, "price": 2}] * 6000}),
    ]


async def test_healthz_answers_within_a_second_while_the_worst_requests_run(
    hostile_serve: ServeProcess, burger_order: dict[str, Any]
) -> None:
    results: list[tuple[str, int, float]] = []

    async with httpx.AsyncClient(base_url=hostile_serve.url, timeout=30) as http:

        async def hostile(path: str, body: dict[str, Any]) -> None:
            started = time.perf_counter()
            response = await http.post(path, json=body)
            results.append((path, response.status_code, time.perf_counter() - started))
            if response.status_code >= 400:
                assert response.headers["content-type"] == "application/problem+json"

        async with healthz_probe(http) as health_times:
            # Twice over, all at once: more slow renders than render threads.
            await asyncio.gather(*(hostile(p, b) for p, b in hostile_requests(burger_order) * 2))

    assert len(health_times) > 10
    assert max(health_times) < 1.0, f"/healthz took {max(health_times):.2f} s"
    for path, status, elapsed in results:
        assert status < 500 or status == 503, (path, status)
        assert elapsed < 10, (path, elapsed)
    statuses = {path: status for path, status, _ in results}
    assert statuses["/v1/render/huge"] == 422
    assert statuses["/v1/render/slow"] in (422, 503)


NO_MAIN_GUARD = """\
import asyncio, json, sys
from pathlib import Path
from notifier.errors import NotifierError
from notifier.renderer import LOOP_CONTEXT_BYTES, Renderer
from notifier.templates import TemplateStore

templates = Path(sys.argv[1])
renderer = Renderer(
    templates=TemplateStore(templates), message_id_domain="example.com", default_from=None
)
order = json.loads((templates / "burger_receipt.example.json").read_text())
order["padding"] = "x" * (LOOP_CONTEXT_BYTES + 1)

async def main():
    try:
        await renderer.render_async("burger_receipt", order, context_bytes=LOOP_CONTEXT_BYTES + 1)
        answer = "rendered"
    except NotifierError as exc:
        answer = str(exc.status)
    except Exception as exc:
        answer = "unexpected " + type(exc).__name__
    print("answer:", answer, flush=True)

asyncio.run(main())
renderer.close()
"""


def test_render_processes_that_cannot_start_are_a_503(tmp_path: Path, templates_dir: Path) -> None:
    # A program without `if __name__ == "__main__"` runs again in the process that starts
    # render processes, while its main module is still being imported there, and
    # multiprocessing refuses to start them from it: that render is told to try again
    # (503), as when a render process dies, never an unexpected error.
    script = tmp_path / "no_main_guard.py"
    script.write_text(NO_MAIN_GUARD)
    result = subprocess.run(
        [sys.executable, str(script), str(templates_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    answers = {line for line in result.stdout.splitlines() if line.startswith("answer:")}
    assert "answer: 503" in answers, result.stdout + result.stderr
    assert answers <= {"answer: 503", "answer: rendered"}, result.stdout + result.stderr
