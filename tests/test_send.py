"""POST /v1/send and GET /v1/messages: stored, dispatched through message_ready, delivered
to a real capture server (aiosmtpd) and recorded per subscriber."""

from __future__ import annotations

import logging
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from quart import Quart

from notifier.app import create_app
from notifier.errors import SettingsError
from notifier.settings import Settings
from notifier.subscribers import Subscriber, load_subscribers
from tests.conftest import MakeClient, finished, wait_for_status
from tests.fake_subscribers import AsyncRecording, Exploding, Holding, Recording, Refusing

ROOT = Path(__file__).resolve().parent.parent
ORDER_WITH_COPIES = (
    "Date: {{ date }}\nFrom: {{ from }}\nTo: {{ to }}\nCc: {{ cc }}\nBcc: {{ bcc }}\n"
    "Subject: {{ subject }}\n\nHello {{ name }}\n"
)


async def stored_messages(client: Any) -> list[dict[str, Any]]:
    """Every message in the outbox, whatever its status."""
    found: list[dict[str, Any]] = []
    for status in ("queued", "sending", "delivered", "failed"):
        response = await client.get(f"/v1/messages?status={status}&limit=500")
        assert response.status_code == 200, await response.get_data(as_text=True)
        found += (await response.get_json())["messages"]
    return found


def with_smtp(settings: dict[str, Any], *extra: Subscriber) -> list[Subscriber]:
    """The smtp subscriber the settings describe, then a test's own."""
    smtp = load_subscribers(Settings.from_mapping({**settings, "subscribers": ["smtp"]}))
    return [*smtp, *extra]


async def test_send_arrives_byte_for_byte_as_rendered_with_the_envelope(
    serving: MakeClient, delivery_settings: dict[str, Any], smtp_capture: Any, templates_dir: Path
) -> None:
    (templates_dir / "copies.j2").write_text(ORDER_WITH_COPIES)
    context = {
        "date": "Sat, 21 Nov 2026 12:00:00 +0000",
        "from": "shop@example.com",
        "to": "Bob <bob@example.com>",
        "cc": "carol@example.com",
        "bcc": "audit@example.com",
        "subject": "Your order",
        "name": "Bob",
    }
    client = await serving(delivery_settings)
    rendered = await (await client.post("/v1/render/copies", json=context)).get_data()
    response = await client.post("/v1/send/copies", json=context)
    assert response.status_code == 202
    body = await response.get_json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == f"/v1/messages/{body['id']}"
    assert re.fullmatch(r"<[0-9a-f]{32}@notifier\.test>", body["message_id"])

    (captured,) = await smtp_capture.wait_for_async(1, timeout=10)
    assert captured.envelope_from == "shop@example.com"
    assert captured.envelope_to == ("bob@example.com", "carol@example.com", "audit@example.com")
    without_id = re.compile(rb"^Message-ID: .*\r\n", re.MULTILINE)
    assert without_id.sub(b"", captured.data) == without_id.sub(b"", rendered)
    assert f"Message-ID: {body['message_id']}\r\n".encode() in captured.data
    assert b"audit@example.com" not in captured.data
    assert b"Bcc" not in captured.data

    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"
    assert status["template"] == "copies"
    assert status["message_id"] == body["message_id"]
    assert status["subscribers"]["smtp"]["status"] == "delivered"
    assert status["subscribers"]["smtp"]["attempts"] == 1
    assert status["subscribers"]["log"]["status"] == "delivered"


