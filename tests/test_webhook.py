"""The webhook subscriber against a real HTTP receiver on a loopback port: signatures
checked with the ``standardwebhooks`` package's verifier, retries, final failures, and
subscriber entries in settings."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from notifier.errors import SettingsError
from notifier.outbox import iso_time
from notifier.settings import Settings, load_settings
from notifier.subscribers.webhook import secret_key, signature, webhook_id
from tests.conftest import Clock, MakeClient, finished, wait_for_status

SECRET = "whsec_" + base64.b64encode(b"a shared secret of 32 bytes!!!!!").decode()
RESPONSE_BODY = "RECEIVER-PRIVATE-RESPONSE-TEXT"


class Receiver:
    """An HTTP server that answers POSTs as scripted (status, headers, delay) and keeps
    every request it got; once the script is used up it answers 204."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.script: list[tuple[int, dict[str, str], float]] = []
        self.changed = threading.Condition()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.changed:
                    receiver.requests.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    receiver.changed.notify_all()
                    status, headers, delay = (
                        receiver.script.pop(0) if receiver.script else (204, {}, 0.0)
                    )
                if delay:
                    receiver.release.wait(delay)  # a slow receiver, released at teardown
                payload = RESPONSE_BODY.encode() if status != 204 else b""
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/notifier"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 10) -> list[tuple[dict[str, str], bytes]]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} request(s), expected {count}")
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


