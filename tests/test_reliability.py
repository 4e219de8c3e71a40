"""Retries with backoff, permanent failures, a relay outage, operator retry, and
idempotency-key rules: against a real capture server with fault injection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from notifier.capture.server import BackgroundCaptureServer
from notifier.outbox.sqlite import SqliteOutbox
from tests.conftest import Clock, MakeClient, finished, wait_for_status
from tests.fake_subscribers import Exploding, Holding


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_451_then_accept_is_delivered_once_after_backoff(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    smtp_capture.faults.add("bob@example.com", "fail-451", times=2)
    delivery_settings["subscribers"] = ["smtp"]
    delivery_settings["delivery"] = {"backoff_initial": 0.3, "backoff_max": 1, "max_attempts": 5}
    client = await serving(delivery_settings)
    started = time.monotonic()
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    location = response.headers["Location"]

    first = await wait_for_status(
        client, location, lambda b: b["subscribers"]["smtp"]["attempts"] >= 1
    )
    smtp = first["subscribers"]["smtp"]
    assert smtp["status"] == "queued"
    assert smtp["smtp_code"] == 451
    assert "451" in smtp["last_error"]
    delay = _epoch(smtp["next_attempt_at"]) - _epoch(smtp["updated_at"])
    assert 0.15 - 0.01 <= delay <= 0.3 + 0.01  # backoff_initial with equal jitter

    done = await wait_for_status(client, location, finished)
    elapsed = time.monotonic() - started
    assert done["status"] == "delivered"
    assert done["subscribers"]["smtp"]["attempts"] == 3
    assert done["subscribers"]["smtp"]["last_error"] is None
    # Two waits: at least 0.15 s (first) and 0.3 s (second, doubled, half of it fixed).
    assert elapsed >= 0.45
    assert len(smtp_capture.messages) == 1


async def test_550_fails_at_once_without_retry(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    smtp_capture.faults.add("bob@example.com", "fail-550")
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    done = await wait_for_status(client, response.headers["Location"], finished)
    smtp = done["subscribers"]["smtp"]
    assert done["status"] == "failed"
    assert smtp["attempts"] == 1
    assert smtp["smtp_code"] == 550
    assert smtp_capture.messages == []


async def test_messages_accepted_during_a_relay_outage_arrive_after_it(
    serving: MakeClient,
    settings_data: dict[str, Any],
    burger_order: dict[str, Any],
    tmp_path: Path,
) -> None:
    relay = BackgroundCaptureServer(tmp_path / "relay")
    relay.start()
    port = relay.port  # picked at run time; the relay comes back on the same one
    relay.stop()
    settings_data["smtp"] = {"host": "127.0.0.1", "port": port, "timeout": 2}
    settings_data["subscribers"] = ["smtp"]
    settings_data["delivery"] = {"backoff_initial": 0.05, "backoff_max": 0.3, "max_attempts": 100}
    client = await serving(settings_data)
    locations = []
    for n in range(5):
        response = await client.post(
            "/v1/send/burger_receipt", json={**burger_order, "name": f"Customer {n}"}
        )
        assert response.status_code == 202
        locations.append(response.headers["Location"])
    failing = await wait_for_status(
        client, locations[-1], lambda b: b["subscribers"]["smtp"]["attempts"] >= 2
    )
    assert failing["status"] == "queued"
    assert "connection" in failing["subscribers"]["smtp"]["last_error"].lower()

    revived = BackgroundCaptureServer(tmp_path / "relay", port=port)
    revived.start()
    try:
        for location in locations:
            done = await wait_for_status(client, location, finished, timeout=20)
            assert done["status"] == "delivered"
        names = sorted(m.text.splitlines()[0] for m in revived.messages)
        assert names == [f"Hello Customer {n}," for n in range(5)]
    finally:
        revived.stop()


async def test_failed_messages_are_listed_in_pages_and_can_be_retried(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    smtp_capture.faults.add("bob@example.com", "fail-550", times=3)
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    ids = []
    for _ in range(3):
        response = await client.post("/v1/send/burger_receipt", json=burger_order)
        ids.append((await response.get_json())["id"])
        await wait_for_status(client, response.headers["Location"], finished)

    page = await (await client.get("/v1/messages?status=failed&limit=2")).get_json()
    assert [m["id"] for m in page["messages"]] == [ids[2], ids[1]]
    assert page["next"] is not None
    rest = await (await client.get(page["next"])).get_json()
    assert [m["id"] for m in rest["messages"]] == [ids[0]]
    assert rest["next"] is None
    assert (await (await client.get("/v1/messages?status=delivered")).get_json())["messages"] == []

    retried = await client.post(f"/v1/messages/{ids[0]}/retry")
    assert retried.status_code == 202
    body = await retried.get_json()
    assert body["subscribers"]["smtp"]["status"] == "queued"
    assert body["subscribers"]["smtp"]["attempts"] == 0
    done = await wait_for_status(client, f"/v1/messages/{ids[0]}", finished)
    assert done["status"] == "delivered"
    assert len(smtp_capture.messages) == 1

    again = await client.post(f"/v1/messages/{ids[0]}/retry")
    assert again.status_code == 409
    assert again.mimetype == "application/problem+json"
    assert (await client.post("/v1/messages/nope/retry")).status_code == 404
    bad = await client.get("/v1/messages?status=lost")
    assert bad.status_code == 400
    assert bad.mimetype == "application/problem+json"


async def test_idempotency_key_rules(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    client = await serving(delivery_settings)
    headers = {"Idempotency-Key": "order-1001-receipt"}
    first = await client.post("/v1/send/burger_receipt", json=burger_order, headers=headers)
    assert first.status_code == 202
    again = await client.post("/v1/send/burger_receipt", json=burger_order, headers=headers)
    assert again.status_code == 202
    assert await again.get_json() == await first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"

    other = await client.post(
        "/v1/send/burger_receipt", json={**burger_order, "name": "Eve"}, headers=headers
    )
    assert other.status_code == 422
    assert (await other.get_json())["type"].endswith("idempotency-key-reused")

    for bad_key in ["", " leading", "x" * 256, "caf\u00e9"]:
        response = await client.post(
            "/v1/send/burger_receipt", json=burger_order, headers={"Idempotency-Key": bad_key}
        )
        assert response.status_code == 400, bad_key

    # A request that fails to render frees its key for a corrected one.
    broken = {k: v for k, v in burger_order.items() if k != "name"}
    fresh = {"Idempotency-Key": "order-1002-receipt"}
    assert (
        await client.post("/v1/send/burger_receipt", json=broken, headers=fresh)
    ).status_code == 422
    assert (
        await client.post("/v1/send/burger_receipt", json=burger_order, headers=fresh)
    ).status_code == 202

    await smtp_capture.wait_for_async(2, timeout=10)
    assert len(smtp_capture.messages) == 2


async def test_retry_after_a_partial_refusal_sends_only_to_the_refused(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    templates_dir: Path,
) -> None:
    (templates_dir / "pair.j2").write_text("From: shop@example.com\nTo: {{ a }}, {{ b }}\n\nhi\n")
    smtp_capture.faults.add("b@example.com", "fail-550", times=1)
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/pair", json={"a": "a@example.com", "b": "b@example.com"})
    location = response.headers["Location"]
    assert (await wait_for_status(client, location, finished))["status"] == "failed"
    retried = await client.post(f"{location}/retry")
    assert retried.status_code == 202
    done = await wait_for_status(client, location, finished)
    assert done["status"] == "delivered"
    first, second = smtp_capture.messages
    assert first.envelope_to == ("a@example.com",)
    assert second.envelope_to == ("b@example.com",)


async def test_a_failing_direct_receiver_does_not_stop_configured_subscribers(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
) -> None:
    from notifier.signals import message_ready

    def broken(sender: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("a receiver connected in code")

    message_ready.connect(broken)
    try:
        delivery_settings["subscribers"] = ["smtp", "log"]
        client = await serving(delivery_settings)
        response = await client.post("/v1/send/burger_receipt", json=burger_order)
        done = await wait_for_status(client, response.headers["Location"], finished)
        assert done["status"] == "delivered"
        assert len(smtp_capture.messages) == 1
    finally:
        message_ready.disconnect(broken)


class _FlakyOutbox(SqliteOutbox):
    """A real SQLite outbox whose next_due raises an unexpected error once."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 1

    async def next_due(self) -> float | None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("unexpected")
        return await super().next_due()


