"""HTML parts: CSS inlining, the safe_url filter, and inline images sent as
multipart/related, read back from real deliveries and real renders."""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import css_inline
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup
from quart.typing import TestClientProtocol as QuartClient

from notifier.compose import ComposedMessage, compose_message, message_view
from notifier.errors import RenderBudgetExceeded, TemplateError
from notifier.html_parts import LOOP_CSS_INLINE_CHARS, SAFE_URL_SCHEMES, safe_url
from notifier.renderer import Renderer
from notifier.sandbox import RenderBudget, SliceExhausted
from notifier.templates import RenderedTemplate, TemplateStore
from tests.conftest import MakeClient, finished, wait_for_status
from tests.servers import ServeProcess, healthz_probe
from tests.test_api_bad_input import assert_problem
from tests.test_cli import ROOT, notifier

HEAD = "From: shop@example.com\nTo: bob@example.com\nSubject: Hi\n\nHello\n"
LOGO = ROOT / "templates" / "assets" / "logo.png"


def png(width: int, height: int, rgba: tuple[int, int, int, int]) -> bytes:
    """A valid PNG of one colour."""
    row = b"\x00" + bytes(rgba) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def store(tmp_path: Path) -> Callable[..., TemplateStore]:
    """A template store over a fresh folder: ``store(html, text=HEAD, budget=None)``."""
    directory = tmp_path / "tpl"
    (directory / "assets").mkdir(parents=True)

    def make(
        html: str | None, *, text: str = HEAD, budget: RenderBudget | None = None
    ) -> TemplateStore:
        (directory / "t.j2").write_text(text, encoding="utf-8")
        if html is not None:
            (directory / "t.html.j2").write_text(html, encoding="utf-8")
        if budget is None:
            return TemplateStore(directory, content_id_domain="mail.example.org")
        return TemplateStore(directory, budget=budget, content_id_domain="mail.example.org")

    return make


def compose(rendered: RenderedTemplate) -> ComposedMessage:
    return compose_message(rendered, message_id_domain="mail.example.org")