def hook(url: str, name: str = "crm", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": url, "secret": SECRET, **extra}


@pytest.fixture
def webhook_settings(delivery_settings: dict[str, Any], receiver: Receiver) -> dict[str, Any]:
    delivery_settings["subscribers"] = [hook(receiver.url)]
    return delivery_settings


def verified(request: tuple[dict[str, str], bytes]) -> dict[str, Any]:
    headers, body = request
    payload: dict[str, Any] = Webhook(SECRET).verify(body, headers)
    return payload


async def test_each_message_is_posted_signed_per_standard_webhooks(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    burger_order: dict[str, Any],
) -> None:
    client = await serving(webhook_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    sent = await response.get_json()
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["subscribers"]["crm"]["status"] == "delivered"
    assert status["subscribers"]["crm"]["attempts"] == 1
    ((headers, body),) = receiver.wait_for(1)
    payload = verified((headers, body))
    assert payload == {
        "id": sent["id"],
        "template": "burger_receipt",
        "message_id": sent["message_id"],
        "sender": "shopping@example-shop.com",
        "recipients": ["bob@example.com"],
        "created_at": status["created_at"],
        "template_version": status["template_version"],
    }
    assert re.fullmatch("[0-9a-f]{12}", payload["template_version"])
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == webhook_id("crm", sent["id"])
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    # A changed body or another secret fails the receiver's check.
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(body.replace(b"bob@", b"eve@"), headers)
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(body, headers)


def test_the_signature_is_the_one_the_standardwebhooks_package_makes() -> None:
    body = b'{"id":"m1"}'
    ours = signature(secret_key(SECRET), msg_id="msg_1", timestamp=1_800_000_000, body=body)
    theirs = Webhook(SECRET).sign(
        "msg_1", datetime.fromtimestamp(1_800_000_000, UTC), body.decode()
    )
    assert ours == theirs
    # Unpadded secrets are read as the package reads them.
    unpadded = "whsec_" + base64.b64encode(b"k" * 31).decode().rstrip("=")
    ours = signature(secret_key(unpadded), msg_id="msg_1", timestamp=1, body=body)
    assert ours == Webhook(unpadded).sign("msg_1", datetime.fromtimestamp(1, UTC), body.decode())


async def test_a_500_is_retried_with_the_same_webhook_id_then_delivered(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    burger_order: dict[str, Any],
) -> None:
    receiver.script = [(500, {}, 0.0), (503, {}, 0.0)]
    client = await serving(webhook_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    crm = status["subscribers"]["crm"]
    assert crm["status"] == "delivered"
    assert crm["attempts"] == 3
    requests = receiver.wait_for(3)
    assert len({headers["webhook-id"] for headers, _ in requests}) == 1
    # Attempts after the first load the message from the outbox: the payload is the same.
    payloads = [verified(request) for request in requests]
    assert all(payload == payloads[0] for payload in payloads)
    assert payloads[0]["id"] == status["id"]
    assert payloads[0]["template_version"] == status["template_version"]


async def test_a_400_fails_for_good_and_the_response_body_is_kept_nowhere(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    burger_order: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver.script = [(400, {"content-type": "text/plain"}, 0.0)]
    caplog.set_level(logging.DEBUG)
    client = await serving(webhook_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    crm = status["subscribers"]["crm"]
    assert crm["status"] == "failed"
    assert crm["attempts"] == 1
    assert "answered 400" in crm["last_error"]
    assert len(receiver.requests) == 1
    logged = json.dumps([[r.getMessage(), getattr(r, "fields", {})] for r in caplog.records])
    assert "answered 400" in logged  # the attempt was logged, without the body
    assert RESPONSE_BODY not in logged + json.dumps(status)


def test_serve_logs_neither_the_webhook_url_nor_the_response(
    settings_data: dict[str, Any], receiver: Receiver, tmp_path: Path, burger_order: dict[str, Any]
) -> None:
    from tests.servers import ServeProcess

    receiver.script = [(500, {}, 0.0)]
    settings_data["log"] = {"level": "DEBUG"}
    settings_data["delivery"] = {"backoff_initial": 0.05, "backoff_max": 0.1}
    settings_data["subscribers"] = [hook(receiver.url + "?token=URLTOKEN123")]
    path = tmp_path / "settings.yml"
    path.write_text(json.dumps(settings_data))
    with ServeProcess.start(path) as served, served.client() as http:
        assert http.post("/v1/send/burger_receipt", json=burger_order).status_code == 202
        receiver.wait_for(2)
    log = served.log_text()
    assert "answered 500" in log
    assert "URLTOKEN123" not in log
    assert RESPONSE_BODY not in log
    assert SECRET.removeprefix("whsec_") not in log


async def test_a_redirect_is_not_followed_and_fails_for_good(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    burger_order: dict[str, Any],
) -> None:
    receiver.script = [(308, {"location": receiver.url + "/moved"}, 0.0)]
    client = await serving(webhook_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    crm = status["subscribers"]["crm"]
    assert crm["status"] == "failed"
    assert "308" in crm["last_error"]
    assert "redirect" in crm["last_error"]
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(429, lambda start: "120"), (503, lambda start: formatdate(start + 120, usegmt=True))],
    ids=["429-seconds", "503-http-date"],
)
async def test_a_retry_after_is_honoured(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    burger_order: dict[str, Any],
    status: int,
    retry_after: Callable[[float], str],
) -> None:
    clock = Clock(float(int(time.time())))  # near now: the verifier checks the timestamp
    start = clock.now
    webhook_settings["delivery"]["backoff_max"] = 3600
    receiver.script = [(status, {"retry-after": retry_after(start)}, 0.0)]
    client = await serving(webhook_settings, clock=clock, rng=lambda: 0.5)
    dispatcher = client.app.extensions["notifier.dispatcher"]  # type: ignore[attr-defined]
    location = (await client.post("/v1/send/burger_receipt", json=burger_order)).headers["Location"]
    body = await wait_for_status(client, location, lambda b: b["subscribers"]["crm"]["attempts"])
    crm = body["subscribers"]["crm"]
    assert crm["status"] == "queued"
    assert f"answered {status}" in crm["last_error"]
    # The backoff alone (delivery.backoff_initial 0.05 s) would retry at once.
    assert crm["next_attempt_at"] == iso_time(start + 120)
    clock.now = start + 120
    dispatcher.wake()
    body = await wait_for_status(client, location, finished)
    assert body["subscribers"]["crm"]["status"] == "delivered"
    assert body["subscribers"]["crm"]["attempts"] == 2
    assert [verified(request)["id"] for request in receiver.wait_for(2)] == [body["id"]] * 2


async def test_a_receiver_that_does_not_answer_in_time_is_retried(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    burger_order: dict[str, Any],
) -> None:
    webhook_settings["delivery"]["subscriber_timeout"] = 0.5
    receiver.script = [(200, {}, 30.0)]
    client = await serving(webhook_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    crm = status["subscribers"]["crm"]
    assert crm["status"] == "delivered"
    assert crm["attempts"] == 2
    assert len(receiver.wait_for(2)) == 2


async def test_connection_errors_are_retried_until_the_attempts_run_out(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    delivery_settings["subscribers"] = [hook(f"http://127.0.0.1:{closed_port}/hook")]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    crm = status["subscribers"]["crm"]
    assert crm["status"] == "failed"
    assert crm["attempts"] == delivery_settings["delivery"]["max_attempts"]
    assert "connection failed" in crm["last_error"]


async def test_the_email_is_not_sent_again_when_only_the_webhook_is_retried(
    serving: MakeClient,
    webhook_settings: dict[str, Any],
    receiver: Receiver,
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    webhook_settings["subscribers"] = ["smtp", hook(receiver.url)]
    receiver.script = [(502, {}, 0.0), (500, {}, 0.0)]
    client = await serving(webhook_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"
    assert status["subscribers"]["smtp"]["attempts"] == 1
    assert status["subscribers"]["crm"]["attempts"] == 3
    assert len(receiver.wait_for(3)) == 3
    assert len(smtp_capture.messages) == 1


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "crm", "type": "pager"}, "'crm': type must be one of: webhook"),
        ({"name": "crm", "type": "webhook", "secret": SECRET}, "'crm': url: Field required"),
        ({"name": "crm", "type": "webhook", "url": "https://x.test/"}, "'crm': secret: Field"),
        (hook("ftp://x.test/h"), "'crm': url: must be an http:// or https:// URL"),
        (hook("https://x.test/h", secret="whsec_!!"), "'crm': secret: must be whsec_"),
        (hook("https://x.test/h", secret="c2hvcnQ="), "'crm': secret: must be whsec_"),
        (hook("https://x.test/h", retries=3), "'crm': retries: unknown key"),
        ({"type": "webhook", "url": "https://x.test/"}, "entry 2: name: Field required"),
        (hook("https://x.test/h", name="smtp"), "'smtp' is listed twice"),
        (7, "entry 2: must be a name or a mapping"),
    ],
)
def test_bad_subscriber_entries_stop_start_up_naming_the_entry(entry: Any, expected: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_mapping({"subscribers": ["smtp", entry]})
    detail = raised.value.detail
    assert detail.startswith("settings: subscribers: ")
    assert expected in detail
    assert SECRET.removeprefix("whsec_") not in detail


def test_a_duplicate_webhook_name_is_refused() -> None:
    with pytest.raises(SettingsError, match="'crm' is listed twice"):
        Settings.from_mapping({"subscribers": [hook("https://a.test/"), hook("https://b.test/")]})


def test_subscribers_as_json_in_the_environment() -> None:
    entries = ["smtp", hook("https://crm.test/hooks?token=abc")]
    settings = load_settings(environ={"NOTIFIER_SUBSCRIBERS": json.dumps(entries)})
    assert settings.subscriber_names == ["smtp", "crm"]
    (_, webhook) = settings.subscribers
    assert not isinstance(webhook, str)
    assert webhook.url.get_secret_value() == "https://crm.test/hooks?token=abc"
    assert "token=abc" not in repr(settings)
    assert SECRET not in repr(settings)


def test_a_bad_webhook_entry_stops_serve_with_one_line(tmp_path: Path) -> None:
    from tests.test_dkim import serve_error

    error = serve_error(tmp_path, {"subscribers": ["log", hook("file:///etc/passwd")]})
    assert "'crm': url" in error
    assert "/etc/passwd" not in error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("9" * 5000, 1e9),  # longer than int() takes: capped, not an error
        ("\u00b2", None),  # a digit to str.isdigit(), not to RFC 9110
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after_values_from_receivers(value: str, expected: float | None) -> None:
    from notifier.subscribers.webhook import _retry_after

    response = httpx.Response(429, headers=[(b"retry-after", value.encode())])
    assert _retry_after(response, now=0.0) == expected