async def test_the_dispatcher_survives_an_unexpected_error(
    settings_data: dict[str, Any],
    smtp_capture: Any,
    burger_order: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from notifier.app import create_app
    from notifier.settings import Settings

    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port}
    settings_data["subscribers"] = ["smtp"]
    outbox = _FlakyOutbox(tmp_path / "flaky.sqlite3")
    app = create_app(Settings.from_mapping(settings_data), outbox=outbox)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        deadline = time.monotonic() + 10
        while outbox.failures and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert outbox.failures == 0
        assert (await client.get("/readyz")).status_code == 200  # the loop is still alive
        response = await client.post("/v1/send/burger_receipt", json=burger_order)
        done = await wait_for_status(client, response.headers["Location"], finished)
        assert done["status"] == "delivered"
    assert "unexpected error" in caplog.text


async def test_shutdown_keeps_to_its_grace_even_when_the_dispatcher_is_full(
    settings_data: dict[str, Any], burger_order: dict[str, Any], tmp_path: Path
) -> None:
    from notifier.app import create_app
    from notifier.settings import Settings
    from notifier.subscribers import Subscriber

    settings_data["delivery"] = {
        "concurrency": 1,
        "shutdown_grace": 0.3,
        "subscriber_timeout": 60,
    }
    holding = Holding()  # never released: the subscriber does not finish by itself
    app = create_app(
        Settings.from_mapping(settings_data), subscribers=[Subscriber("hold", holding)]
    )
    test_app = app.test_app()
    await test_app.startup()
    client = test_app.test_client()
    first = await client.post("/v1/send/burger_receipt", json=burger_order)
    await client.post("/v1/send/burger_receipt", json=burger_order)  # waits for the slot
    await wait_for_status(client, first.headers["Location"], lambda b: b["status"] == "sending")
    started = time.monotonic()
    await test_app.shutdown()
    assert time.monotonic() - started < 5, "shutdown waited for a free slot, not the grace"
    # The interrupted delivery was handed back, not counted as an attempt.
    reopened = create_app(Settings.from_mapping(settings_data), subscribers=[])
    async with reopened.test_app() as again:
        status = await (await again.test_client().get(first.headers["Location"])).get_json()
    assert status["subscribers"]["hold"]["status"] == "queued"
    assert status["subscribers"]["hold"]["attempts"] == 0


