"""One contract, two backends: every Protocol method of the outbox, run against SQLite on
a real file and PostgreSQL on a real server (a fresh schema per test).

Concurrency tests use separate outbox objects on the same storage, as separate processes
would: separate SQLite connections, separate PostgreSQL connection pools.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from notifier.errors import IdempotencyConflict, OutboxUnavailable
from notifier.outbox import (
    IdempotencyKey,
    Lease,
    NewMessage,
    Outbox,
    Outcome,
    overall_status,
)
from notifier.outbox.postgres import PostgresOutbox
from notifier.outbox.sqlite import SqliteOutbox
from tests.conftest import Clock

BACKENDS = ["sqlite", "postgres"]
OpenOutbox = Callable[[], Awaitable[Outbox]]


def new_message(n: int = 0) -> NewMessage:
    return NewMessage(
        template="burger_receipt",
        context_hash="0" * 64,
        message_id=f"<m{n}@example.org>",
        sender="shop@example.com",
        recipients=["bob@example.com", "carol@example.com"],
        data=b"Subject: hi\r\n\r\nbody\r\n",
        request_id=f"req-{n}",
        template_version=f"{n:012x}",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
async def open_outbox(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[OpenOutbox]:
    """Opens outboxes on one storage (as many as a test asks for); closes them after."""
    opened: list[Outbox] = []
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")

        def make() -> Outbox:
            return PostgresOutbox(url, pool_size=4, clock=clock)
    else:

        def make() -> Outbox:
            return SqliteOutbox(tmp_path / "outbox.sqlite3", clock=clock)

    async def open_one() -> Outbox:
        outbox = make()
        await outbox.open()
        opened.append(outbox)
        return outbox

    yield open_one
    for outbox in opened:
        await outbox.close()


@pytest.fixture
async def outbox(open_outbox: OpenOutbox) -> Outbox:
    return await open_outbox()


# -- messages -----------------------------------------------------------------------------


async def test_added_message_is_stored_with_a_queued_delivery_per_subscriber(
    outbox: Outbox, clock: Clock
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log"])
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.id == record.id
    assert stored.message_id == "<m0@example.org>"
    assert stored.recipients == ["bob@example.com", "carol@example.com"]
    assert stored.request_id == "req-0"
    assert stored.template_version == "000000000000"
    assert stored.as_json()["template_version"] == "000000000000"
    assert stored.created_at == clock.now
    assert [d.subscriber for d in stored.deliveries] == ["smtp", "log"]
    assert all(d.status == "queued" and d.attempts == 0 for d in stored.deliveries)
    assert stored.status == "queued"


async def test_a_message_without_a_template_version_reads_back_none(outbox: Outbox) -> None:
    record = await outbox.add(replace(new_message(), template_version=""), subscribers=["smtp"])
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.template_version is None
    [listed] = await outbox.list_messages(status="queued", limit=10, before=None)
    assert listed.template_version is None


async def test_template_version_is_listed_with_the_message(outbox: Outbox) -> None:
    await outbox.add(new_message(7), subscribers=["smtp"])
    [listed] = await outbox.list_messages(status="queued", limit=10, before=None)
    assert listed.template_version == "000000000007"


async def test_unknown_id_is_none(outbox: Outbox) -> None:
    assert await outbox.get("does-not-exist") is None


async def test_concurrent_adds_all_commit(open_outbox: OpenOutbox) -> None:
    first, second = await open_outbox(), await open_outbox()
    records = await asyncio.gather(
        *((first if n % 2 else second).add(new_message(n), subscribers=["smtp"]) for n in range(60))
    )
    assert len({r.id for r in records}) == 60
    for record in records:
        assert await first.get(record.id) is not None


async def test_a_message_stored_leased_is_not_claimed_by_others(
    outbox: Outbox, clock: Clock
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp"], lease=Lease("me", 30))
    assert await outbox.claim(owner="other", limit=10, lease_seconds=30) == []
    clock.now += 31  # its process died before it delivered
    [claim] = await outbox.claim(owner="other", limit=10, lease_seconds=30)
    assert claim.message.id == record.id
    assert claim.subscribers["smtp"].attempts == 1


async def test_list_messages_by_status_newest_first_in_pages(outbox: Outbox) -> None:
    records = [await outbox.add(new_message(n), subscribers=["smtp"]) for n in range(5)]
    claims = await outbox.claim(owner="a", limit=2, lease_seconds=60)
    for claim in claims:
        await outbox.record(claim.message.id, owner="a", outcomes={"smtp": Outcome("failed")})
    failed = {claim.message.id for claim in claims}
    page = await outbox.list_messages(status="failed", limit=1, before=None)
    assert [r.id for r in page] == [max(failed)]
    rest = await outbox.list_messages(status="failed", limit=10, before=page[0].id)
    assert [r.id for r in rest] == [min(failed)]
    queued = await outbox.list_messages(status="queued", limit=10, before=None)
    assert [r.id for r in queued] == sorted(
        (r.id for r in records if r.id not in failed), reverse=True
    )
    assert await outbox.list_messages(status="delivered", limit=10, before=None) == []


async def test_ids_and_cursors_holding_nul_find_nothing_and_page_alike(outbox: Outbox) -> None:
    # Request data reaches these as they are; PostgreSQL text cannot hold NUL at all.
    records = [await outbox.add(new_message(n), subscribers=["smtp"]) for n in range(3)]
    newest, middle, oldest = sorted((r.id for r in records), reverse=True)
    assert await outbox.get("a\x00b") is None
    assert await outbox.get(newest + "\x00") is None
    assert await outbox.retry(newest + "\x00") is None
    # NUL sorts before any other character: below "<id>\0x" is that id and older.
    page = await outbox.list_messages(status="queued", limit=10, before=middle + "\x00x")
    assert [r.id for r in page] == [middle, oldest]
    assert await outbox.list_messages(status="queued", limit=10, before="\x00") == []


async def test_retry_requeues_failed_deliveries_with_a_fresh_budget(
    outbox: Outbox, clock: Clock
) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log"])
    await outbox.claim(owner="a", limit=10, lease_seconds=60)
    refused = {"carol@example.com": {"code": 550, "message": "no such user"}}
    await outbox.record(
        record.id,
        owner="a",
        outcomes={
            "smtp": Outcome("failed", error="refused", smtp_code=550, detail={"refused": refused}),
            "log": Outcome("delivered"),
        },
    )
    retried = await outbox.retry(record.id)
    assert retried is not None
    after, requeued = retried
    assert requeued == 1
    by_name = {d.subscriber: d for d in after.deliveries}
    assert by_name["smtp"].status == "queued"
    assert by_name["smtp"].attempts == 0
    assert by_name["log"].status == "delivered"
    [claim] = await outbox.claim(owner="b", limit=10, lease_seconds=60)
    assert set(claim.subscribers) == {"smtp"}
    # After a partial refusal only the refused recipients are tried again.
    assert claim.subscribers["smtp"].retry_recipients == ["carol@example.com"]
    assert claim.retried_at == clock.now
    assert await outbox.retry("unknown") is None


async def test_concurrent_retries_requeue_once(open_outbox: OpenOutbox) -> None:
    first, second = await open_outbox(), await open_outbox()
    record = await first.add(new_message(), subscribers=["smtp"])
    await first.claim(owner="a", limit=10, lease_seconds=60)
    await first.record(record.id, owner="a", outcomes={"smtp": Outcome("failed")})
    results = await asyncio.gather(*(o.retry(record.id) for o in [first, second] * 5))
    assert sum(r[1] for r in results if r is not None) == 1


# -- the delivery queue -------------------------------------------------------------------


async def test_claim_leases_due_deliveries_once(outbox: Outbox) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log"])
    [claim] = await outbox.claim(owner="a", limit=10, lease_seconds=60)
    assert claim.message.id == record.id
    assert claim.message.data == b"Subject: hi\r\n\r\nbody\r\n"
    assert claim.message.recipients == ["bob@example.com", "carol@example.com"]
    assert set(claim.subscribers) == {"smtp", "log"}
    assert await outbox.claim(owner="b", limit=10, lease_seconds=60) == []
    stored = await outbox.get(record.id)
    assert stored is not None
    assert stored.status == "sending"


async def test_expired_lease_makes_it_due_again_counting_the_cut_off_attempt(
    outbox: Outbox, clock: Clock
) -> None:
    await outbox.add(new_message(), subscribers=["smtp"])
    assert await outbox.claim(owner="dead-worker", limit=10, lease_seconds=60)
    clock.now += 61
    [claim] = await outbox.claim(owner="b", limit=10, lease_seconds=60)
    assert claim.subscribers["smtp"].attempts == 1


async def test_renewing_a_lease_keeps_others_away(outbox: Outbox, clock: Clock) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log"])
    await outbox.claim(owner="a", limit=10, lease_seconds=30)
    clock.now += 20
    assert await outbox.renew(owner="a", message_ids=[record.id], lease_seconds=30) == 2
    assert await outbox.renew(owner="not-a", message_ids=[record.id], lease_seconds=300) == 0
    clock.now += 20  # 40 s after the claim, 20 s after the renewal
    assert await outbox.claim(owner="b", limit=10, lease_seconds=30) == []
    assert await outbox.next_due() == clock.now + 10
    clock.now += 11
    assert len(await outbox.claim(owner="b", limit=10, lease_seconds=30)) == 1


async def test_record_outcomes_and_overall_status(outbox: Outbox, clock: Clock) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp", "log", "hook"])
    await outbox.claim(owner="a", limit=10, lease_seconds=60)
    await outbox.record(
        record.id,
        owner="a",
        outcomes={
            "smtp": Outcome("delivered", detail={"accepted": "2"}),
            "log": Outcome("failed", error="boom"),
            "hook": Outcome("queued", error="later", smtp_code=451, next_attempt_at=clock.now + 5),
        },
    )
    stored = await outbox.get(record.id)
    assert stored is not None
    by_name = {d.subscriber: d for d in stored.deliveries}
    assert by_name["smtp"].status == "delivered"
    assert by_name["smtp"].detail == {"accepted": "2"}
    assert by_name["log"].last_error == "boom"
    assert by_name["hook"].smtp_code == 451
    assert by_name["hook"].next_attempt_at == clock.now + 5
    assert all(d.attempts == 1 for d in stored.deliveries)
    assert stored.status == "queued"
    assert await outbox.next_due() == clock.now + 5
    assert await outbox.claim(owner="a", limit=10, lease_seconds=60) == []
    clock.now += 5
    [claim] = await outbox.claim(owner="a", limit=10, lease_seconds=60)
    assert set(claim.subscribers) == {"hook"}
    assert claim.subscribers["hook"].attempts == 1


async def test_outcomes_recorded_at_the_same_moment_are_all_stored(outbox: Outbox) -> None:
    records = [await outbox.add(new_message(n), subscribers=["smtp", "log"]) for n in range(40)]
    await outbox.claim(owner="a", limit=100, lease_seconds=60)
    # Recorded in one turn of the event loop: written together, each caller answered.
    await asyncio.gather(
        *(outbox.record(r.id, owner="a", outcomes={"smtp": Outcome("delivered")}) for r in records),
        *(
            outbox.record(r.id, owner="a", outcomes={"log": Outcome("failed", error=str(n))})
            for n, r in enumerate(records)
        ),
    )
    for n, record in enumerate(records):
        stored = await outbox.get(record.id)
        assert stored is not None
        by_name = {d.subscriber: d for d in stored.deliveries}
        assert by_name["smtp"].status == "delivered"
        assert by_name["log"].last_error == str(n)


async def test_a_process_that_lost_its_lease_does_not_overwrite(
    outbox: Outbox, clock: Clock
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
    assert stored.deliveries[0].attempts == 2


async def test_release_makes_it_due_now_without_counting_an_attempt(outbox: Outbox) -> None:
    record = await outbox.add(new_message(), subscribers=["smtp"])
    await outbox.claim(owner="a", limit=10, lease_seconds=600)
    await outbox.release(record.id, owner="a", subscribers=["smtp"])
    [claim] = await outbox.claim(owner="b", limit=10, lease_seconds=600)
    assert claim.subscribers["smtp"].attempts == 0


async def test_concurrent_claimers_never_share_a_delivery(open_outbox: OpenOutbox) -> None:
    outboxes = [await open_outbox() for _ in range(3)]
    for n in range(150):
        await outboxes[0].add(new_message(n), subscribers=["smtp", "log"])
    claimed: Counter[tuple[str, str]] = Counter()

    async def claimer(index: int) -> None:
        outbox = outboxes[index % len(outboxes)]
        while True:
            claims = await outbox.claim(owner=f"claimer-{index}", limit=7, lease_seconds=600)
            if not claims:
                return
            for claim in claims:
                for subscriber in claim.subscribers:
                    claimed[(claim.message.id, subscriber)] += 1

    await asyncio.gather(*(claimer(i) for i in range(8)))
    assert len(claimed) == 300
    assert max(claimed.values()) == 1


async def test_next_due_is_none_when_nothing_waits(outbox: Outbox) -> None:
    assert await outbox.next_due() is None


# -- idempotency keys ---------------------------------------------------------------------


async def test_idempotency_keys_reserve_replay_and_refuse(outbox: Outbox) -> None:
    key = IdempotencyKey("k", "hash-a")
    assert (await outbox.reserve(key, ttl=86400)).state == "reserved"
    assert (await outbox.reserve(IdempotencyKey("k", "hash-a"), ttl=86400)).state == "in_flight"
    record = await outbox.add(new_message(), subscribers=["smtp"], idempotency_key=key)
    replay = await outbox.reserve(IdempotencyKey("k", "hash-a"), ttl=86400)
    assert replay.state == "done"
    assert replay.id == record.id
    assert replay.message_id == record.message_id
    assert (await outbox.reserve(IdempotencyKey("k", "hash-b"), ttl=86400)).state == "mismatch"


async def test_idempotency_keys_expire_and_abandoned_reservations_are_given_up(
    outbox: Outbox, clock: Clock
) -> None:
    key = IdempotencyKey("k", "hash-a")
    await outbox.reserve(key, ttl=86400)
    await outbox.add(new_message(), subscribers=[], idempotency_key=key)
    clock.now += 86400 + 1
    await outbox.purge(retention=0)
    assert (await outbox.reserve(IdempotencyKey("k", "hash-b"), ttl=86400)).state == "reserved"

    stuck = IdempotencyKey("stuck", "h")
    assert (await outbox.reserve(stuck, ttl=86400)).state == "reserved"
    clock.now += 61  # its request's process died before storing anything
    taker = IdempotencyKey("stuck", "h")
    assert (await outbox.reserve(taker, ttl=86400)).state == "reserved"
    with pytest.raises(IdempotencyConflict):
        await outbox.add(new_message(1), subscribers=["smtp"], idempotency_key=stuck)
    # Nothing of the refused add was stored.
    assert await outbox.claim(owner="a", limit=10, lease_seconds=60) == []


async def test_forgetting_a_reservation_frees_the_key(outbox: Outbox) -> None:
    key = IdempotencyKey("k", "hash-a")
    await outbox.reserve(key, ttl=86400)
    await outbox.forget(key)
    assert (await outbox.reserve(IdempotencyKey("k", "hash-b"), ttl=86400)).state == "reserved"


async def test_one_key_raced_from_two_processes_is_reserved_once(open_outbox: OpenOutbox) -> None:
    first, second = await open_outbox(), await open_outbox()
    results = await asyncio.gather(
        *(o.reserve(IdempotencyKey("race", "h"), ttl=86400) for o in [first, second] * 15)
    )
    states = Counter(r.state for r in results)
    assert states == {"reserved": 1, "in_flight": 29}


# -- housekeeping -------------------------------------------------------------------------


async def test_purge_removes_finished_messages_past_retention_only(
    outbox: Outbox, clock: Clock
) -> None:
    done = await outbox.add(new_message(1), subscribers=["smtp"])
    waiting = await outbox.add(new_message(2), subscribers=["smtp"])
    assert len(await outbox.claim(owner="a", limit=10, lease_seconds=60)) == 2
    await outbox.record(done.id, owner="a", outcomes={"smtp": Outcome("delivered")})
    await outbox.release(waiting.id, owner="a", subscribers=["smtp"])
    clock.now += 100
    assert await outbox.purge(retention=0) == 0  # 0 keeps everything
    assert await outbox.purge(retention=200) == 0  # not old enough yet
    assert await outbox.purge(retention=50) == 1
    assert await outbox.get(done.id) is None
    assert await outbox.get(waiting.id) is not None, "an unfinished message is never purged"


async def test_stats_count_the_backlog_and_its_oldest(outbox: Outbox, clock: Clock) -> None:
    assert await outbox.stats() == (0, None)
    await outbox.add(new_message(1), subscribers=["smtp", "log"])
    first = clock.now
    clock.now += 10
    await outbox.add(new_message(2), subscribers=["smtp"])
    assert await outbox.stats() == (3, first)


async def test_check_and_describe(outbox: Outbox) -> None:
    await outbox.check()
    description = await outbox.describe()
    assert "schema version" in description
    assert "password" not in description


async def test_opening_from_many_processes_at_once_migrates_once(
    open_outbox: OpenOutbox,
) -> None:
    outboxes = await asyncio.gather(*(open_outbox() for _ in range(5)))
    descriptions = {await o.describe() for o in outboxes}
    assert len(descriptions) == 1


async def test_listen_wakes_on_work_stored_by_another_process(
    open_outbox: OpenOutbox, request: pytest.FixtureRequest
) -> None:
    listener, writer = await open_outbox(), await open_outbox()
    woken = asyncio.Event()
    task = asyncio.create_task(listener.listen(woken.set))
    if "sqlite" in request.node.name:
        # No notifications between processes: listen returns and polling does the work.
        await asyncio.wait_for(task, 5)
        return
    await asyncio.wait_for(woken.wait(), 5)  # the wake-up right after LISTEN
    woken.clear()
    await writer.add(new_message(), subscribers=["smtp"])
    await asyncio.wait_for(woken.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_overall_status_rules() -> None:
    assert overall_status(["delivered", "delivered"]) == "delivered"
    assert overall_status(["delivered", "failed"]) == "failed"
    assert overall_status(["delivered", "queued"]) == "queued"
    assert overall_status(["failed", "sending"]) == "sending"


# -- SQLite only --------------------------------------------------------------------------


async def test_sqlite_files_opened_by_many_at_once_all_open(tmp_path: Path) -> None:
    # Switching a new file to WAL needs it alone for an instant, and SQLite said "database
    # is locked" at once to the others (about one round in fifteen failed before).
    for round_number in range(40):
        path = tmp_path / f"o{round_number}.sqlite3"
        outboxes = [SqliteOutbox(path) for _ in range(5)]
        try:
            await asyncio.gather(*(outbox.open() for outbox in outboxes))
        finally:
            for outbox in outboxes:
                await outbox.close()


async def test_sqlite_schema_survives_reopening(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "o.sqlite3"
    first = SqliteOutbox(path, clock=clock)
    record = await first.add(new_message(), subscribers=["smtp"])
    await first.close()
    second = SqliteOutbox(path, clock=clock)
    await second.open()
    assert await second.get(record.id) is not None
    await second.close()


async def test_sqlite_unusable_path_raises_outbox_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a folder should be")
    store = SqliteOutbox(blocker / "outbox.sqlite3")
    with pytest.raises(OutboxUnavailable):
        await store.open()
    with pytest.raises(OutboxUnavailable):
        await store.add(new_message(), subscribers=["smtp"])
    await store.close()


# -- PostgreSQL only ----------------------------------------------------------------------


async def test_postgres_that_cannot_be_reached_is_outbox_unavailable() -> None:
    # Nothing listens on port 1; the pool gives up after its timeout.
    store = PostgresOutbox(
        "postgresql://nobody@127.0.0.1:1/none", pool_size=2, connection_timeout=0.5
    )
    with pytest.raises(OutboxUnavailable):
        await store.open()
    with pytest.raises(OutboxUnavailable):
        await store.add(new_message(), subscribers=["smtp"])
    await store.close()