async def test_status_moves_from_queued_to_delivered(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    # Hold delivery back with a subscriber that waits, to see the intermediate state.
    holding = Holding()
    client = await serving(
        delivery_settings, subscribers=with_smtp(delivery_settings, Subscriber("hold", holding))
    )
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    location = response.headers["Location"]
    first = await (await client.get(location)).get_json()
    assert first["status"] in ("queued", "sending")
    assert set(first["subscribers"]) == {"smtp", "hold"}
    midway = await wait_for_status(
        client, location, lambda b: b["subscribers"]["smtp"]["status"] == "delivered"
    )
    assert midway["status"] == "sending"
    assert midway["subscribers"]["hold"]["status"] == "sending"
    holding.release()
    done = await wait_for_status(client, location, finished)
    assert done["status"] == "delivered"
    assert done["created_at"].endswith("+00:00")


async def test_subscribers_receive_the_documented_arguments(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    recording, recording_async = Recording(), AsyncRecording()
    client = await serving(
        delivery_settings,
        subscribers=[Subscriber("record", recording), Subscriber("async", recording_async)],
    )
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    body = await response.get_json()
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"
    assert set(status["subscribers"]) == {"record", "async"}
    [call] = recording.calls
    assert len(recording_async.calls) == 1
    assert isinstance(call.sender, Quart)
    message = call.message
    assert message.id == body["id"]
    assert message.template == "burger_receipt"
    assert message.message_id == body["message_id"]
    assert message.sender == "shopping@example-shop.com"
    assert message.recipients == ["bob@example.com"]
    assert message.data.startswith(b"Date: ")
    assert b"Subject: Your Burger order\r\n" in message.data
    assert message.attempt == 1


async def test_a_subscriber_named_by_dotted_path_is_loaded_and_called(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    delivery_settings["subscribers"] = ["tests.fake_subscribers:accept"]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["subscribers"] == {
        "tests.fake_subscribers:accept": status["subscribers"]["tests.fake_subscribers:accept"]
    }
    assert status["subscribers"]["tests.fake_subscribers:accept"]["status"] == "delivered"


async def test_permanent_failure_is_failed_while_smtp_delivers(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    refusing = Refusing()
    client = await serving(
        delivery_settings, subscribers=with_smtp(delivery_settings, Subscriber("sign", refusing))
    )
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "failed"
    refused = status["subscribers"]["sign"]
    assert refused["status"] == "failed"
    assert refused["attempts"] == 1
    assert refusing.calls == 1
    assert "signing service rejected" in refused["last_error"]
    assert status["subscribers"]["smtp"]["status"] == "delivered"
    assert len(smtp_capture.messages) == 1


async def test_other_exception_is_recorded_retried_and_never_holds_smtp_back(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    exploding = Exploding()
    client = await serving(
        delivery_settings, subscribers=with_smtp(delivery_settings, Subscriber("hook", exploding))
    )
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    exploded = status["subscribers"]["hook"]
    assert exploded["status"] == "failed"
    assert exploded["attempts"] == 3  # delivery.max_attempts in these settings
    assert exploded["last_error"] == "ConnectionError: webhook endpoint unreachable"
    smtp = status["subscribers"]["smtp"]
    assert smtp["status"] == "delivered"
    assert smtp["attempts"] == 1, "a retry for another subscriber must not re-send the mail"
    assert len(smtp_capture.messages) == 1
    assert exploding.calls == 3


async def test_slow_subscriber_does_not_block_smtp_or_the_api(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    holding = Holding()
    client = await serving(
        delivery_settings, subscribers=[Subscriber("hold", holding), *with_smtp(delivery_settings)]
    )
    first = await client.post("/v1/send/burger_receipt", json=burger_order)
    second = await client.post("/v1/send/burger_receipt", json=burger_order)
    assert first.status_code == second.status_code == 202
    await smtp_capture.wait_for_async(2, timeout=10)
    assert (await client.get("/healthz")).status_code == 200
    holding.release()
    for response in (first, second):
        status = await wait_for_status(client, response.headers["Location"], finished)
        assert status["status"] == "delivered"


async def test_partial_refusal_is_recorded_not_delivered(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    templates_dir: Path,
) -> None:
    (templates_dir / "copies.j2").write_text(ORDER_WITH_COPIES)
    context = {
        "from": "shop@example.com",
        "to": "bob@example.com",
        "cc": "fail-550@example.com",
        "bcc": "carol@example.com",
        "subject": "s",
        "name": "Bob",
    }
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/copies", json=context)
    status = await wait_for_status(client, response.headers["Location"], finished)
    smtp = status["subscribers"]["smtp"]
    assert status["status"] == "failed"
    assert smtp["status"] == "failed"
    assert smtp["smtp_code"] == 550
    assert list(smtp["detail"]["refused"]) == ["fail-550@example.com"]
    (captured,) = smtp_capture.messages
    assert captured.envelope_to == ("bob@example.com", "carol@example.com")


async def test_transiently_refused_recipient_is_retried_alone(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    templates_dir: Path,
) -> None:
    (templates_dir / "copies.j2").write_text(ORDER_WITH_COPIES)
    smtp_capture.faults.add("carol@example.com", "fail-451", times=1)
    context = {
        "from": "shop@example.com",
        "to": "bob@example.com",
        "cc": "carol@example.com",
        "bcc": "dave@example.com",
        "subject": "s",
        "name": "Bob",
    }
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/copies", json=context)
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered"
    assert status["subscribers"]["smtp"]["attempts"] == 2
    first, second = smtp_capture.messages
    assert first.envelope_to == ("bob@example.com", "dave@example.com")
    assert second.envelope_to == ("carol@example.com",)
    assert first.data == second.data


async def test_log_subscriber_writes_one_line_without_body_or_addresses(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    burger_order: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery_settings["subscribers"] = ["log"]
    client = await serving(delivery_settings)
    caplog.set_level(logging.INFO, logger="notifier.delivery")
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    body = await response.get_json()
    await wait_for_status(client, response.headers["Location"], finished)
    records = [r for r in caplog.records if r.name == "notifier.delivery"]
    assert len(records) == 1
    entry = records[0].fields  # type: ignore[attr-defined]
    assert entry == {
        "id": body["id"],
        "template": "burger_receipt",
        "message_id": body["message_id"],
        "recipients": 1,
        "attempt": 1,
        "request_id": response.headers["X-Request-ID"],
    }
    assert "bob@example.com" not in str(entry)
    assert "Cheeseburger" not in str(entry)


async def test_unknown_message_is_404_problem(
    serving: MakeClient, delivery_settings: dict[str, Any]
) -> None:
    client = await serving(delivery_settings)
    response = await client.get("/v1/messages/does-not-exist")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert (await response.get_json())["type"].endswith("unknown-message")


async def test_send_render_errors_are_422_and_nothing_is_stored(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    client = await serving(delivery_settings)
    del burger_order["name"]
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    assert response.status_code == 422
    assert (await response.get_json())["variable"] == "name"
    assert await stored_messages(client) == []
    assert smtp_capture.messages == []


async def test_outbox_that_cannot_store_is_503_and_nothing_is_sent(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the outbox folder should be")
    delivery_settings["outbox"] = {"path": str(blocker / "outbox.sqlite3")}
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json"
    assert (await response.get_json())["type"].endswith("outbox-unavailable")
    # The dispatcher polls on its own; give it a few rounds and check nothing went out.
    with pytest.raises(TimeoutError):
        await smtp_capture.wait_for_async(1, timeout=1.5)
    # Once the outbox can be opened, it holds nothing: the refused message was not stored.
    blocker.unlink()
    assert await stored_messages(client) == []


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("smtpp", "neither a built-in"),
        ("no_such_module_here:send", "cannot import"),
        ("tests.fake_subscribers:missing", "has no 'missing'"),
        ("tests.fake_subscribers:not_callable", "not callable"),
    ],
)
def test_unknown_subscriber_stops_start_up(
    settings_data: dict[str, Any], name: str, fragment: str
) -> None:
    settings_data["subscribers"] = ["smtp", name]
    with pytest.raises(SettingsError, match=fragment):
        create_app(Settings.from_mapping(settings_data))


async def test_starttls_with_a_verified_certificate(
    serving: MakeClient,
    settings_data: dict[str, Any],
    smtp_capture_factory: Any,
    burger_order: dict[str, Any],
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    server = smtp_capture_factory(starttls_context=server_context, require_starttls=True)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings_data["smtp"] = {
        "host": server.host,
        "port": server.port,
        "tls": "starttls",
        "ca_file": str(ca_file),
    }
    settings_data["subscribers"] = ["smtp"]
    client = await serving(settings_data)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["status"] == "delivered", status
    (captured,) = server.messages
    assert b"Subject: Your Burger order" in captured.data


async def test_starttls_required_but_not_offered_sends_nothing(
    serving: MakeClient,
    settings_data: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    settings_data["smtp"] = {
        "host": smtp_capture.host,
        "port": smtp_capture.port,
        "tls": "starttls",
    }
    settings_data["subscribers"] = ["smtp"]
    settings_data["delivery"] = {"max_attempts": 2, "backoff_initial": 0.05}
    client = await serving(settings_data)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    smtp = status["subscribers"]["smtp"]
    assert smtp["status"] == "failed"
    assert "STARTTLS" in smtp["last_error"]
    assert smtp_capture.messages == []


async def test_untrusted_certificate_is_refused(
    serving: MakeClient,
    settings_data: dict[str, Any],
    smtp_capture_factory: Any,
    burger_order: dict[str, Any],
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = smtp_capture_factory(starttls_context=server_context, require_starttls=True)
    settings_data["smtp"] = {"host": server.host, "port": server.port, "tls": "starttls"}
    settings_data["subscribers"] = ["smtp"]
    settings_data["delivery"] = {"max_attempts": 1}
    client = await serving(settings_data)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    status = await wait_for_status(client, response.headers["Location"], finished)
    assert status["subscribers"]["smtp"]["status"] == "failed"
    assert "CERTIFICATE_VERIFY_FAILED" in status["subscribers"]["smtp"]["last_error"]
    assert server.messages == []
