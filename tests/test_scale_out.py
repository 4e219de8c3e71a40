"""Several real processes on one PostgreSQL outbox: `notifier serve` replicas and
`notifier worker` processes, as docs/deployment.md lays them out. Every accepted message
is delivered exactly once, a replica killed in the middle loses nothing, any replica
answers for any message, and a PostgreSQL outage costs 503s, not messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import postgres
from tests.servers import ServeProcess

ROOT = Path(__file__).resolve().parent.parent
ORDER = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())


@pytest.fixture
def shared_settings(
    settings_data: dict[str, Any], postgres_url: str, smtp_capture: Any
) -> dict[str, Any]:
    settings_data["outbox"] = {"url": postgres_url, "pool_size": 4}
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port, "timeout": 5}
    settings_data["subscribers"] = ["smtp"]
    settings_data["delivery"] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "subscriber_timeout": 5,
        "lease_seconds": 2,
        "concurrency": 8,
    }
    return settings_data


def write_settings(tmp_path: Path, data: dict[str, Any], name: str, **delivery: Any) -> Path:
    path = tmp_path / f"{name}.yml"
    path.write_text(json.dumps({**data, "delivery": {**data["delivery"], **delivery}}))
    return path


@contextlib.contextmanager
def processes(*started: ServeProcess) -> Iterator[list[ServeProcess]]:
    running = list(started)
    try:
        yield running
    finally:
        for process in running:
            process.stop()


def arrived(smtp_capture: Any) -> Counter[str]:
    return Counter(str(m.message["Message-ID"]) for m in smtp_capture.messages)


async def wait_for_arrivals(smtp_capture: Any, expected: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while missing := expected - set(arrived(smtp_capture)):
        assert time.monotonic() < deadline, f"{len(missing)} accepted message(s) never arrived"
        await asyncio.sleep(0.05)


async def send_many(urls: list[str], count: int, *, tag: str) -> list[str]:
    """``count`` receipts spread over the replicas, 16 at a time; their Message-IDs."""
    accepted: list[str] = []
    queue = iter(range(count))

    async def client(worker: int) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            for n in queue:
                url = urls[n % len(urls)]
                order = {**ORDER, "name": f"{tag}-{n}"}
                response = await http.post(f"{url}/v1/send/burger_receipt", json=order)
                assert response.status_code == 202, response.text
                accepted.append(response.json()["message_id"])

    await asyncio.gather(*(client(worker) for worker in range(16)))
    return accepted


async def test_two_api_replicas_and_a_worker_deliver_1000_sends_exactly_once(
    tmp_path: Path, shared_settings: dict[str, Any], smtp_capture: Any
) -> None:
    api = write_settings(tmp_path, shared_settings, "api", in_serve=False)
    worker = write_settings(tmp_path, shared_settings, "worker")
    with processes(
        ServeProcess.start(api), ServeProcess.start(api), ServeProcess.start_worker(worker)
    ) as (first, second, _):
        accepted = await send_many([first.url, second.url], 1000, tag="spread")
        await wait_for_arrivals(smtp_capture, set(accepted), timeout=120)
        counts = arrived(smtp_capture)
        assert sum(counts[m] for m in accepted) == 1000, "each message exactly once"
        assert max(counts.values()) == 1
        # The API replicas deliver nothing themselves: no delivery lines in their logs.
        assert "delivery attempt" not in first.log_text() + second.log_text()


async def test_a_replica_killed_in_the_middle_loses_nothing(
    tmp_path: Path, shared_settings: dict[str, Any], smtp_capture: Any
) -> None:
    # Both replicas accept and deliver; one dies with work leased to it.
    both = write_settings(tmp_path, shared_settings, "both")
    accepted: list[str] = []
    with processes(ServeProcess.start(both), ServeProcess.start(both)) as (victim, survivor):
        accepted += await send_many([victim.url, survivor.url], 200, tag="before")
        victim.kill()
        accepted += await send_many([survivor.url], 200, tag="after")
        # The victim's leases run out (lease_seconds: 2) and the survivor takes over.
        await wait_for_arrivals(smtp_capture, set(accepted), timeout=60)
    counts = arrived(smtp_capture)
    duplicates = sum(counts[m] - 1 for m in accepted)
    # Only deliveries in flight at the kill can be repeated: at most one process's
    # delivery.concurrency.
    print(f"\n{duplicates} duplicate delivery(ies) after killing a replica mid-stream")
    assert duplicates <= shared_settings["delivery"]["concurrency"]


async def test_a_replica_accepts_while_the_worker_is_down_and_the_worker_delivers_later(
    tmp_path: Path, shared_settings: dict[str, Any], smtp_capture: Any
) -> None:
    api = write_settings(tmp_path, shared_settings, "api", in_serve=False)
    worker = write_settings(tmp_path, shared_settings, "worker")
    with processes(ServeProcess.start(api)) as (replica,):
        accepted = await send_many([replica.url], 20, tag="no-worker")
        with replica.client() as http:
            body = http.get("/v1/messages?status=queued&limit=50").json()
        assert len(body["messages"]) == 20
        await asyncio.sleep(1.5)  # a poll interval and more: nobody delivers
        assert not smtp_capture.messages
        with processes(ServeProcess.start_worker(worker)):
            await wait_for_arrivals(smtp_capture, set(accepted), timeout=30)


async def test_any_replica_answers_for_any_message(
    tmp_path: Path, shared_settings: dict[str, Any], smtp_capture: Any
) -> None:
    shared_settings["delivery"]["max_attempts"] = 1
    both = write_settings(tmp_path, shared_settings, "both")
    started = processes(ServeProcess.start(both), ServeProcess.start(both))
    with started as (first, second), first.client() as a, second.client() as b:
        key = {"Idempotency-Key": "order-1001"}
        sent = a.post("/v1/send/burger_receipt", json=ORDER, headers=key)
        assert sent.status_code == 202
        replayed = b.post("/v1/send/burger_receipt", json=ORDER, headers=key)
        assert replayed.json()["id"] == sent.json()["id"]
        assert replayed.headers["Idempotent-Replayed"] == "true"
        other = b.post("/v1/send/burger_receipt", json={**ORDER, "name": "X"}, headers=key)
        assert other.status_code == 422

        refused = {**ORDER, "to": "bob+fail-550@example.com"}
        failed_id = a.post("/v1/send/burger_receipt", json=refused).json()["id"]
        deadline = time.monotonic() + 20
        while b.get(f"/v1/messages/{failed_id}").json()["status"] != "failed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        listed = b.get("/v1/messages?status=failed").json()["messages"]
        assert [m["id"] for m in listed] == [failed_id]
        retried = b.post(f"/v1/messages/{failed_id}/retry")
        assert retried.status_code == 202
        assert a.get(f"/v1/messages/{sent.json()['id']}").json()["id"] == sent.json()["id"]


@pytest.fixture
def own_cluster() -> Iterator[postgres.ThrowawayCluster]:
    """A PostgreSQL of this test's own, to stop and start again."""
    bin_dirs = postgres.debian_bin_dirs()
    assert bin_dirs, "Debian's postgresql binaries are needed (make test installs them)"
    cluster = postgres.ThrowawayCluster.start(bin_dirs[0])
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_while_postgres_is_down_sends_are_503_and_nothing_accepted_is_lost(
    tmp_path: Path,
    shared_settings: dict[str, Any],
    smtp_capture: Any,
    own_cluster: postgres.ThrowawayCluster,
) -> None:
    shared_settings["outbox"] = {"url": own_cluster.url, "pool_size": 2}
    # A relay that refuses for a while: the first message is still queued at the outage.
    smtp_capture.faults.add("*", "fail-451", times=3)
    both = write_settings(tmp_path, shared_settings, "both", backoff_initial=1, backoff_max=1)
    with processes(ServeProcess.start(both)) as (replica,), replica.client() as http:
        before = http.post("/v1/send/burger_receipt", json=ORDER)
        assert before.status_code == 202

        own_cluster.halt()
        refused = http.post("/v1/send/burger_receipt", json=ORDER)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "urn:notifier:problem:outbox-unavailable"
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["outbox"] != "ok"
        assert http.post("/v1/render/burger_receipt", json=ORDER).status_code == 200

        own_cluster.resume()
        deadline = time.monotonic() + 30
        while (after := http.post("/v1/send/burger_receipt", json=ORDER)).status_code != 202:
            assert time.monotonic() < deadline, after.text
            await asyncio.sleep(0.2)
        expected = {before.json()["message_id"], after.json()["message_id"]}
        await wait_for_arrivals(smtp_capture, expected, timeout=30)
        assert http.get("/readyz").status_code == 200


