"""The capture server's JSON API: pinned fields, raw bytes, deletes, long poll, problems."""

from __future__ import annotations

import smtplib
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from quart import Quart

from notifier.capture import BackgroundCaptureServer, FaultRules, MessageStore
from notifier.capture.web import create_capture_app
from tests.capture_helpers import burger_receipt

PROBLEM = "application/problem+json"


@pytest.fixture
def store(tmp_path: Path) -> MessageStore:
    return MessageStore(tmp_path / "capture")


@pytest.fixture
def faults() -> FaultRules:
    return FaultRules()


@pytest.fixture
def app(store: MessageStore, faults: FaultRules) -> Quart:
    return create_capture_app(store, faults)


def multipart_receipt() -> bytes:
    message = EmailMessage()
    message["From"] = "Shop <shopping@example-shop.com>"
    message["To"] = "Bob <bob@example.com>, carol@example.com"
    message["Subject"] = "Grüße: your order"
    message["Date"] = "Thu, 21 Nov 2024 12:00:00 +0000"
    message.set_content("Cheeseburger\nFries\n")
    message.add_alternative("<p>Cheeseburger &amp; <b>Fries</b></p>", subtype="html")
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


async def test_list_shows_pinned_fields_newest_first(app: Quart, store: MessageStore):
    first = store.add("shopping@example-shop.com", ["bob@example.com"], burger_receipt())
    second = store.add(
        "bounce@example-shop.com", ["bob@example.com", "x@example.com"], multipart_receipt()
    )

    response = await app.test_client().get("/api/messages")

    assert response.status_code == 200
    body = await response.get_json()
    assert [message["id"] for message in body["messages"]] == [second.id, first.id]
    newest = body["messages"][0]
    assert newest["envelope"] == {
        "from": "bounce@example-shop.com",
        "to": ["bob@example.com", "x@example.com"],
    }
    assert newest["from"] == "Shop <shopping@example-shop.com>"
    assert newest["to"] == ["Bob <bob@example.com>", "carol@example.com"]
    assert newest["subject"] == "Grüße: your order"
    assert newest["date"] == "Thu, 21 Nov 2024 12:00:00 +0000"
    assert newest["size"] == len(second.data)


async def test_limit_and_offset_page_through_the_list(app: Quart, store: MessageStore):
    ids = [store.add("a@example.com", ["b@example.com"], burger_receipt()).id for _ in range(5)]
    client = app.test_client()

    page = await (await client.get("/api/messages?limit=2&offset=1")).get_json()

    assert [message["id"] for message in page["messages"]] == [ids[3], ids[2]]
    assert page["total"] == 5


async def test_detail_has_headers_text_and_html(app: Quart, store: MessageStore):
    stored = store.add("a@example.com", ["bob@example.com"], multipart_receipt())

    body = await (await app.test_client().get(f"/api/messages/{stored.id}")).get_json()

    assert body["id"] == stored.id
    assert ["Subject", "Grüße: your order"] in body["headers"]
    assert body["text"] == "Cheeseburger\nFries\n"
    assert "<b>Fries</b>" in body["html"]
    assert body["envelope"] == {"from": "a@example.com", "to": ["bob@example.com"]}


async def test_raw_returns_the_exact_bytes_as_rfc822(app: Quart, store: MessageStore):
    data = burger_receipt() + b"\xff\xfe not utf-8\r\n"
    stored = store.add("a@example.com", ["b@example.com"], data)

    response = await app.test_client().get(f"/api/messages/{stored.id}/raw")

    assert response.status_code == 200
    assert response.content_type == "message/rfc822"
    assert await response.get_data() == data


async def test_delete_one_then_it_is_a_404_problem(app: Quart, store: MessageStore):
    gone = store.add("a@example.com", ["b@example.com"], burger_receipt())
    kept = store.add("a@example.com", ["b@example.com"], burger_receipt())
    client = app.test_client()

    assert (await client.delete(f"/api/messages/{gone.id}")).status_code == 204
    response = await client.get(f"/api/messages/{gone.id}")

    assert response.status_code == 404
    assert response.content_type == PROBLEM
    problem = await response.get_json()
    assert problem["status"] == 404
    assert gone.id in problem["detail"]
    assert [message.id for message in store.messages()] == [kept.id]


async def test_delete_all_empties_the_store(app: Quart, store: MessageStore):
    for _ in range(3):
        store.add("a@example.com", ["b@example.com"], burger_receipt())

    response = await app.test_client().delete("/api/messages")

    assert response.status_code == 204
    assert len(store) == 0
    assert list(store.directory.iterdir()) == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/messages/unknown-id", 404),
        ("GET", "/api/messages/unknown-id/raw", 404),
        ("DELETE", "/api/messages/unknown-id", 404),
        ("GET", "/no/such/route", 404),
        ("POST", "/api/messages", 405),
        ("GET", "/api/messages?limit=-1", 400),
        ("GET", "/api/messages?offset=abc", 400),
        ("GET", "/api/wait?count=1&timeout=9999", 400),
        ("DELETE", "/api/faults/99", 404),
    ],
)
async def test_errors_are_problem_json(app: Quart, method: str, path: str, status: int):
    response = await app.test_client().open(path, method=method)

    assert response.status_code == status
    assert response.content_type == PROBLEM
    problem = await response.get_json()
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= problem.keys()


async def test_method_not_allowed_names_the_allowed_methods(app: Quart):
    response = await app.test_client().put("/api/messages")

    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}


