"""The operator console (/console) through the Quart test client: access, sessions and
their cookie, CSRF refusals, the preview's answers next to the API's, message listings,
retries, escaping and headers. The browser test (tests/test_console_browser.py) drives
the same pages in Chromium."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from quart.typing import TestClientProtocol as QuartClient

from notifier.app import create_app
from notifier.console.access import CONTENT_SECURITY_POLICY
from notifier.console.session import COOKIE_NAME, SESSION_SECONDS
from notifier.outbox import NewMessage, Outbox
from notifier.settings import Settings
from tests.conftest import MakeClient, finished, wait_for_status

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "console-admin-token-0123456789"
SEND_TOKEN = "console-send-token-0123456789"
TOKENS = [
    {"name": "ops", "token": ADMIN_TOKEN, "scopes": ["admin"]},
    {"name": "shop", "token": SEND_TOKEN, "scopes": ["send"]},
]
SAME_ORIGIN = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}
HOSTILE = '<img src=x onerror="document.title=1"><script>alert(1)</script>'


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page) or re.search(
        r'data-csrf="([0-9a-f]+)"', page
    )
    assert found is not None, page
    return found[1]


def _cookie_header(response: Any) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith(COOKIE_NAME)]
    assert len(cookies) == 1, response.headers
    return str(cookies[0])


async def _page(client: QuartClient, path: str) -> str:
    response = await client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return await response.get_data(as_text=True)


@pytest.fixture
def token_settings(settings_data: dict[str, Any]) -> dict[str, Any]:
    settings_data["auth"] = {"tokens": TOKENS}
    return settings_data


@pytest.fixture
def token_client(token_settings: dict[str, Any]) -> QuartClient:
    return create_app(Settings.from_mapping(token_settings)).test_client()


async def _sign_in(client: QuartClient, token: str = ADMIN_TOKEN) -> Any:
    return await client.post("/console/sign-in", form={"token": token}, headers=SAME_ORIGIN)


# -- access ------------------------------------------------------------------------------


async def test_open_without_tokens_and_lists_the_templates(client: QuartClient) -> None:
    response = await client.get("/console")
    assert response.status_code == 200
    page = await response.get_data(as_text=True)
    assert 'href="/console/templates/burger_receipt"' in page
    assert 'href="/console/templates/order_shipped"' in page
    assert "Sign out" not in page  # nobody signed in: nothing to sign out of
    # Even open, the page gets a session: it carries the CSRF token of its forms.
    assert "HttpOnly" in _cookie_header(response)


async def test_closed_with_tokens_pages_redirect_and_script_endpoints_answer_401(
    token_client: QuartClient,
) -> None:
    for path in ("/console", "/console/templates/burger_receipt", "/console/messages"):
        response = await token_client.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"] == "/console/sign-in"
        assert not response.headers.getlist("Set-Cookie")
    response = await token_client.get("/console/templates/burger_receipt/version")
    assert response.status_code == 401
    assert (await response.get_json())["type"] == "urn:notifier:problem:unauthorized"
    response = await token_client.post(
        "/console/templates/burger_receipt/preview", json={}, headers=SAME_ORIGIN
    )
    assert response.status_code == 401
    sign_in = await token_client.get("/console/sign-in")
    assert sign_in.status_code == 200
    assert 'name="token"' in await sign_in.get_data(as_text=True)


async def test_an_api_token_header_does_not_open_the_console(token_client: QuartClient) -> None:
    # The console takes sessions only: a bearer token is the API's, and a page fetched
    # with one by some script still redirects to the sign-in form.
    response = await token_client.get(
        "/console", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 303


async def test_sign_in_with_an_admin_token_sets_a_strict_session_cookie(
    token_client: QuartClient,
) -> None:
    response = await _sign_in(token_client)
    assert response.status_code == 303
    assert response.headers["Location"] == "/console"
    cookie = _cookie_header(response)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "SameSite=Strict" in cookie
    assert "Path=/console" in cookie
    assert f"Max-Age={SESSION_SECONDS}" in cookie
    assert "secure" not in attributes  # plain HTTP here; see the HTTPS test
    assert ADMIN_TOKEN not in cookie  # the cookie names the token, it does not hold it
    page = await _page(token_client, "/console")
    assert "burger_receipt" in page
    assert "Sign out (ops)" in page


async def test_the_cookie_is_secure_when_served_over_https(token_client: QuartClient) -> None:
    response = await token_client.post(
        "/console/sign-in",
        form={"token": ADMIN_TOKEN},
        headers={"Origin": "https://localhost"},
        scheme="https",
    )
    assert response.status_code == 303
    assert "Secure" in _cookie_header(response)


async def test_a_token_without_the_admin_scope_is_refused(token_client: QuartClient) -> None:
    response = await _sign_in(token_client, SEND_TOKEN)
    assert response.status_code == 403
    assert "lacks the &#39;admin&#39; scope" in await response.get_data(as_text=True)
    assert not response.headers.getlist("Set-Cookie")
    assert (await token_client.get("/console")).status_code == 303


async def test_a_wrong_token_is_refused_and_guessing_is_rate_limited(
    token_client: QuartClient,
) -> None:
    statuses = []
    for attempt in range(12):
        response = await _sign_in(token_client, f"not-the-token-{attempt:04d}-xxxxxxxx")
        statuses.append(response.status_code)
        assert not response.headers.getlist("Set-Cookie")
    # The API's budget for failed authentications (burst 10), shared with the API.
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429, 429]
    assert int(response.headers["Retry-After"]) > 0
    api = await token_client.get(
        "/v1/templates", headers={"Authorization": "Bearer still-not-the-token-0000"}
    )
    assert api.status_code == 429


async def test_sign_out_ends_the_session(token_client: QuartClient) -> None:
    await _sign_in(token_client)
    page = await _page(token_client, "/console")
    response = await token_client.post(
        "/console/sign-out", form={"csrf": _csrf(page)}, headers=SAME_ORIGIN
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/console/sign-in"
    cleared = _cookie_header(response)
    assert "Max-Age=0" in cleared or "Expires=Thu, 01 Jan 1970" in cleared
    assert (await token_client.get("/console")).status_code == 303


async def test_a_forged_or_foreign_session_cookie_is_not_a_session(
    token_settings: dict[str, Any], settings_data: dict[str, Any]
) -> None:
    signed_in = create_app(Settings.from_mapping(token_settings)).test_client()
    cookie = _cookie_header(await _sign_in(signed_in)).split(";")[0].split("=", 1)[1]
    # Another replica with the same tokens accepts it: the key comes from the tokens.
    replica = create_app(Settings.from_mapping(token_settings)).test_client()
    replica.set_cookie("localhost", COOKIE_NAME, cookie, path="/console")
    assert (await replica.get("/console")).status_code == 200
    # With other admin tokens it means nothing, and neither does a tampered one.
    rotated = dict(token_settings, auth={"tokens": [dict(TOKENS[0], token="z" * 32)]})
    other = create_app(Settings.from_mapping(rotated)).test_client()
    other.set_cookie("localhost", COOKIE_NAME, cookie, path="/console")
    assert (await other.get("/console")).status_code == 303
    tampered = create_app(Settings.from_mapping(token_settings)).test_client()
    tampered.set_cookie("localhost", COOKIE_NAME, cookie[:-2] + "xx", path="/console")
    assert (await tampered.get("/console")).status_code == 303


async def test_the_token_never_reaches_the_log(
    token_client: QuartClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _sign_in(token_client)
    await _sign_in(token_client, "wrong-" + ADMIN_TOKEN)
    await _page(token_client, "/console")
    logged = " ".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert "/console/sign-in" in logged  # the request lines are there...
    assert ADMIN_TOKEN not in logged  # ...without the form they carried
    assert "'token': 'ops'" in logged  # the operator is named, as API callers are


# -- CSRF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "with_token"),
    [
        ({}, False),
        (SAME_ORIGIN, False),
        ({"Origin": "https://evil.example"}, True),
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),
    ],
)
async def test_changes_without_csrf_token_or_from_elsewhere_are_refused(
    token_client: QuartClient, headers: dict[str, str], with_token: bool
) -> None:
    await _sign_in(token_client)
    page = await _page(token_client, "/console")
    form = {"csrf": _csrf(page)} if with_token else {}
    response = await token_client.post("/console/sign-out", form=form, headers=headers)
    assert response.status_code == 403
    problem = await response.get_json()
    assert problem["type"] == "urn:notifier:problem:forbidden"
    assert (await token_client.get("/console")).status_code == 200  # still signed in


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://localhost", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "https://localhost"},  # a browser that sends no Sec-Fetch-Site
    ],
)
async def test_signing_in_behind_a_proxy_that_ends_tls_works(
    token_client: QuartClient, headers: dict[str, str]
) -> None:
    # The page is https://localhost/console at the proxy; notifier sees plain http.
    response = await token_client.post(
        "/console/sign-in", form={"token": ADMIN_TOKEN}, headers=headers
    )
    assert response.status_code == 303
    page = await _page(token_client, "/console")
    response = await token_client.post(
        "/console/sign-out", form={"csrf": _csrf(page)}, headers=headers
    )
    assert response.status_code == 303


async def test_a_wrong_csrf_token_is_refused(token_client: QuartClient) -> None:
    await _sign_in(token_client)
    response = await token_client.post(
        "/console/templates/burger_receipt/preview",
        json={},
        headers={**SAME_ORIGIN, "X-CSRF-Token": "0" * 64},
    )
    assert response.status_code == 403
    assert "CSRF" in (await response.get_json())["detail"]


async def test_a_cross_site_sign_in_is_refused(token_client: QuartClient) -> None:
    response = await token_client.post(
        "/console/sign-in", form={"token": ADMIN_TOKEN}, headers={"Origin": "https://evil.example"}
    )
    assert response.status_code == 403
    assert not response.headers.getlist("Set-Cookie")


async def test_an_open_console_refuses_changes_without_its_csrf_token(
    client: QuartClient,
) -> None:
    # No tokens: anyone reaching the port may use the console, but a web page elsewhere
    # must not make a visitor's browser act on it.
    response = await client.post("/console/messages/0/retry", headers=SAME_ORIGIN)
    assert response.status_code == 403


# -- headers -------------------------------------------------------------------------------


async def test_every_console_answer_carries_the_strict_policy(token_client: QuartClient) -> None:
    await _sign_in(token_client)
    for path in (
        "/console",
        "/console/sign-in",
        "/console/templates/burger_receipt",
        "/console/templates/burger_receipt/version",
        "/console/messages",
        "/console/messages/nope",
        "/console/static/console.js",
        "/console/static/console.css",
    ):
        response = await token_client.get(path)
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
        assert response.headers["X-Content-Type-Options"] == "nosniff", path
        assert response.headers["X-Frame-Options"] == "DENY", path
    policy = CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy


async def test_pages_hold_no_inline_script_or_style(client: QuartClient) -> None:
    for path in ("/console", "/console/templates/order_shipped", "/console/messages"):
        page = await _page(client, path)
        assert re.findall(r"<script[^>]*>", page) == [
            '<script src="/console/static/console.js" defer>'
        ]
        assert "<style" not in page
        assert " style=" not in page
        assert not re.search(r"<[^>]+\son[a-z]+=", page)


async def test_static_files_and_templates_ship_in_the_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["notifier"]
    package = ROOT / "notifier"
    shipped = [
        path.relative_to(package).as_posix()
        for folder in ("console/templates", "console/static")
        for path in (package / folder).rglob("*")
        if path.is_file()
    ]
    assert len(shipped) >= 8
    for name in shipped:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name


async def test_unknown_template_and_message_are_404_problems(client: QuartClient) -> None:
    for path in (
        "/console/templates/nope",
        "/console/templates/..%2fsettings",
        "/console/messages/x",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.mimetype == "application/problem+json"


# -- preview -------------------------------------------------------------------------------


async def _preview(client: QuartClient, name: str, context: Any) -> Any:
    page = await _page(client, f"/console/templates/{name}")
    response = await client.post(
        f"/console/templates/{name}/preview",
        data=json.dumps(context),
        headers={**SAME_ORIGIN, "Content-Type": "application/json", "X-CSRF-Token": _csrf(page)},
    )
    assert response.status_code == 200
    return await response.get_json()


async def test_the_preview_page_starts_from_the_example_data(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    page = await _page(client, "/console/templates/burger_receipt")
    textarea = re.search(r'<textarea id="context"[^>]*>(.*?)</textarea>', page, re.S)
    assert textarea is not None
    assert json.loads(textarea[1].replace("&#34;", '"').replace("&quot;", '"')) == burger_order


async def test_the_preview_renders_as_the_api_does(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    answer = await _preview(client, "burger_receipt", burger_order)
    api = await client.post(
        "/v1/render/burger_receipt", json=burger_order, headers={"Accept": "application/json"}
    )
    expected = await api.get_json()
    message = answer["message"]
    assert message["headers"]["Subject"] == "Your Burger order"
    assert message["text"] == expected["text"]
    assert message["envelope"] == expected["envelope"]
    assert "Cheeseburger (4.5 Euros)" in message["text"]
    assert message["raw"].startswith(next(iter(expected["raw"].splitlines())).split(":")[0])


@pytest.mark.parametrize(
    ("change", "slug"),
    [
        (lambda order: order.pop("items"), "missing-variable"),
        (lambda order: order.update(subject="Hi\r\nBcc: all@example.com"), "header-injection"),
    ],
)
async def test_preview_problems_are_the_api_problems(
    client: QuartClient, burger_order: dict[str, Any], change: Any, slug: str
) -> None:
    change(burger_order)
    answer = await _preview(client, "burger_receipt", burger_order)
    api = await client.post("/v1/render/burger_receipt", json=burger_order)
    assert api.status_code == 422
    assert answer == {"problem": await api.get_json()}
    assert answer["problem"]["type"] == f"urn:notifier:problem:{slug}"


async def test_preview_of_text_that_is_not_a_json_object_is_the_api_400(
    client: QuartClient,
) -> None:
    page = await _page(client, "/console/templates/burger_receipt")
    response = await client.post(
        "/console/templates/burger_receipt/preview",
        data="[1, 2",
        headers={**SAME_ORIGIN, "Content-Type": "application/json", "X-CSRF-Token": _csrf(page)},
    )
    answer = await response.get_json()
    assert answer["problem"]["status"] == 400
    assert "not valid JSON" in answer["problem"]["detail"]


async def test_the_html_frame_document_has_its_own_sandbox_policy(
    client: QuartClient, burger_order: dict[str, Any]
) -> None:
    page = await _page(client, "/console/templates/order_shipped")
    example = json.loads((ROOT / "templates" / "order_shipped.example.json").read_text())
    response = await client.post(
        "/console/templates/order_shipped/html",
        form={"csrf": _csrf(page), "context": json.dumps(example)},
        headers=SAME_ORIGIN,
    )
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox;")
    assert "script-src" not in policy
    assert "default-src 'none'" in policy
    assert "<" in await response.get_data(as_text=True)
    broken = await client.post(
        "/console/templates/order_shipped/html",
        form={"csrf": _csrf(page), "context": '{"no": "variables"}'},
        headers=SAME_ORIGIN,
    )
    assert "No preview" in await broken.get_data(as_text=True)


async def test_the_version_changes_when_a_template_file_is_edited(
    client: QuartClient, templates_dir: Path
) -> None:
    first = await (await client.get("/console/templates/burger_receipt/version")).get_json()
    again = await (await client.get("/console/templates/burger_receipt/version")).get_json()
    assert first == again
    path = templates_dir / "burger_receipt.j2"
    path.write_text(path.read_text() + "\nEdited.\n")
    edited = await (await client.get("/console/templates/burger_receipt/version")).get_json()
    assert edited["version"] != first["version"]
    assert edited["valid"] is True


async def test_a_broken_template_is_listed_with_its_error_line(
    client: QuartClient, templates_dir: Path
) -> None:
    (templates_dir / "broken.j2").write_text("Subject: x\n\n{% if %}\n")
    page = await _page(client, "/console")
    row = re.search(r'href="/console/templates/broken".*?</tr>', page, re.S)
    assert row is not None
    assert 'class="bad"' in row[0]
    assert "line" in row[0]


# -- messages ------------------------------------------------------------------------------


async def _store(client: QuartClient, **fields: Any) -> str:
    outbox: Outbox = client.app.extensions["notifier.outbox"]  # type: ignore[attr-defined]
    record = await outbox.add(
        NewMessage(
            template=fields.get("template", "burger_receipt"),
            context_hash="0" * 64,
            message_id="<m@notifier.test>",
            sender=fields.get("sender", "shop@example.com"),
            recipients=fields.get("recipients", ["bob@example.com"]),
            data=b"Subject: x\r\n\r\nx\r\n",
        ),
        subscribers=["smtp"],
    )
    return record.id


async def test_hostile_message_data_is_text_on_the_pages(settings: Settings) -> None:
    app = create_app(settings)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        message_id = await _store(
            client, sender=f"{HOSTILE}@example.com", recipients=[f'"{HOSTILE}"@example.com']
        )
        for path in ("/console/messages?since=all", f"/console/messages/{message_id}"):
            page = await _page(client, path)
            assert "<script>alert" not in page
            assert "<img src=x" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_failed_messages_are_listed_and_retried_with_their_smtp_answers(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    delivery_settings["delivery"]["max_attempts"] = 1
    client = await serving(delivery_settings)
    burger_order["to"] = "fail-550@example.com"
    failing = await client.post("/v1/send/burger_receipt", json=burger_order)
    burger_order["to"] = "bob@example.com"
    fine = await client.post("/v1/send/burger_receipt", json=burger_order)
    failed = await wait_for_status(client, failing.headers["Location"], finished)
    delivered = await wait_for_status(client, fine.headers["Location"], finished)
    assert (failed["status"], delivered["status"]) == ("failed", "delivered")

    listing = await _page(client, "/console/messages?status=failed&since=all")
    assert failed["id"] in listing
    assert delivered["id"] not in listing
    everything = await _page(client, "/console/messages?since=all")
    assert failed["id"] in everything
    assert delivered["id"] in everything
    other_template = await _page(client, "/console/messages?template=order_shipped&since=all")
    assert failed["id"] not in other_template

    page = await _page(client, f"/console/messages/{failed['id']}")
    csrf = _csrf(page)
    assert "550" in page
    assert "fail-550@example.com" in page
    assert 'id="retry"' in page
    retried = await client.post(
        f"/console/messages/{failed['id']}/retry", form={"csrf": _csrf(page)}, headers=SAME_ORIGIN
    )
    assert retried.status_code == 303
    assert retried.headers["Location"] == f"/console/messages/{failed['id']}?retried=1"
    after = await (await client.get(f"/v1/messages/{failed['id']}")).get_json()
    assert after["subscribers"]["smtp"]["status"] in ("queued", "sending", "failed")
    assert "queued again" in await _page(client, retried.headers["Location"])

    page = await _page(client, f"/console/messages/{delivered['id']}")
    assert 'id="retry"' not in page
    nothing = await client.post(
        f"/console/messages/{delivered['id']}/retry",
        form={"csrf": csrf},
        headers=SAME_ORIGIN,
    )
    assert nothing.status_code == 409
    assert "no failed delivery" in await nothing.get_data(as_text=True)


async def test_the_time_filter_leaves_out_older_messages(settings: Settings) -> None:
    two_days_ago = time.time() - 2 * 24 * 3600
    app = create_app(settings, clock=lambda: two_days_ago)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        message_id = await _store(client)
        assert message_id not in await _page(client, "/console/messages")  # last 24 hours
        assert message_id not in await _page(client, "/console/messages?since=1h")
        assert message_id in await _page(client, "/console/messages?since=7d")
        assert message_id in await _page(client, "/console/messages?since=all&status=queued")
        assert message_id not in await _page(client, "/console/messages?since=all&status=failed")