async def test_a_delivery_longer_than_its_lease_is_renewed_not_taken_over(
    tmp_path: Path, shared_settings: dict[str, Any], smtp_capture: Any
) -> None:
    # Each delivery takes 3 s at the relay; leases last 1 s unless renewed. Without
    # renewal the other process would take every delivery over and send it again.
    both = write_settings(tmp_path, shared_settings, "both", lease_seconds=1, subscriber_timeout=10)
    slow = {**ORDER, "to": "bob+delay-3@example.com"}
    with processes(ServeProcess.start(both), ServeProcess.start_worker(both)) as (replica, _):
        with replica.client() as http:
            accepted = [
                http.post("/v1/send/burger_receipt", json={**slow, "name": f"n{n}"}).json()
                for n in range(4)
            ]
        await wait_for_arrivals(smtp_capture, {a["message_id"] for a in accepted}, timeout=30)
        await asyncio.sleep(2)  # time for a wrongly taken-over delivery to arrive too
    assert max(arrived(smtp_capture).values()) == 1


def test_a_worker_stops_gracefully_on_sigterm(
    tmp_path: Path, shared_settings: dict[str, Any]
) -> None:
    worker = ServeProcess.start_worker(write_settings(tmp_path, shared_settings, "worker"))
    worker.terminate()
    assert worker.wait(timeout=30) == 0
    assert "worker stopping" in worker.log_text()
