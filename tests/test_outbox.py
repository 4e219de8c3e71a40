"""SqliteOutbox on a real SQLite file: storage, leases, outcomes, failure to store."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from notifier.errors import OutboxUnavailable
from notifier.outbox import NewMessage, Outcome, SqliteOutbox, overall_status
from tests.conftest import Clock


def new_message(n: int = 0) -> NewMessage:
    return NewMessage(
        template="burger_receipt",
        context_hash="0" * 64,
        message_id=f"<m{n}@example.org>",
        sender="shop@example.com",
        recipients=["bob@example.com", "carol@example.com"],
        data=b"Subject: hi\r\n\r\nbody\r\n",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def outbox(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteOutbox]:
    store = SqliteOutbox(tmp_path / "var" / "outbox.sqlite3", clock=clock)
    await store.open()
    yield store
    await store.close()


async def test_added_message_is_stored_with_a_queued_delivery_per_subscriber(
    outbox: SqliteOutbox, tmp_path: Path
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log"])
    assert record.status == "queued"
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.message_id == "<m0@example.org>"
    assert stored.recipients == ["bob@example.com", "carol@example.com"]
    assert [d.subscriber for d in stored.deliveries] == ["smtp", "log"]
    assert all(d.status == "queued" and d.attempts == 0 for d in stored.deliveries)
    # Durable: another connection sees the committed row and the file is in WAL mode.
    with sqlite3.connect(tmp_path / "var" / "outbox.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_unknown_id_is_none(outbox: SqliteOutbox) -> None:
    assert await outbox.get("nope") is None


async def test_concurrent_adds_all_commit(outbox: SqliteOutbox) -> None:
    records = await asyncio.gather(
        *(outbox.add(new_message(n), subscribers=["smtp"]) for n in range(200))
    )
    assert len({r.id for r in records}) == 200
    for record in records[::37]:
        assert await outbox.get(record.id) is not None


async def test_claim_leases_due_deliveries_once(outbox: SqliteOutbox, clock: Clock) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log"])
    claims = await outbox.claim(owner="a", limit=10, lease_seconds=60)
    assert [c.message.id for c in claims] == [record.id]
    assert set(claims[0].subscribers) == {"smtp", "log"}
    assert claims[0].message.data == b"Subject: hi\r\n\r\nbody\r\n"
    assert await outbox.claim(owner="b", limit=10, lease_seconds=60) == []
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.status == "sending"


async def test_expired_lease_makes_the_message_due_again(
    outbox: SqliteOutbox, clock: Clock
) -> None:
    await outbox.add(new_message(), subscribers=["smtp"])
    assert await outbox.claim(owner="dead-worker", limit=10, lease_seconds=60)
    clock.now += 61
    claims = await outbox.claim(owner="b", limit=10, lease_seconds=60)
    assert len(claims) == 1
    # The attempt the dead worker had started counts.
    assert claims[0].subscribers["smtp"].attempts == 1


async def test_a_lease_released_as_dead_counts_the_cut_off_attempt(
    outbox: SqliteOutbox,
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp"])
    assert await outbox.claim(owner="dead-worker", limit=10, lease_seconds=600)
    assert await outbox.release_dead(lambda owner: owner == "dead-worker") == 1
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.deliveries[0].attempts == 1
    [claim] = await outbox.claim(owner="b", limit=10, lease_seconds=600)
    assert claim.subscribers["smtp"].attempts == 1


async def test_record_outcomes_and_overall_status(outbox: SqliteOutbox, clock: Clock) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log", "hook"])
    await outbox.claim(owner="a", limit=10, lease_seconds=60)
    await outbox.record(
        record.id,
        owner="a",
        outcomes={
            "smtp": Outcome("delivered"),
            "log": Outcome("failed", error="boom"),
            "hook": Outcome("queued", error="later", smtp_code=451, next_attempt_at=clock.now + 5),
        },
    )
    stored = await outbox.get(record.id)
    assert stored is not None
    by_name = {d.subscriber: d for d in stored.deliveries}
    assert by_name["smtp"].status == "delivered"
    assert by_name["log"].last_error == "boom"
    assert by_name["hook"].smtp_code == 451
    assert all(d.attempts == 1 for d in stored.deliveries)
    assert stored.status == "queued"
    assert await outbox.next_due() == clock.now + 5
    assert await outbox.claim(owner="a", limit=10, lease_seconds=60) == []
    clock.now += 5
    [claim] = await outbox.claim(owner="a", limit=10, lease_seconds=60)
    assert set(claim.subscribers) == {"hook"}
    assert claim.subscribers["hook"].attempts == 1


async def test_a_worker_that_lost_its_lease_does_not_overwrite(
    outbox: SqliteOutbox, clock: Clock
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp"])
    await outbox.claim(owner="slow", limit=10, lease_seconds=60)
    clock.now += 61
    await outbox.claim(owner="fast", limit=10, lease_seconds=60)
    await outbox.record(record.id, owner="fast", outcomes={"smtp": Outcome("delivered")})
    await outbox.record(record.id, owner="slow", outcomes={"smtp": Outcome("failed", error="x")})
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.deliveries[0].status == "delivered"


async def test_release_makes_it_due_now_without_counting_an_attempt(
    outbox: SqliteOutbox,
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp"])
    await outbox.claim(owner="a", limit=10, lease_seconds=600)
    await outbox.release(record.id, owner="a", subscribers=["smtp"])
    [claim] = await outbox.claim(owner="b", limit=10, lease_seconds=600)
    assert claim.subscribers["smtp"].attempts == 0


async def test_schema_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.sqlite3"
    first = SqliteOutbox(path, clock=clock)
    record = await first.add(new_message(), subscribers=["smtp"])
    await first.close()
    second = SqliteOutbox(path, clock=clock)
    await second.open()
    assert await second.get(record.id) is not None
    await second.close()


async def test_unusable_path_raises_outbox_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a folder should be")
    store = SqliteOutbox(blocker / "outbox.sqlite3")
    with pytest.raises(OutboxUnavailable):
        await store.open()
    with pytest.raises(OutboxUnavailable):
        await store.add(new_message(), subscribers=["smtp"])
    await store.close()


def test_overall_status_rules() -> None:
    assert overall_status(["delivered", "delivered"]) == "delivered"
    assert overall_status(["delivered", "failed"]) == "failed"
    assert overall_status(["delivered", "queued"]) == "queued"
    assert overall_status(["failed", "sending"]) == "sending"


async def test_purge_removes_finished_messages_past_retention_only(
    outbox: SqliteOutbox, clock: Clock
) -> None:
    done = await outbox.add(new_message(1), subscribers=["smtp"])
    waiting = await outbox.add(new_message(2), subscribers=["smtp"])
    [_, _] = await outbox.claim(owner="a", limit=10, lease_seconds=60)
    await outbox.record(done.id, owner="a", outcomes={"smtp": Outcome("delivered")})
    await outbox.release(waiting.id, owner="a", subscribers=["smtp"])
    clock.now += 100
    assert await outbox.purge(retention=0) == 0  # 0 keeps everything
    assert await outbox.purge(retention=200) == 0  # not old enough yet
    assert await outbox.purge(retention=50) == 1
    assert await outbox.get(done.id) is None
    assert await outbox.get(waiting.id) is not None, "an unfinished message is never purged"
