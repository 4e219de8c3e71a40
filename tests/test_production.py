"""Production features: auth on every route group, rate limit, sender allow-list and
recipient limit, /readyz, /metrics, structured logs without secrets."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from notifier.api.auth import FAILED_AUTHENTICATION_RATE
from notifier.api.ratelimit import RateLimiter
from notifier.capture.server import BackgroundCaptureServer
from notifier.settings import LimitsSettings
from tests.conftest import MakeClient, finished, wait_for_status
from tests.servers import ServeProcess

SEND_TOKEN = "send-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
TOKENS = [
    {"name": "orders-service", "token": SEND_TOKEN, "scopes": ["send"]},
    {"name": "operator", "token": ADMIN_TOKEN, "scopes": ["admin"]},
]

# (method, path, scope it needs); ids that do not exist still reach the view (404).
ROUTES = [
    ("POST", "/v1/render/burger_receipt", "send"),
    ("POST", "/v1/send/burger_receipt", "send"),
    ("GET", "/v1/messages/0000", "send"),
    ("GET", "/v1/templates", "admin"),
    ("GET", "/v1/messages?status=failed", "admin"),
    ("POST", "/v1/messages/0000/retry", "admin"),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def authed(serving: MakeClient, delivery_settings: dict[str, Any]) -> Any:
    delivery_settings["auth"] = {"tokens": TOKENS}
    return await serving(delivery_settings)


@pytest.mark.parametrize(("method", "path", "scope"), ROUTES)
async def test_every_v1_route_needs_the_right_token(
    authed: Any, burger_order: dict[str, Any], method: str, path: str, scope: str
) -> None:
    async def call(headers: dict[str, str]) -> Any:
        body = burger_order if method == "POST" else None
        return await authed.open(path, method=method, json=body, headers=headers)

    missing = await call({})
    assert missing.status_code == 401
    assert missing.mimetype == "application/problem+json"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await call(bearer("not-a-token-at-all-0123456789"))
    assert wrong.status_code == 401
    malformed = await call({"Authorization": f"Basic {SEND_TOKEN}"})
    assert malformed.status_code == 401

    right = await call(bearer(SEND_TOKEN if scope == "send" else ADMIN_TOKEN))
    assert right.status_code not in (401, 403), await right.get_data(as_text=True)
    if scope == "admin":
        forbidden = await call(bearer(SEND_TOKEN))
        assert forbidden.status_code == 403
        assert forbidden.mimetype == "application/problem+json"
        assert (await forbidden.get_json())["scope"] == "admin"
    else:
        # admin covers everything under /v1.
        assert (await call(bearer(ADMIN_TOKEN))).status_code not in (401, 403)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_health_and_metrics_need_no_token(authed: Any, path: str) -> None:
    assert (await authed.get(path)).status_code in (200, 503)


async def test_rate_limit_answers_429_then_recovers(
    serving: MakeClient, delivery_settings: dict[str, Any]
) -> None:
    delivery_settings["auth"] = {"tokens": TOKENS}
    delivery_settings["limits"] = {
        "rate_per_minute": 600,
        "rate_burst": 2,
        "allowed_senders": ["*"],
    }
    client = await serving(delivery_settings)
    headers = bearer(ADMIN_TOKEN)
    assert (await client.get("/v1/templates", headers=headers)).status_code == 200
    assert (await client.get("/v1/templates", headers=headers)).status_code == 200
    limited = await client.get("/v1/templates", headers=headers)
    assert limited.status_code == 429
    assert limited.mimetype == "application/problem+json"
    assert int(limited.headers["Retry-After"]) >= 1
    # Another token has its own bucket.
    assert (await client.get("/v1/messages/x", headers=bearer(SEND_TOKEN))).status_code == 404
    # 10 requests a second: the bucket refills within a fraction of a second.
    deadline = time.monotonic() + 5
    status = limited.status_code
    while status == 429 and time.monotonic() < deadline:
        status = (await client.get("/v1/templates", headers=headers)).status_code
    assert status == 200
    assert (await client.get("/healthz")).status_code == 200  # never limited


async def test_default_settings_never_throttle_one_busy_caller(
    serving: MakeClient, settings_data: dict[str, Any]
) -> None:
    settings_data["limits"] = {"allowed_senders": ["*"]}  # the rate settings left unset
    client = await serving(settings_data)
    statuses = [(await client.get("/v1/templates")).status_code for _ in range(200)]
    assert set(statuses) == {200}


async def test_a_token_with_its_own_rate_is_limited_while_another_token_is_not(
    serving: MakeClient, delivery_settings: dict[str, Any]
) -> None:
    send, admin = TOKENS
    delivery_settings["auth"] = {"tokens": [send, {**admin, "rate_per_minute": 6, "rate_burst": 2}]}
    delivery_settings["limits"] = {"allowed_senders": ["*"]}  # global limit off, the default
    client = await serving(delivery_settings)
    responses = [await client.get("/v1/templates", headers=bearer(ADMIN_TOKEN)) for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    limited = responses[-1]
    assert limited.mimetype == "application/problem+json"
    assert (await limited.get_json())["type"] == "urn:notifier:problem:rate-limited"
    assert int(limited.headers["Retry-After"]) >= 1
    others = [
        (await client.get("/v1/messages/x", headers=bearer(SEND_TOKEN))).status_code
        for _ in range(200)
    ]
    assert set(others) == {404}


async def test_a_token_rate_of_zero_exempts_it_from_the_global_limit(
    serving: MakeClient, delivery_settings: dict[str, Any]
) -> None:
    send, admin = TOKENS
    delivery_settings["auth"] = {"tokens": [send, {**admin, "rate_per_minute": 0}]}
    delivery_settings["limits"] = {"rate_per_minute": 6, "rate_burst": 2, "allowed_senders": ["*"]}
    client = await serving(delivery_settings)
    admin_statuses = [
        (await client.get("/v1/templates", headers=bearer(ADMIN_TOKEN))).status_code
        for _ in range(20)
    ]
    assert set(admin_statuses) == {200}
    send_statuses = [
        (await client.get("/v1/messages/x", headers=bearer(SEND_TOKEN))).status_code
        for _ in range(3)
    ]
    assert send_statuses == [404, 404, 429]


def test_token_bucket_refills_at_the_configured_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(LimitsSettings(rate_per_minute=60, rate_burst=2), clock=lambda: now[0])
    assert limiter.take("a") == 0
    assert limiter.take("a") == 0
    assert limiter.take("a") == pytest.approx(1.0)
    now[0] += 0.5
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0
    assert limiter.take("b") == 0


async def test_sender_allow_list(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    delivery_settings["limits"] = {
        "allowed_senders": ["@example-shop.com", "ops@example.org"],
        "rate_per_minute": 0,
    }
    client = await serving(delivery_settings)
    assert (await client.post("/v1/render/burger_receipt", json=burger_order)).status_code == 200
    ops = {**burger_order, "from": "ops@example.org"}
    assert (await client.post("/v1/send/burger_receipt", json=ops)).status_code == 202
    for sender in ("eve@evil.example", "shopping@example-shop.com.evil.example", "x@org"):
        refused = await client.post(
            "/v1/send/burger_receipt", json={**burger_order, "from": sender}
        )
        assert refused.status_code == 422, sender
        body = await refused.get_json()
        assert body["title"] == "Sender not allowed"
        assert body["sender"] == sender


async def test_defaults_allow_only_defaults_from(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    delivery_settings["limits"] = {"rate_per_minute": 0}  # allowed_senders left empty
    client = await serving(delivery_settings)
    refused = await client.post("/v1/send/burger_receipt", json=burger_order)
    assert refused.status_code == 422, "an unconfigured service must not be an open relay"
    delivery_settings["defaults"] = {"from": "Shop <shopping@example-shop.com>"}
    allowed = await serving(delivery_settings)
    assert (await allowed.post("/v1/send/burger_receipt", json=burger_order)).status_code == 202


async def test_recipient_limit(
    serving: MakeClient, delivery_settings: dict[str, Any], templates_dir: Path
) -> None:
    (templates_dir / "many.j2").write_text(
        "From: shop@example.com\nTo: {% for r in to %}{{ r }}{% if not loop.last %}, "
        "{% endif %}{% endfor %}\n\nhi\n"
    )
    delivery_settings["limits"] = {
        "max_recipients": 3,
        "allowed_senders": ["*"],
        "rate_per_minute": 0,
    }
    client = await serving(delivery_settings)
    three = [f"r{n}@example.com" for n in range(3)]
    assert (await client.post("/v1/send/many", json={"to": three})).status_code == 202
    four = await client.post("/v1/send/many", json={"to": [*three, "r3@example.com"]})
    assert four.status_code == 422
    assert "limits.max_recipients" in (await four.get_json())["detail"]


def closed_port(tmp_path: Path) -> int:
    """A loopback port nothing listens on (a relay that is down)."""
    relay = BackgroundCaptureServer(tmp_path / "gone")
    relay.start()
    port = relay.port
    relay.stop()
    return port


def relay_up_sample(text: str, port: int) -> str | None:
    """The value of ``notifier_relay_up`` for the loopback relay on ``port``, if exported."""
    found = re.search(rf'^notifier_relay_up\{{relay="127\.0\.0\.1:{port}"\}} (\S+)$', text, re.M)
    return None if found is None else found.group(1)


async def test_readyz_stays_200_while_the_relay_is_down_and_reports_it(
    serving: MakeClient, settings_data: dict[str, Any], tmp_path: Path
) -> None:
    port = closed_port(tmp_path)
    settings_data["smtp"] = {"host": "127.0.0.1", "port": port}
    client = await serving(settings_data)
    assert (
        relay_up_sample(await (await client.get("/metrics")).get_data(as_text=True), port) is None
    )

    down = await client.get("/readyz")
    assert down.status_code == 200, await down.get_data(as_text=True)
    assert down.mimetype == "application/json"
    body = await down.get_json()
    assert body["status"] == "ready"
    assert body["relay"] == "down"
    assert "unreachable" in body["checks"]["smtp"]
    assert {name: body["checks"][name] for name in ("templates", "outbox", "dispatcher")} == {
        "templates": "ok",
        "outbox": "ok",
        "dispatcher": "ok",
    }
    assert "delivered when" in body["note"]
    scrape = await (await client.get("/metrics")).get_data(as_text=True)
    assert relay_up_sample(scrape, port) == "0.0"

    relay = BackgroundCaptureServer(tmp_path / "relay", port=port)
    relay.start()
    try:
        up = await client.get("/readyz")
        assert up.status_code == 200
        assert (await up.get_json()) == {
            "status": "ready",
            "checks": {"templates": "ok", "outbox": "ok", "dispatcher": "ok", "smtp": "ok"},
            "relay": "up",
        }
        scrape = await (await client.get("/metrics")).get_data(as_text=True)
        assert relay_up_sample(scrape, port) == "1.0"
    finally:
        relay.stop()


async def test_readyz_is_a_503_problem_when_the_outbox_is_not_usable(
    serving: MakeClient, settings_data: dict[str, Any], tmp_path: Path
) -> None:
    blocker = tmp_path / "outbox-dir"
    blocker.write_text("a file where the outbox folder should be")
    settings_data["smtp"] = {"host": "127.0.0.1", "port": closed_port(tmp_path)}
    settings_data["outbox"] = {"path": str(blocker / "outbox.sqlite3")}
    client = await serving(settings_data)

    down = await client.get("/readyz")
    assert down.status_code == 503
    assert down.mimetype == "application/problem+json"
    problem = await down.get_json()
    assert problem["status"] == 503
    assert problem["type"] == "urn:notifier:problem:not-ready"
    assert problem["detail"] == "not ready: outbox failed"  # the relay is not a reason
    checks = problem["checks"]
    assert checks["templates"] == "ok"
    assert checks["outbox"] != "ok"
    assert "unreachable" in checks["smtp"]
    assert problem["relay"] == "down"

    blocker.unlink()
    again = await client.get("/readyz")
    assert again.status_code == 200
    assert (await again.get_json())["relay"] == "down"


async def test_readyz_has_no_relay_without_the_smtp_subscriber(
    serving: MakeClient, settings_data: dict[str, Any]
) -> None:
    settings_data["subscribers"] = ["log"]
    client = await serving(settings_data)
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert (await ready.get_json()) == {
        "status": "ready",
        "checks": {"templates": "ok", "outbox": "ok", "dispatcher": "ok"},
    }
    assert "notifier_relay_up{" not in await (await client.get("/metrics")).get_data(as_text=True)


async def test_deliveries_report_the_relay_state_in_metrics(
    serving: MakeClient,
    delivery_settings: dict[str, Any],
    burger_order: dict[str, Any],
    smtp_capture: Any,
    tmp_path: Path,
) -> None:
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    assert (await wait_for_status(client, response.headers["Location"], finished))[
        "status"
    ] == "delivered"
    scrape = await (await client.get("/metrics")).get_data(as_text=True)
    assert relay_up_sample(scrape, smtp_capture.port) == "1.0"

    port = closed_port(tmp_path)
    delivery_settings["smtp"] = {**delivery_settings["smtp"], "port": port}
    broken = await serving(delivery_settings)
    response = await broken.post("/v1/send/burger_receipt", json=burger_order)
    await wait_for_status(
        broken,
        response.headers["Location"],
        lambda body: body["subscribers"]["smtp"]["attempts"] >= 1,
    )
    scrape = await (await broken.get("/metrics")).get_data(as_text=True)
    assert relay_up_sample(scrape, port) == "0.0"


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if found is None or found.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', found.group(2) or ""))
        if have == labels:
            return float(found.group(3))
    return 0.0


async def test_metrics_change_after_a_send(
    serving: MakeClient, delivery_settings: dict[str, Any], burger_order: dict[str, Any]
) -> None:
    delivery_settings["subscribers"] = ["smtp"]
    client = await serving(delivery_settings)
    before = await (await client.get("/metrics")).get_data(as_text=True)
    response = await client.post("/v1/send/burger_receipt", json=burger_order)
    await wait_for_status(client, response.headers["Location"], finished)
    scrape = await client.get("/metrics")
    assert scrape.mimetype == "text/plain"
    after = await scrape.get_data(as_text=True)
    assert (
        metric(after, "notifier_messages_accepted_total")
        == metric(before, "notifier_messages_accepted_total") + 1
    )
    assert metric(after, "notifier_deliveries_total", subscriber="smtp", outcome="delivered") == 1
    assert metric(after, "notifier_delivery_seconds_count", subscriber="smtp") == 1
    assert metric(after, "notifier_render_seconds_count") >= 1
    assert (
        metric(
            after,
            "notifier_http_requests_total",
            route="/v1/send/<name>",
            method="POST",
            status="202",
        )
        == 1
    )
    assert metric(after, "notifier_outbox_backlog") == 0
    assert "notifier_outbox_oldest_age_seconds" in after


async def test_logs_are_json_with_request_ids_and_never_secrets(
    tmp_path: Path, settings_data: dict[str, Any], smtp_capture: Any
) -> None:
    canary_token = "canary-token-6b1f0c2e9d7a4c55"
    canary_password = "canary-password-93e1d2f0a8b7"
    canary_wrong = "canary-wrong-token-5d4c3b2a1f0e"
    settings_data.update(
        auth={"tokens": [{"name": "canary", "token": canary_token, "scopes": ["admin"]}]},
        log={"format": "json", "include_addresses": False},
        subscribers=["smtp", "log"],
    )
    # The capture server offers no AUTH, so the login with this password fails and the
    # failure is logged: the password must still not appear.
    settings_data["smtp"] = {
        "host": smtp_capture.host,
        "port": smtp_capture.port,
        "username": "notifier",
        "password": canary_password,
        "timeout": 2,
    }
    settings_data["delivery"] = {"max_attempts": 2, "backoff_initial": 0.05}
    settings_file = tmp_path / "log-settings.yml"
    settings_file.write_text(json.dumps(settings_data))
    order = json.loads(
        (Path(__file__).parent.parent / "templates" / "burger_receipt.example.json").read_text()
    )
    with ServeProcess.start(settings_file) as server, server.client() as http:
        sent = http.post(
            "/v1/send/burger_receipt",
            json=order,
            headers={**bearer(canary_token), "X-Request-ID": "req-42.a_b"},
        )
        assert sent.status_code == 202
        assert sent.headers["X-Request-ID"] == "req-42.a_b"
        denied = http.get("/v1/templates", headers=bearer(canary_wrong))
        assert denied.status_code == 401
        generated = denied.headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{24}", generated)
        status = http.get(sent.headers["Location"], headers=bearer(canary_token)).json()
        assert status["request_id"] == "req-42.a_b"
        deadline = time.monotonic() + 10
        while status["status"] not in ("delivered", "failed") and time.monotonic() < deadline:
            status = http.get(sent.headers["Location"], headers=bearer(canary_token)).json()
        assert status["subscribers"]["smtp"]["status"] == "failed"
    output = server.log_text()
    for secret in (canary_token, canary_password, canary_wrong):
        assert secret not in output
    assert "bob@example.com" not in output
    assert "Cheeseburger" not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    requests = [line for line in lines if line["logger"] == "notifier.http"]
    assert {"req-42.a_b", generated} <= {line["request_id"] for line in requests}
    sent_line = next(line for line in requests if line["request_id"] == "req-42.a_b")
    assert sent_line["status"] == 202
    assert sent_line["token"] == "canary"
    assert sent_line["route"] == "/v1/send/<name>"
    attempts = [line for line in lines if line.get("message") == "delivery attempt"]
    # The log subscriber's own line records its delivery; no second line says the same.
    assert {line["subscriber"] for line in attempts} == {"smtp"}
    logged = [line for line in lines if line["logger"] == "notifier.delivery"]
    assert len(logged) == 1
    assert all(line["request_id"] == "req-42.a_b" for line in attempts + logged)


async def test_idempotency_keys_belong_to_their_token(
    authed: Any, burger_order: dict[str, Any]
) -> None:
    key = {"Idempotency-Key": "order-1001"}
    first = await authed.post(
        "/v1/send/burger_receipt", json=burger_order, headers={**bearer(SEND_TOKEN), **key}
    )
    other = await authed.post(
        "/v1/send/burger_receipt",
        json={**burger_order, "name": "Someone else"},
        headers={**bearer(ADMIN_TOKEN), **key},
    )
    assert first.status_code == other.status_code == 202
    assert (await first.get_json())["id"] != (await other.get_json())["id"]
    mismatch = await authed.post(
        "/v1/send/burger_receipt",
        json={**burger_order, "name": "Changed"},
        headers={**bearer(SEND_TOKEN), **key},
    )
    assert mismatch.status_code == 422
    assert (await mismatch.get_json())["idempotency_key"] == "order-1001"


async def test_bad_list_query_is_an_invalid_query_problem(authed: Any) -> None:
    response = await authed.get("/v1/messages?status=lost", headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 400
    assert (await response.get_json())["type"] == "urn:notifier:problem:invalid-query"


async def test_failed_authentications_are_rate_limited(
    serving: MakeClient, delivery_settings: dict[str, Any]
) -> None:
    delivery_settings["auth"] = {"tokens": TOKENS}
    delivery_settings["limits"] = {"rate_per_minute": 60, "rate_burst": 2, "allowed_senders": ["*"]}
    client = await serving(delivery_settings)
    guesses = [
        (await client.get("/v1/templates", headers=bearer(f"guess-{n:020d}"))).status_code
        for n in range(3)
    ]
    assert guesses == [401, 401, 429]


async def test_failed_authentications_are_limited_while_rate_limits_are_off(
    serving: MakeClient, delivery_settings: dict[str, Any]
) -> None:
    delivery_settings["auth"] = {"tokens": TOKENS}
    delivery_settings["limits"] = {"allowed_senders": ["*"]}  # global limit off, the default
    client = await serving(delivery_settings)
    burst = FAILED_AUTHENTICATION_RATE.burst
    guesses = [
        (await client.get("/v1/templates", headers=bearer(f"guess-{n:020d}"))).status_code
        for n in range(burst + 1)
    ]
    assert guesses == [401] * burst + [429]
    # A valid token is not slowed by someone else's failures from the same address.
    assert (await client.get("/v1/templates", headers=bearer(ADMIN_TOKEN))).status_code == 200


def test_ipv6_callers_share_a_bucket_per_64() -> None:
    from notifier.api.ratelimit import client_network

    assert client_network("2001:db8:1:2:aaaa::1") == client_network("2001:db8:1:2:bbbb::9")
    assert client_network("2001:db8:1:2::1") != client_network("2001:db8:1:3::1")
    assert client_network("192.0.2.7") == "192.0.2.7"