async def test_backoff_and_max_age_follow_the_injected_clock_and_chance(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    from notifier.outbox import iso_time
    from notifier.subscribers import Subscriber

    clock = Clock()
    start = clock.now
    delivery_settings["delivery"] = {
        "backoff_initial": 10,
        "backoff_max": 3600,
        "max_attempts": 20,
        "max_age": 100,
        "subscriber_timeout": 5,
    }
    exploding = Exploding()
    client = await serving(
        delivery_settings, subscribers=[Subscriber("hook", exploding)], clock=clock, rng=lambda: 0.5
    )
    dispatcher = client.app.extensions["notifier.dispatcher"]  # type: ignore[attr-defined]
    location = (await client.post("/v1/send/burger_receipt", json=burger_order)).headers["Location"]

    def attempts(n: int) -> Callable[[dict[str, Any]], bool]:
        return lambda body: body["subscribers"]["hook"]["attempts"] == n

    # Each retry waits half its ceiling plus chance (0.5 here) times the other half; the
    # ceiling doubles from backoff_initial: 7.5 s, 15 s, 30 s, 60 s. No real time passes.
    for attempt, due_at in [(1, 7.5), (2, 22.5), (3, 52.5), (4, 112.5)]:
        body = await wait_for_status(client, location, attempts(attempt))
        hook = body["subscribers"]["hook"]
        assert hook["status"] == "queued"
        assert hook["next_attempt_at"] == iso_time(start + due_at)
        clock.now = start + due_at
        dispatcher.wake()
    # Accepted 112.5 s ago, over delivery.max_age: the fifth failure is final.
    body = await wait_for_status(client, location, finished)
    assert body["subscribers"]["hook"]["status"] == "failed"
    assert body["subscribers"]["hook"]["attempts"] == 5
    assert exploding.calls == 5