async def test_unexpected_errors_are_a_500_problem_without_traceback(app: Quart):
    @app.get("/explode")
    async def explode() -> str:
        raise RuntimeError("secret internal detail")

    response = await app.test_client().get("/explode")

    assert response.status_code == 500
    assert response.content_type == PROBLEM
    body = await response.get_data(as_text=True)
    assert "secret internal detail" not in body
    assert "Traceback" not in body


async def test_wait_answers_408_problem_when_too_few_messages_arrive(app: Quart):
    response = await app.test_client().get("/api/wait?count=1&timeout=0.2")

    assert response.status_code == 408
    assert response.content_type == PROBLEM
    assert (await response.get_json())["arrived"] == 0


async def test_wait_answers_at_once_when_enough_messages_are_there(app: Quart, store: MessageStore):
    store.add("a@example.com", ["b@example.com"], burger_receipt())

    response = await app.test_client().get("/api/wait?count=1&timeout=5")

    assert response.status_code == 200
    assert len((await response.get_json())["messages"]) == 1


async def test_fault_rules_can_be_added_listed_and_removed(app: Quart, faults: FaultRules):
    client = app.test_client()

    created = await client.post(
        "/api/faults", json={"pattern": "*@flaky.test", "action": "fail-451", "times": 2}
    )
    assert created.status_code == 201
    rule = await created.get_json()
    assert rule == {"id": rule["id"], "pattern": "*@flaky.test", "action": "fail-451", "times": 2}
    listed = await (await client.get("/api/faults")).get_json()
    assert listed == {"faults": [rule]}

    assert (await client.delete(f"/api/faults/{rule['id']}")).status_code == 204
    assert len(faults) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"pattern": "*", "action": "explode"},
        {"pattern": "*", "action": "fail-451", "times": 0},
        {"pattern": "", "action": "fail-451"},
        {"action": "fail-451"},
        ["not", "an", "object"],
    ],
)
async def test_bad_fault_rules_are_400_problems(app: Quart, body: object):
    response = await app.test_client().post("/api/faults", json=body)

    assert response.status_code == 400
    assert response.content_type == PROBLEM


def test_http_long_poll_returns_when_mail_arrives_over_smtp(tmp_path: Path):
    with BackgroundCaptureServer(tmp_path, http_port=0) as server:
        assert server.http_url is not None

        def send() -> None:
            with smtplib.SMTP(server.host, server.port, timeout=10) as client:
                client.sendmail("shopping@example-shop.com", ["bob@example.com"], burger_receipt())

        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            sender = threading.Thread(target=send)
            sender.start()
            try:
                waited = http.get("/api/wait", params={"count": 1, "timeout": 20})
            finally:
                sender.join()
            assert waited.status_code == 200
            (summary,) = waited.json()["messages"]
            assert summary["subject"] == "Your Burger order"
            assert summary["envelope"] == {
                "from": "shopping@example-shop.com",
                "to": ["bob@example.com"],
            }
            raw = http.get(f"/api/messages/{summary['id']}/raw")
            assert raw.content == burger_receipt()
            assert raw.headers["content-type"] == "message/rfc822"


@pytest.fixture
def capture_http(tmp_path: Path) -> Iterator[httpx.Client]:
    """A client of a real capture server's HTTP API on a free loopback port."""
    with BackgroundCaptureServer(tmp_path / "served", http_port=0) as server:
        assert server.http_url is not None
        with httpx.Client(base_url=server.http_url, timeout=10) as client:
            yield client


FAULT_AS_TEXT = b'{"pattern": "*", "action": "fail-550"}'


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        # What an HTML form on any site can send without asking this server first.
        pytest.param("text/plain", FAULT_AS_TEXT, id="text"),
        pytest.param("text/plain;charset=UTF-8", FAULT_AS_TEXT, id="text-charset"),
        pytest.param("application/x-www-form-urlencoded", b"pattern=*&action=fail-550", id="form"),
        pytest.param(
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="pattern"\r\n\r\n*\r\n--b--\r\n',
            id="multipart",
        ),
        pytest.param(None, FAULT_AS_TEXT, id="none"),
    ],
)
def test_fault_rules_other_than_json_are_refused_415(
    capture_http: httpx.Client, content_type: str | None, body: bytes
):
    headers = {"Origin": "https://elsewhere.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = capture_http.post("/api/faults", content=body, headers=headers)

    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 415
    assert problem["type"] == "urn:notifier:problem:unsupported-media-type"
    assert {"type", "title", "status", "detail"} <= problem.keys()
    assert capture_http.get("/api/faults").json() == {"faults": []}


def test_fault_rules_in_json_with_a_charset_are_added(capture_http: httpx.Client):
    response = capture_http.post(
        "/api/faults",
        content=FAULT_AS_TEXT,
        headers={"Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 201
    assert [rule["action"] for rule in capture_http.get("/api/faults").json()["faults"]] == [
        "fail-550"
    ]


@pytest.mark.parametrize("path", ["/api/messages", "/api/faults", "/api/faults/1"])
@pytest.mark.parametrize("method", ["DELETE", "POST"])
def test_other_origins_are_not_allowed_to_change_state(
    capture_http: httpx.Client, path: str, method: str
):
    # A browser sends a cross-site DELETE, or a POST with a JSON body, only after this
    # preflight approves it; no Access-Control-Allow-Origin means it never does.
    preflight = capture_http.options(
        path,
        headers={
            "Origin": "https://elsewhere.example",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )

    assert not any(name.lower().startswith("access-control-") for name in preflight.headers)


def test_doubled_slashes_are_a_404_problem_not_a_redirect_to_the_host_header(
    capture_http: httpx.Client,
):
    response = capture_http.get("/api//messages", headers={"Host": "evil.example"})

    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 404
