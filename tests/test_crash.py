"""Real `notifier serve` processes under load: concurrent idempotent requests, SIGKILL
and restart, SIGTERM, and two workers sharing one outbox. Nothing that got a 202 may be
lost; duplicates are only possible for deliveries in flight at a kill."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
ORDER = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
CONCURRENCY = 4  # delivery.concurrency below: at most this many deliveries per process


@pytest.fixture
def crash_settings(tmp_path: Path, settings_data: dict[str, Any], smtp_capture: Any) -> Path:
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port, "timeout": 5}
    settings_data["subscribers"] = ["smtp"]
    settings_data["delivery"] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "max_attempts": 100,
        "subscriber_timeout": 5,
        "concurrency": CONCURRENCY,
        # A killed process's deliveries are taken over once their lease runs out.
        "lease_seconds": 2,
    }
    path = tmp_path / "crash-settings.yml"
    path.write_text(json.dumps(settings_data))
    return path


async def send_stream(url: str, accepted: list[str], stop: asyncio.Event, tag: str) -> None:
    """Four clients sending receipts until ``stop`` is set or the server goes away;
    the Message-ID of every 202 goes into ``accepted``."""

    async def client(worker: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            n = 0
            while not stop.is_set():
                order = {**ORDER, "name": f"{tag}-{worker}-{n}"}
                try:
                    response = await http.post("/v1/send/burger_receipt", json=order)
                except httpx.TransportError:
                    return  # the server was killed or stopped under us
                if response.status_code == 202:
                    accepted.append(response.json()["message_id"])
                elif response.status_code != 503:
                    raise AssertionError(f"unexpected {response.status_code}: {response.text}")
                n += 1

    await asyncio.gather(*(client(worker) for worker in range(4)))


def captured_ids(smtp_capture: Any) -> Counter[str]:
    return Counter(str(message.message["Message-ID"]) for message in smtp_capture.messages)


def wait_until_all_arrive(
    smtp_capture: Any, accepted: list[str], timeout: float = 60
) -> Counter[str]:
    deadline = time.monotonic() + timeout
    while True:
        seen = captured_ids(smtp_capture)
        missing = set(accepted) - set(seen)
        if not missing:
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(missing)} accepted message(s) never arrived")
        # Wake as soon as one more message arrives, rather than polling blindly.
        with contextlib.suppress(TimeoutError):
            smtp_capture.wait_for(len(smtp_capture.messages) + 1, timeout=0.5)


async def test_sigkill_at_random_moments_loses_nothing(
    crash_settings: Path, smtp_capture: Any
) -> None:
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    accepted: list[str] = []
    kills = 3
    for round_number in range(kills + 1):
        server = ServeProcess.start(crash_settings)
        stop = asyncio.Event()
        stream = asyncio.create_task(send_stream(server.url, accepted, stop, f"r{round_number}"))
        await asyncio.sleep(rng.uniform(0.4, 1.2))
        if round_number < kills:
            server.kill()  # mid-request and mid-delivery, no warning
            stop.set()
            await stream
        else:
            stop.set()
            await stream
            seen = await asyncio.to_thread(wait_until_all_arrive, smtp_capture, accepted)
            assert server.stop() == 0
    assert len(accepted) > 20, f"too little traffic to mean anything (seed {seed})"
    duplicates = sum(count - 1 for count in seen.values())
    # Only deliveries in flight at a kill can be repeated: at most CONCURRENCY per kill.
    assert duplicates <= kills * CONCURRENCY, f"{duplicates} duplicates (seed {seed})"


async def test_sigterm_under_load_exits_0_and_loses_nothing(
    crash_settings: Path, smtp_capture: Any
) -> None:
    accepted: list[str] = []
    server = ServeProcess.start(crash_settings)
    stop = asyncio.Event()
    stream = asyncio.create_task(send_stream(server.url, accepted, stop, "term"))
    await asyncio.sleep(1.0)
    server.terminate()
    code = await asyncio.to_thread(server.wait)
    stop.set()
    await stream
    assert code == 0
    assert accepted
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{server.url}/v1/send/burger_receipt", json=ORDER, timeout=5)
    # Whatever was accepted and not yet delivered goes out after the next start.
    with ServeProcess.start(crash_settings):
        seen = await asyncio.to_thread(wait_until_all_arrive, smtp_capture, accepted)
    assert max(seen.values()) == 1, "a graceful stop must not cause duplicates"


async def test_concurrent_requests_with_one_idempotency_key_make_one_message(
    crash_settings: Path, smtp_capture: Any
) -> None:
    with ServeProcess.start(crash_settings) as server:
        headers = {"Idempotency-Key": "checkout-7f3a"}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
            answers = await asyncio.gather(
                *(
                    http.post("/v1/send/burger_receipt", json=ORDER, headers=headers)
                    for _ in range(200)
                )
            )
            statuses = Counter(a.status_code for a in answers)
            assert set(statuses) <= {202, 409}, statuses
            assert statuses[202] >= 1
            bodies = {a.text for a in answers if a.status_code == 202}
            assert len(bodies) == 1, "every 202 must be the first request's response"
            for answer in answers:
                if answer.status_code == 409:
                    assert answer.headers["content-type"] == "application/problem+json"
            later = await http.post("/v1/send/burger_receipt", json=ORDER, headers=headers)
            assert later.status_code == 202
            assert later.text in bodies
            changed = await http.post(
                "/v1/send/burger_receipt", json={**ORDER, "name": "Mallory"}, headers=headers
            )
            assert changed.status_code == 422
        (message,) = smtp_capture.wait_for(1, timeout=10)
        assert json.loads(next(iter(bodies)))["message_id"] == str(message.message["Message-ID"])
        with pytest.raises(TimeoutError):
            smtp_capture.wait_for(2, timeout=1.0)


async def test_two_workers_deliver_each_of_1000_messages_exactly_once(
    crash_settings: Path, smtp_capture: Any
) -> None:
    with ServeProcess.start(crash_settings, "--workers", "2") as server:
        accepted: list[str] = []
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
            semaphore = asyncio.Semaphore(16)

            async def send(n: int) -> None:
                async with semaphore:
                    response = await http.post(
                        "/v1/send/burger_receipt", json={**ORDER, "name": f"customer {n}"}
                    )
                assert response.status_code == 202, response.text
                accepted.append(response.json()["message_id"])

            await asyncio.gather(*(send(n) for n in range(1000)))
        seen = await asyncio.to_thread(wait_until_all_arrive, smtp_capture, accepted, 120)
        assert len(accepted) == 1000
        assert set(seen) == set(accepted)
        assert max(seen.values()) == 1, "a message was delivered twice"


async def test_an_attempt_cut_off_by_a_crash_is_counted(
    tmp_path: Path, settings_data: dict[str, Any], smtp_capture: Any
) -> None:
    # A relay that accepts the connection and never greets: the delivery hangs until the
    # process is killed.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    settings_data["subscribers"] = ["smtp"]
    settings_data["delivery"] = {
        "subscriber_timeout": 30,
        "backoff_initial": 0.05,
        "lease_seconds": 2,
    }
    settings_data["smtp"] = {"host": "127.0.0.1", "port": silent.getsockname()[1], "timeout": 30}
    hanging = tmp_path / "hanging.yml"
    hanging.write_text(json.dumps(settings_data))
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port, "timeout": 5}
    working = tmp_path / "working.yml"
    working.write_text(json.dumps(settings_data))

    server = ServeProcess.start(hanging)
    try:
        with server.client() as http:
            location = http.post("/v1/send/burger_receipt", json=ORDER).headers["Location"]
            deadline = time.monotonic() + 10
            while http.get(location).json()["status"] != "sending":
                assert time.monotonic() < deadline, "the delivery never started"
                await asyncio.sleep(0.02)
    finally:
        server.kill()
        silent.close()

    with ServeProcess.start(working) as restarted, restarted.client() as http:
        deadline = time.monotonic() + 30
        while (body := http.get(location).json())["status"] != "delivered":
            assert time.monotonic() < deadline, f"never delivered: {body}"
            await asyncio.sleep(0.05)
    # The attempt the crash cut off, and the one that delivered.
    assert body["subscribers"]["smtp"]["attempts"] == 2