def parse(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


class _Attributes(HTMLParser):
    """Collects attribute values as a browser decodes them (entities resolved)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.extend((tag, name, value or "") for name, value in attrs)


def attribute(html: str, name: str) -> list[str]:
    parser = _Attributes()
    parser.feed(html)
    return [value for _, attribute_name, value in parser.found if attribute_name == name]


# -- CSS inlining ------------------------------------------------------------------------

STYLED = """<html><head><style>
p { color: #123456; }
.note { font-weight: bold; }
@media (max-width: 480px) { p { font-size: 18px; } }
</style></head><body><p class="note">Hi {{ name }}</p></body></html>"""


def test_style_rules_end_up_in_style_attributes(store: Callable[..., TemplateStore]) -> None:
    html = store(STYLED).render("t", {"name": "Bob"}).html
    assert html is not None
    (style,) = attribute(html, "style")
    assert "color: #123456" in style
    assert "font-weight: bold" in style
    assert "p { color: #123456; }" not in html


def test_media_rules_stay_in_a_style_element(store: Callable[..., TemplateStore]) -> None:
    html = store(STYLED).render("t", {"name": "Bob"}).html
    assert html is not None
    (kept,) = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert "@media (max-width: 480px)" in kept
    assert "font-size: 18px" in kept
    assert "#123456" not in kept


def test_request_data_stays_escaped_through_inlining(
    store: Callable[..., TemplateStore],
) -> None:
    html = store(STYLED).render("t", {"name": "<b>&</b><style>p{color:red}</style>"}).html
    assert html is not None
    assert "Hi &lt;b&gt;&amp;&lt;/b&gt;&lt;style&gt;p{color:red}&lt;/style&gt;</p>" in html
    assert "color: red" not in html


def test_a_style_element_marked_keep_is_also_kept_as_written(
    store: Callable[..., TemplateStore],
) -> None:
    source = STYLED.replace("<style>", '<style data-css-inline="keep">')
    html = store(source).render("t", {"name": "Bob"}).html
    assert html is not None
    assert "color: #123456" in attribute(html, "style")[0]
    assert '<style data-css-inline="keep">\np { color: #123456; }' in html


def test_an_element_marked_ignore_gets_no_style(store: Callable[..., TemplateStore]) -> None:
    source = STYLED.replace('<p class="note">', '<p class="note" data-css-inline="ignore">')
    html = store(source + "<p>styled</p>").render("t", {"name": "Bob"}).html
    assert html is not None
    assert '<p class="note" data-css-inline="ignore">Hi Bob</p>' in html
    assert '<p style="color: #123456;">styled</p>' in html


def test_the_no_css_inline_comment_leaves_the_html_as_rendered_until_removed(
    store: Callable[..., TemplateStore],
) -> None:
    templates = store("{# notifier: no-css-inline -#}\n" + STYLED)
    html = templates.render("t", {"name": "Bob"}).html
    assert html == STYLED.replace("{{ name }}", "Bob")
    # Hot reload: the same store picks up the edit without the comment.
    path = templates.directory / "t.html.j2"
    path.write_text(STYLED, encoding="utf-8")
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    html = templates.render("t", {"name": "Bob"}).html
    assert html is not None
    assert "color: #123456" in attribute(html, "style")[0]


def test_html_without_a_style_element_is_left_as_rendered(
    store: Callable[..., TemplateStore],
) -> None:
    source = "<p>Hi {{ name }} &middot; <br></p>"
    assert store(source).render("t", {"name": "Bob"}).html == "<p>Hi Bob &middot; <br></p>"


@pytest.fixture
def stylesheet_server(tmp_path: Path) -> Iterator[tuple[str, Callable[[], list[str]]]]:
    """A loopback HTTP server serving CSS, and a function listing the paths requested.

    A separate process: css-inline holds the GIL while it fetches, so a server thread in
    this process could not answer.
    """
    folder = tmp_path / "css"
    folder.mkdir()
    for name in ["probe.css", "template.css", "from-request.css", "import.css"]:
        (folder / name).write_text("p { color: #ff0000; }")
    log = tmp_path / "requests.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1"],
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=log_file,
        )
    try:
        assert process.stdout is not None
        port = re.search(rb"port (\d+)", process.stdout.readline())
        assert port is not None

        def requested() -> list[str]:
            return re.findall(r'"GET (\S+) HTTP', log.read_text())

        yield f"http://127.0.0.1:{int(port[1])}", requested
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def test_stylesheets_are_never_fetched(
    store: Callable[..., TemplateStore], stylesheet_server: tuple[str, Callable[[], list[str]]]
) -> None:
    base, requested = stylesheet_server
    # The server works: css-inline with its default options does fetch from it.
    probe = f'<html><head><link rel="stylesheet" href="{base}/probe.css"></head><body><p>x</p>'
    assert "#ff0000" in css_inline.CSSInliner().inline(probe)
    assert requested() == ["/probe.css"]

    source = (
        '<html><head><link rel="stylesheet" href="{{ base }}/template.css">'
        '<link rel="stylesheet" href="{{ sheet }}">'
        "<style>@import url({{ base }}/import.css); p { margin: 0 }</style>"
        "</head><body><p>Hi</p></body></html>"
    )
    html = store(source).render("t", {"base": base, "sheet": f"{base}/from-request.css"}).html
    assert html is not None
    assert requested() == ["/probe.css"]
    assert "#ff0000" not in html
    assert "margin: 0" in attribute(html, "style")[0]
    # The links stay for the mail client to use.
    assert f"{base}/template.css" in attribute(html, "href")


def test_what_inlining_adds_counts_against_the_output_budget(
    store: Callable[..., TemplateStore],
) -> None:
    style = "td { " + " ".join(f"--v{i}: {i};" for i in range(40)) + " }"
    source = f"<html><head><style>{style}</style></head><body><table><tr>"
    source += "{% for i in range(600) %}<td>{{ i }}</td>{% endfor %}</tr></table></body></html>"
    budget = RenderBudget(seconds=5.0, max_output=64 * 1024)
    templates = store(source, budget=budget)
    rendered_alone = len(source) + 600 * 10
    assert rendered_alone < budget.max_output  # the template alone is within budget
    with pytest.raises(RenderBudgetExceeded) as raised:
        templates.render("t", {})
    assert raised.value.extra["budget"] == "output"


def test_a_long_html_part_is_inlined_off_the_event_loop(
    store: Callable[..., TemplateStore],
) -> None:
    source = "<html><head><style>p { color: red }</style></head><body>"
    source += "{% for i in range(n) %}<p>{{ i }}</p>{% endfor %}</body></html>"
    templates = store(source)
    short = templates.render("t", {"n": 10}, slice_seconds=10.0)
    assert short.html is not None
    assert 'style="color: red;"' in short.html
    with pytest.raises(SliceExhausted):
        templates.render("t", {"n": LOOP_CSS_INLINE_CHARS // 10}, slice_seconds=10.0)
    # In a render process (no slice) the same render completes.
    long = templates.render("t", {"n": LOOP_CSS_INLINE_CHARS // 10})
    assert long.html is not None
    assert long.html.count('style="color: red;"') == LOOP_CSS_INLINE_CHARS // 10


def big_html_template() -> str:
    """An HTML part that renders in no time (its text is written out, not looped) but is
    3.6 MB long when ``big`` is true: css-inline takes over a second on it (measured
    1.7 s), so only the inlining itself can keep the event loop busy."""
    rows = "".join(f"<tr><td>{i}</td><td>x</td></tr>" for i in range(110_000))
    return (
        "<html><head><style>h1 { color: #00aa00 } @media print { td { color: black } }"
        "</style></head><body><h1>Report</h1>"
        f"{{% if big %}}<table>{rows}</table>{{% endif %}}</body></html>"
    )


def test_inlining_a_big_html_part_never_stalls_the_server(
    tmp_path: Path, settings_data: dict[str, Any], templates_dir: Path
) -> None:
    (templates_dir / "report.j2").write_text(HEAD)
    (templates_dir / "report.html.j2").write_text(big_html_template())
    # A generous budget: the point is the event loop, not the time limit.
    settings_data["limits"]["render_timeout"] = 30
    path = tmp_path / "big-html.yml"
    path.write_text(json.dumps(settings_data))
    server = ServeProcess.start(path)
    try:
        asyncio.run(_render_big_html_while_probing(server.url))
    finally:
        server.stop()


async def _render_big_html_while_probing(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        # Compiling the template takes a while; a small render first does it, and is
        # quick enough to leave the template on the event loop's fast path.
        assert (await http.post("/v1/render/report", json={"big": False})).status_code == 200
        async with healthz_probe(http) as health_times:
            started = time.perf_counter()
            responses = await asyncio.gather(
                *(http.post("/v1/render/report", json={"big": True}) for _ in range(2))
            )
            elapsed = time.perf_counter() - started
    for response in responses:
        assert response.status_code == 200, response.text
        html_part = parse(response.content).get_body(preferencelist=("html",))
        assert html_part is not None
        html = html_part.get_content()
        assert len(html) > 3_500_000
        assert '<h1 style="color: #00aa00;">Report</h1>' in html
        assert "@media print" in html
    assert len(health_times) > 3, elapsed
    assert max(health_times) < 1.0, f"/healthz took {max(health_times):.2f} s"


# -- safe_url ----------------------------------------------------------------------------

HOSTILE_URLS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    "JAVASCRIPT:alert(1)",
    " javascript:alert(1)",
    "\x00javascript:alert(1)",
    "\x01\x02\x1fjavascript:alert(1)",
    "\t\n javascript:alert(1)",
    "java\tscript:alert(1)",
    "java\nscript:alert(1)",
    "java\rscript:alert(1)",
    "javascript&#58;alert(1)",
    "javascript&#x3A;alert(1)",
    "javascript&colon;alert(1)",
    "\u00a0javascript:alert(1)",
    "javascript\uff1aalert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "DATA:image/svg+xml,<svg onload=alert(1)>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "jar:https://x.example/!/",
    "//evil.example/path",
    "/relative/path",
    "relative/path",
    "?query",
    "#fragment",
    "",
    "   ",
    "https\x00://example.com",
    "https://example.com/\x00evil",
    "https://example.com/\x7f",
]
ALLOWED_URLS = [
    "https://track.example.com/PF123456789",
    "http://example.com/a?b=1&c=2#frag",
    "HTTPS://EXAMPLE.COM/",
    "mailto:help@example-shop.com?subject=Order%20A-1",
    "tel:+44-20-7946-0000",
    "https://example.com/path with space",
    "https://例え.jp/パス",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_safe_url_turns_every_other_url_into_about_blank(
    store: Callable[..., TemplateStore], url: str
) -> None:
    assert safe_url(url) == "about:blank"
    html = store('<a href="{{ url | safe_url }}">x</a><img src="{{ url | safe_url }}">').render(
        "t", {"url": url}
    )
    assert html.html is not None
    assert attribute(html.html, "href") == ["about:blank"]
    assert attribute(html.html, "src") == ["about:blank"]


@pytest.mark.parametrize("url", ALLOWED_URLS)
def test_safe_url_keeps_allowed_urls_as_they_are(
    store: Callable[..., TemplateStore], url: str
) -> None:
    assert safe_url(url) == url
    html = store('<a href="{{ url | safe_url }}">x</a>').render("t", {"url": url}).html
    assert html is not None
    assert attribute(html, "href") == [url]


def test_safe_url_strips_what_browsers_strip(store: Callable[..., TemplateStore]) -> None:
    assert safe_url("  https://example.com/\n") == "https://example.com/"
    assert safe_url("ht\ttps://exa\nmple.com/") == "https://example.com/"


def test_safe_url_reads_markup_as_the_browser_will(store: Callable[..., TemplateStore]) -> None:
    assert safe_url(Markup("javascript&#58;alert(1)")) == "about:blank"
    assert safe_url(Markup("https://example.com/?a=1&amp;b=2")) == "https://example.com/?a=1&b=2"
    source = '<a href="{{ url | safe | safe_url }}">x</a>'
    html = store(source).render("t", {"url": "javascript&#x3a;alert(1)"}).html
    assert html is not None
    assert attribute(html, "href") == ["about:blank"]


def test_safe_url_sees_through_value_markers(store: Callable[..., TemplateStore]) -> None:
    # A {% set %} block holds the url as printed, value markers included.
    source = '{% set link %}{{ url }}{% endset %}<a href="{{ link | safe_url }}">x</a>'
    templates = store(source)
    for url, expected in [
        ("https://example.com/", "https://example.com/"),
        ("javascript:alert(1)", "about:blank"),
    ]:
        html = templates.render("t", {"url": url}).html
        assert html is not None
        assert attribute(html, "href") == [expected]


def test_safe_url_works_in_the_text_part(store: Callable[..., TemplateStore]) -> None:
    text = HEAD + "Link: {{ url | safe_url }}\n"
    composed = compose(store(None, text=text).render("t", {"url": "javascript:alert(1)"}))
    assert b"Link: about:blank" in composed.data


@given(st.text())
def test_safe_url_only_ever_gives_an_allowed_scheme_or_about_blank(url: str) -> None:
    result = safe_url(url)
    if result != "about:blank":
        scheme, colon, _ = result.partition(":")
        assert colon
        assert scheme.lower() in SAFE_URL_SCHEMES
        assert re.search("[\x00-\x20\x7f]", scheme + colon) is None


# -- inline images -----------------------------------------------------------------------


def related_parts(message: EmailMessage) -> tuple[EmailMessage, EmailMessage, list[Any]]:
    """The text, html and image parts of alternative[text, related[html, images...]]."""
    assert message.get_content_type() == "multipart/alternative"
    text, related = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    assert related.get_param("type") == "text/html"
    html, *images = related.iter_parts()
    assert html.get_content_type() == "text/html"
    # MIME-Version belongs on the message only.
    assert [part for part in message.walk() if part["MIME-Version"]] == [message]
    assert isinstance(text, EmailMessage)
    assert isinstance(html, EmailMessage)
    return text, html, images


async def test_order_shipped_is_delivered_with_its_logo_as_a_related_part(
    serving: MakeClient, delivery_settings: dict[str, Any], smtp_capture: Any
) -> None:
    order = json.loads((ROOT / "templates" / "order_shipped.example.json").read_text())
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/order_shipped", json=order)
    assert response.status_code == 202
    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    message = parse(captured.data)
    _, html_part, images = related_parts(message)
    (image,) = images
    assert image.get_content_type() == "image/png"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "logo.png"
    assert image["Content-Transfer-Encoding"] == "base64"
    assert image.get_content() == LOGO.read_bytes()
    content_id = image["Content-ID"]
    assert re.fullmatch(r"<[0-9a-f]{24}@notifier\.test>", content_id)
    html = html_part.get_content()
    (logo_src,) = [src for src in attribute(html, "src") if src.startswith("cid:")]
    assert f"<{logo_src.removeprefix('cid:')}>" == content_id
    # The <style> block went into attributes; the tracking link passed safe_url.
    assert 'class="button"' in html
    assert "background: #6f4e37" in html
    assert "https://track.example.com/PF123456789" in attribute(html, "href")
    assert max(map(len, image.get_payload().splitlines())) <= 76
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"


async def test_the_json_view_gives_the_html_of_a_related_part(
    client: QuartClient, templates_dir: Path
) -> None:
    order = json.loads((templates_dir / "order_shipped.example.json").read_text())
    response = await client.post(
        "/v1/render/order_shipped", json=order, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    view = await response.get_json()
    assert view["html"].startswith("<!DOCTYPE html>")
    assert "cid:" in view["html"]
    assert view["text"].startswith("Hello Bob Smith,")
    assert message_view(view["raw"].encode("ascii"))["html"] == view["html"]


def test_an_asset_named_twice_is_sent_once(store: Callable[..., TemplateStore]) -> None:
    templates = store(
        '<img src="{{ inline_image("logo.png") }}"><img src="{{ inline_image(name) }}">'
    )
    (templates.directory / "assets" / "logo.png").write_bytes(LOGO.read_bytes())
    rendered = templates.render("t", {"name": "logo.png"})
    assert rendered.html is not None
    first, second = attribute(rendered.html, "src")
    assert first == second
    (image,) = rendered.inline_images
    assert first == "cid:" + image.content_id
    _, _, parts = related_parts(parse(compose(rendered).data))
    assert len(parts) == 1


def test_images_in_subfolders_keep_their_order(store: Callable[..., TemplateStore]) -> None:
    templates = store(
        '<img src="{{ inline_image("icons/b.gif") }}"><img src="{{ inline_image("a.jpg") }}">'
    )
    assets = templates.directory / "assets"
    (assets / "icons").mkdir()
    (assets / "icons" / "b.gif").write_bytes(b"GIF89a-b")
    (assets / "a.jpg").write_bytes(b"\xff\xd8\xff-a")
    rendered = templates.render("t", {})
    _, html, parts = related_parts(parse(compose(rendered).data))
    assert [(part.get_content_type(), part.get_filename()) for part in parts] == [
        ("image/gif", "b.gif"),
        ("image/jpeg", "a.jpg"),
    ]
    assert [part.get_content() for part in parts] == [b"GIF89a-b", b"\xff\xd8\xff-a"]
    assert [f"<{src[4:]}>" for src in attribute(html.get_content(), "src")] == [
        part["Content-ID"] for part in parts
    ]


@pytest.fixture
def asset_probe(templates_dir: Path, tmp_path: Path) -> Path:
    """A template showing the asset the request names, and files outside assets/ that
    links inside it point to."""
    (templates_dir / "probe.j2").write_text(HEAD)
    (templates_dir / "probe.html.j2").write_text('<img src="{{ inline_image(asset) }}">')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"not yours")
    assets = templates_dir / "assets"
    (assets / "out.png").symlink_to(outside / "secret.png")
    (assets / "outdir").symlink_to(outside, target_is_directory=True)
    (assets / "notes.txt").write_text("a text file")
    (assets / "folder.png").mkdir()
    return outside


@pytest.mark.parametrize(
    "asset",
    [
        "../settings.yml",
        "../order_shipped.j2",
        "../../outside/secret.png",
        "./logo.png",
        "sub/../logo.png",
        ".hidden.png",
        "logo.png/",
        "//logo.png",
        "logo.png\x00.txt",
        "logo.png\x00",
        "..\\logo.png",
        "%2e%2e/logo.png",
        "out.png",
        "outdir/secret.png",
        "notes.txt",
        "folder.png",
        "missing.png",
        "",
        "x" * 300 + ".png",
    ],
)
async def test_an_asset_outside_assets_or_missing_is_422(
    client: QuartClient, asset_probe: Path, asset: str
) -> None:
    response = await client.post(
        "/v1/render/probe", json={"asset": asset}, headers={"Accept": "application/json"}
    )
    body = await assert_problem(response, 422)
    assert body["title"] == "Inline image unavailable"
    assert "not yours" not in json.dumps(body)
    assert str(asset_probe) not in body["detail"]


async def test_an_absolute_asset_path_is_422(client: QuartClient, asset_probe: Path) -> None:
    for asset in [str(asset_probe / "secret.png"), str(LOGO), "/etc/passwd"]:
        response = await client.post("/v1/render/probe", json={"asset": asset})
        body = await assert_problem(response, 422)
        assert body["title"] == "Inline image unavailable"


async def test_a_missing_asset_fails_only_its_template(
    client: QuartClient, templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    (templates_dir / "assets" / "logo.png").unlink()
    order = json.loads((templates_dir / "order_shipped.example.json").read_text())
    response = await client.post("/v1/render/order_shipped", json=order)
    body = await assert_problem(response, 422)
    assert body["detail"] == "inline_image('logo.png'): assets/logo.png does not exist"
    assert body["asset"] == "logo.png"
    assert (await client.post("/v1/render/burger_receipt", json=burger_order)).status_code == 200


def test_check_reports_a_missing_asset(templates_dir: Path) -> None:
    (templates_dir / "assets" / "logo.png").unlink()
    result = notifier("check", "--templates", str(templates_dir))
    output = result.stdout.decode()
    assert result.returncode == 1, output
    assert "FAIL  order_shipped" in output
    assert "assets/logo.png does not exist" in output
    assert "ok    burger_receipt" in output


def test_inline_image_in_the_text_part_is_422(store: Callable[..., TemplateStore]) -> None:
    templates = store(None, text=HEAD + "{{ inline_image('logo.png') }}\n")
    with pytest.raises(TemplateError, match=r"works in \.html\.j2 parts only"):
        templates.render("t", {})


async def test_an_edited_asset_goes_out_in_later_messages(
    client: QuartClient, templates_dir: Path
) -> None:
    order = json.loads((templates_dir / "order_shipped.example.json").read_text())

    async def logo_sent() -> bytes:
        response = await client.post("/v1/render/order_shipped", json=order)
        assert response.status_code == 200
        _, _, (image,) = related_parts(parse(await response.get_data()))
        data: bytes = image.get_content()
        return data

    assert await logo_sent() == LOGO.read_bytes()
    assert await logo_sent() == LOGO.read_bytes()  # from the cache
    red = png(8, 8, (255, 0, 0, 255))
    path = templates_dir / "assets" / "logo.png"
    path.write_bytes(red)
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert await logo_sent() == red


async def test_large_inline_images_survive_the_hand_off_to_a_render_process(tmp_path: Path) -> None:
    directory = tmp_path / "tpl"
    (directory / "assets").mkdir(parents=True)
    (directory / "t.j2").write_text(HEAD)
    (directory / "t.html.j2").write_text('<img src="{{ inline_image("big.png") }}">')
    big = os.urandom(300 * 1024)
    (directory / "assets" / "big.png").write_bytes(big)
    renderer = Renderer(
        templates=TemplateStore(directory, content_id_domain="mail.example.org"),
        message_id_domain="mail.example.org",
        default_from=None,
    )
    try:
        composed = await renderer.render_async("t", {})
    finally:
        renderer.close()
    _, html, (image,) = related_parts(parse(composed.data))
    assert image.get_content() == big
    assert attribute(html.get_content(), "src") == ["cid:" + image["Content-ID"][1:-1]]
