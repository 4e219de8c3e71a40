"""The outbox in one SQLite file: the embedded default for one machine.

Accepting a message is a ``synchronous=FULL`` commit: it is on disk before
:meth:`SqliteOutbox.add` returns. Claims and outcomes are committed without a sync (they
survive a crash of the process; after a power cut, losing one only repeats a delivery,
which at-least-once allows). Several processes on one host may share the file
(``notifier serve --workers N``, a ``notifier worker`` beside it); processes on several
hosts need the PostgreSQL outbox.

All SQLite work happens on one thread per outbox. Concurrent writes are committed
together: each request waits for the commit that holds its row, and many requests share
one fsync instead of paying one each.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from notifier.errors import IdempotencyConflict, OutboxUnavailable
from notifier.outbox.batching import Batcher
from notifier.outbox.records import (
    ABANDONED_RESERVATION_SECONDS,
    Claim,
    DeliveryRecord,
    DeliveryState,
    DeliveryStatus,
    IdempotencyKey,
    Lease,
    MessageRecord,
    NewMessage,
    Outcome,
    Reservation,
    new_message_id,
)
from notifier.signals import OutboundMessage

__all__ = ["SqliteOutbox"]

logger = logging.getLogger("notifier.outbox")

T = TypeVar("T")

#: Finished messages deleted at most per purge.
_PURGE_BATCH = 1000


class SqliteOutbox:
    """The outbox in one SQLite file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._thread: _StoreThread | None = None
        self._migrated = False
        # Outcomes recorded in the same turn of the event loop share one job.
        self._records: Batcher[list[tuple[Any, ...]]] = Batcher(self._write_records)

    async def open(self) -> None:
        if self._thread is None:
            self._thread = _StoreThread(self.path)
        await self._thread.run(_migrate, write=True, durable=True)
        self._migrated = True

    async def close(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            self._migrated = False
            await asyncio.get_running_loop().run_in_executor(None, thread.stop)

    async def describe(self) -> str:
        version = await (await self._store()).run(
            lambda db: db.execute("PRAGMA user_version").fetchone()[0], write=False
        )
        return f"SQLite outbox {self.path}, schema version {version}"

    async def add(
        self,
        message: NewMessage,
        *,
        subscribers: Sequence[str],
        idempotency_key: IdempotencyKey | None = None,
        lease: Lease | None = None,
    ) -> MessageRecord:
        record_id = new_message_id()
        now = self._clock()
        record = MessageRecord(
            id=record_id,
            template=message.template,
            message_id=message.message_id,
            sender=message.sender,
            recipients=list(message.recipients),
            created_at=now,
            deliveries=[
                DeliveryRecord(name, "queued", 0, None, None, now, now, None)
                for name in subscribers
            ],
            request_id=message.request_id,
            template_version=message.template_version or None,
        )

        def insert(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO messages (id, template, context_hash, message_id, sender,"
                " recipients, data, created_at, request_id, template_version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record_id,
                    message.template,
                    message.context_hash,
                    message.message_id,
                    message.sender,
                    json.dumps(message.recipients),
                    message.data,
                    now,
                    message.request_id,
                    message.template_version or None,
                ),
            )
            if lease is None:
                db.executemany(
                    "INSERT INTO deliveries (message, subscriber, status, attempts,"
                    " next_attempt_at, updated_at) VALUES (?, ?, 'queued', 0, ?, ?)",
                    [(record_id, name, now, now) for name in subscribers],
                )
            else:
                until = now + lease.seconds
                db.executemany(
                    "INSERT INTO deliveries (message, subscriber, status, attempts,"
                    " next_attempt_at, lease_owner, lease_until, updated_at)"
                    " VALUES (?, ?, 'sending', 0, ?, ?, ?, ?)",
                    [(record_id, name, now, lease.owner, until, now) for name in subscribers],
                )
            if idempotency_key is not None:
                updated = db.execute(
                    "UPDATE idempotency_keys SET state = 'done', message = ?"
                    " WHERE key = ? AND token = ? AND state = 'pending'",
                    (record_id, idempotency_key.key, idempotency_key.token),
                ).rowcount
                if updated != 1:
                    # The reservation was given up as abandoned and taken by another
                    # request meanwhile: storing this message too would send it twice.
                    raise IdempotencyConflict(idempotency_key.key)

        await (await self._store()).run(insert, write=True, durable=True)
        return record

    async def reserve(self, key: IdempotencyKey, *, ttl: float) -> Reservation:
        now = self._clock()

        def take(db: sqlite3.Connection) -> Reservation:
            row = db.execute(
                "SELECT k.request_hash, k.state, k.created_at, k.expires_at, m.id, m.message_id"
                " FROM idempotency_keys k LEFT JOIN messages m ON m.id = k.message"
                " WHERE k.key = ?",
                (key.key,),
            ).fetchone()
            if row is not None:
                request_hash, state, created_at, expires_at, stored_id, message_id = row
                abandoned = state == "pending" and now - created_at > ABANDONED_RESERVATION_SECONDS
                # A finished key whose message was purged has nothing left to answer with.
                gone = state == "done" and stored_id is None
                if expires_at > now and not abandoned and not gone:
                    if request_hash != key.request_hash:
                        return Reservation("mismatch")
                    if state == "pending":
                        return Reservation("in_flight")
                    return Reservation("done", id=stored_id, message_id=message_id)
                db.execute("DELETE FROM idempotency_keys WHERE key = ?", (key.key,))
            db.execute(
                "INSERT INTO idempotency_keys (key, request_hash, token, state, created_at,"
                " expires_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                (key.key, key.request_hash, key.token, now, now + ttl),
            )
            return Reservation("reserved")

        # A write transaction: SQLite's write lock makes check-and-insert atomic, also
        # between processes sharing the outbox (--workers N).
        return await (await self._store()).run(take, write=True)

    async def forget(self, key: IdempotencyKey) -> None:
        def delete(db: sqlite3.Connection) -> None:
            db.execute(
                "DELETE FROM idempotency_keys WHERE key = ? AND token = ? AND state = 'pending'",
                (key.key, key.token),
            )

        await (await self._store()).run(delete, write=True)

    async def list_messages(
        self, *, status: DeliveryStatus, limit: int, before: str | None
    ) -> list[MessageRecord]:
        driving = {
            # Drive from the (few) failed deliveries, not from every message.
            "failed": "m.id IN (SELECT message FROM deliveries WHERE status = 'failed')"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
            " AND d.status IN ('queued', 'sending'))",
            "sending": "m.id IN (SELECT message FROM deliveries WHERE status = 'sending')",
            "queued": "m.id IN (SELECT message FROM deliveries WHERE status = 'queued')"
            " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
            " AND d.status = 'sending')",
            "delivered": "NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message = m.id"
            " AND d.status != 'delivered')",
        }[status]
        query = (
            f"SELECT m.id FROM messages m WHERE {driving} AND m.id < ?"  # noqa: S608
            " ORDER BY m.id DESC LIMIT ?"
        )

        def select(db: sqlite3.Connection) -> list[MessageRecord]:
            ids = [row[0] for row in db.execute(query, (before or "~", limit))]
            return [record for i in ids if (record := _select_record(db, i)) is not None]

        return await (await self._store()).run(select, write=False)

    async def retry(self, message_id: str) -> tuple[MessageRecord, int] | None:
        now = self._clock()

        def requeue(db: sqlite3.Connection) -> tuple[MessageRecord, int] | None:
            failed = db.execute(
                "SELECT subscriber, detail FROM deliveries WHERE message = ? AND status = 'failed'",
                (message_id,),
            ).fetchall()
            for subscriber, detail in failed:
                # After a partial refusal only the refused recipients are tried again:
                # the others already have the message.
                refused = json.loads(detail).get("refused") if detail else None
                retry_detail = json.dumps({"retry_recipients": list(refused)}) if refused else None
                db.execute(
                    "UPDATE deliveries SET status = 'queued', attempts = 0, next_attempt_at = ?,"
                    " detail = ?, updated_at = ? WHERE message = ? AND subscriber = ?",
                    (now, retry_detail, now, message_id, subscriber),
                )
            if failed:
                db.execute("UPDATE messages SET retried_at = ? WHERE id = ?", (now, message_id))
            record = _select_record(db, message_id)
            return None if record is None else (record, len(failed))

        return await (await self._store()).run(requeue, write=True, durable=True)

    async def purge(self, *, retention: float) -> int:
        now = self._clock()

        def delete(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM idempotency_keys WHERE expires_at < ?", (now,))
            if not retention:
                return 0
            # In batches: a long delete would hold the write lock that sends need.
            return db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                " WHERE created_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d"
                " WHERE d.message = messages.id AND d.status IN ('queued', 'sending'))"
                " LIMIT ?)",
                (now - retention, _PURGE_BATCH),
            ).rowcount

        return await (await self._store()).run(delete, write=True)

    async def get(self, message_id: str) -> MessageRecord | None:
        return await (await self._store()).run(
            lambda db: _select_record(db, message_id), write=False
        )

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[Claim]:
        now = self._clock()

        def lease(db: sqlite3.Connection) -> list[Claim]:
            rows = db.execute(
                # A lease that ran out was an attempt cut off by a crash: it counts.
                "UPDATE deliveries SET status = 'sending', lease_owner = ?, lease_until = ?,"
                " attempts = attempts + (status = 'sending'),"
                " updated_at = ? WHERE rowid IN ("
                "  SELECT rowid FROM deliveries"
                "  WHERE status IN ('queued', 'sending')"
                "    AND ((status = 'queued' AND next_attempt_at <= ?)"
                "      OR (status = 'sending' AND lease_until < ?))"
                "  ORDER BY next_attempt_at LIMIT ?)"
                " RETURNING message, subscriber, attempts, detail",
                (owner, now + lease_seconds, now, now, now, limit),
            ).fetchall()
            due: dict[str, dict[str, DeliveryState]] = {}
            for message_id, subscriber, attempts, detail in rows:
                state = DeliveryState(attempts, json.loads(detail) if detail else None)
                due.setdefault(message_id, {})[subscriber] = state
            if not due:
                return []
            marks = ",".join("?" * len(due))  # placeholders only; the ids are parameters
            select = (
                "SELECT id, template, message_id, sender, recipients, data, created_at,"  # noqa: S608
                f" retried_at, request_id, template_version FROM messages WHERE id IN ({marks})"
            )
            claims = []
            for row in db.execute(select, list(due)):
                message = OutboundMessage(
                    id=row[0],
                    template=row[1],
                    message_id=row[2],
                    sender=row[3],
                    recipients=json.loads(row[4]),
                    data=row[5],
                    created_at=datetime.fromtimestamp(row[6], UTC),
                    request_id=row[8],
                    template_version=row[9],
                )
                claims.append(Claim(message=message, subscribers=due[row[0]], retried_at=row[7]))
            return claims

        return await (await self._store()).run(lease, write=True)

    async def record(self, message_id: str, *, owner: str, outcomes: Mapping[str, Outcome]) -> None:
        now = self._clock()
        await self._records.add(
            [
                (
                    outcome.status,
                    outcome.error,
                    outcome.smtp_code,
                    outcome.next_attempt_at if outcome.status == "queued" else now,
                    json.dumps(outcome.detail) if outcome.detail else None,
                    now,
                    message_id,
                    subscriber,
                    owner,
                )
                for subscriber, outcome in outcomes.items()
            ]
        )

    async def _write_records(self, batches: list[list[tuple[Any, ...]]]) -> None:
        rows = [row for batch in batches for row in batch]

        def update(db: sqlite3.Connection) -> None:
            # Only the worker holding the lease records: if it ran out and another worker
            # took the message over, that worker's outcome is the one kept.
            db.executemany(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1,"
                " last_error = ?, smtp_code = ?, next_attempt_at = ?, detail = ?,"
                " lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE message = ? AND subscriber = ? AND lease_owner = ?",
                rows,
            )

        await (await self._store()).run(update, write=True)

    async def renew(self, *, owner: str, message_ids: Collection[str], lease_seconds: float) -> int:
        if not message_ids:
            return 0
        until = self._clock() + lease_seconds
        ids = list(message_ids)

        def extend(db: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(ids))  # placeholders only; the ids are parameters
            return db.execute(
                f"UPDATE deliveries SET lease_until = ? WHERE status = 'sending'"  # noqa: S608
                f" AND lease_owner = ? AND message IN ({marks})",
                [until, owner, *ids],
            ).rowcount

        return await (await self._store()).run(extend, write=True)

    async def listen(self, wake: Callable[[], None]) -> None:
        # SQLite has no notifications between processes: the dispatcher's polling finds
        # what other processes stored, and this process wakes its own dispatcher.
        return

    async def release(self, message_id: str, *, owner: str, subscribers: Iterable[str]) -> None:
        now = self._clock()
        names = list(subscribers)

        def update(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE deliveries SET status = 'queued', next_attempt_at = ?,"
                " lease_owner = NULL, lease_until = NULL, updated_at = ?"
                " WHERE message = ? AND subscriber = ? AND lease_owner = ?"
                " AND status = 'sending'",
                [(now, now, message_id, name, owner) for name in names],
            )

        await (await self._store()).run(update, write=True)

    async def next_due(self) -> float | None:
        def select(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT MIN(CASE status WHEN 'queued' THEN next_attempt_at ELSE lease_until END)"
                " FROM deliveries WHERE status IN ('queued', 'sending')"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await (await self._store()).run(select, write=False)

    async def stats(self) -> tuple[int, float | None]:
        def select(db: sqlite3.Connection) -> tuple[int, float | None]:
            backlog, oldest = db.execute(
                "SELECT COUNT(*), MIN(m.created_at) FROM deliveries d"
                " JOIN messages m ON m.id = d.message WHERE d.status IN ('queued', 'sending')"
            ).fetchone()
            return int(backlog), oldest

        return await (await self._store()).run(select, write=False)

    async def check(self) -> None:
        await (await self._store()).run(lambda db: db.execute("SELECT 1").fetchone(), write=True)

    async def _store(self) -> _StoreThread:
        # An outbox that could not be opened at start (a volume not mounted yet, say) is
        # opened and migrated by the first operation that finds it usable.
        if not self._migrated:
            await self.open()
        assert self._thread is not None
        return self._thread


def _select_record(db: sqlite3.Connection, message_id: str) -> MessageRecord | None:
    row = db.execute(
        "SELECT id, template, message_id, sender, recipients, created_at, request_id,"
        " template_version FROM messages WHERE id = ?",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    deliveries = [
        DeliveryRecord(
            subscriber=d[0],
            status=d[1],
            attempts=d[2],
            last_error=d[3],
            smtp_code=d[4],
            next_attempt_at=d[5],
            updated_at=d[6],
            detail=json.loads(d[7]) if d[7] else None,
        )
        for d in db.execute(
            "SELECT subscriber, status, attempts, last_error, smtp_code,"
            " next_attempt_at, updated_at, detail FROM deliveries WHERE message = ?"
            " ORDER BY rowid",
            (message_id,),
        )
    ]
    return MessageRecord(
        id=row[0],
        template=row[1],
        message_id=row[2],
        sender=row[3],
        recipients=json.loads(row[4]),
        created_at=row[5],
        deliveries=deliveries,
        request_id=row[6],
        template_version=row[7],
    )


# -- schema ---------------------------------------------------------------------------

_MIGRATIONS: list[str] = [
    # 1: messages and per-subscriber deliveries
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        context_hash TEXT NOT NULL,
        message_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        recipients TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE deliveries (
        message TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        subscriber TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('queued', 'sending', 'delivered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT,
        smtp_code INTEGER,
        detail TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (message, subscriber)
    );
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
        WHERE status IN ('queued', 'sending');
    """,
    # 2: idempotency keys, manual retries, listing by status
    """
    CREATE TABLE idempotency_keys (
        key TEXT PRIMARY KEY,
        request_hash TEXT NOT NULL,
        token TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
        message TEXT REFERENCES messages (id) ON DELETE SET NULL,
        response TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
    ALTER TABLE messages ADD COLUMN retried_at REAL;
    CREATE INDEX deliveries_status ON deliveries (status, message);
    """,
    # 3: the request id of the HTTP request that accepted the message
    """
    ALTER TABLE messages ADD COLUMN request_id TEXT;
    """,
    # 4: purging by age without reading every message
    """
    CREATE INDEX messages_created_at ON messages (created_at);
    """,
    # 5: the version of the template files that rendered each message (NULL before)
    """
    ALTER TABLE messages ADD COLUMN template_version TEXT;
    """,
]


#: Seconds a new connection keeps asking for WAL mode while other processes hold the file.
WAL_SWITCH_SECONDS = 10.0


def _use_wal(db: sqlite3.Connection) -> None:
    # Processes opening a new file at the same moment: switching it to WAL needs the file
    # alone for an instant, and SQLite answers "database is locked" at once instead of
    # waiting (its busy timeout does not cover this pragma). Asking again soon succeeds.
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(_MIGRATIONS):
        raise OutboxUnavailable(
            f"the outbox schema is version {version}, newer than this notifier knows"
            f" ({len(_MIGRATIONS)}); upgrade notifier"
        )
    for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {number}")
        logger.info("outbox schema migrated to version %d", number)


# -- the store thread -----------------------------------------------------------------

# (job, future, loop, write, durable)
_Job = tuple[
    Callable[[sqlite3.Connection], Any],
    "asyncio.Future[Any]",
    asyncio.AbstractEventLoop,
    bool,
    bool,
]
_STOP = object()
#: Most jobs committed together; bounds the latency a large burst adds to its first job.
_MAX_BATCH = 256


class _StoreThread:
    """Runs jobs against one SQLite connection; write jobs are committed in groups."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._connection: sqlite3.Connection | None = None
        self._synced = True
        self._thread = threading.Thread(target=self._serve, name="notifier-outbox", daemon=True)
        self._thread.start()

    async def run(
        self, job: Callable[[sqlite3.Connection], T], *, write: bool, durable: bool = False
    ) -> T:
        """Run ``job`` on the store thread. ``durable`` writes are synced to disk before
        this returns; others survive a crash of the process but maybe not a power cut."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((job, future, loop, write, durable))
        return await future

    def stop(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Job] = []
            item = self._jobs.get()
            while True:
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
                if len(batch) >= _MAX_BATCH:
                    break
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._run_batch(batch)
        if self._connection is not None:
            self._connection.close()

    def _run_batch(self, batch: list[_Job]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        try:
            db = self._connect()
            writing = any(job[3] for job in batch)
            durable = any(job[4] for job in batch)
            if durable != self._synced:
                # FULL syncs the WAL at every commit: needed before a 202. Claims and
                # outcomes use NORMAL (no sync; safe against a crash of this process):
                # after a power cut, losing one only means a delivery is repeated, which
                # at-least-once allows, and skipping the sync roughly halves their cost.
                db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._synced = durable
            db.execute("BEGIN IMMEDIATE" if writing else "BEGIN")
            try:
                for job, *_ in batch:
                    # A savepoint per job: one job's error does not undo the others'.
                    db.execute("SAVEPOINT job")
                    try:
                        results.append((job(db), None))
                    except Exception as exc:
                        db.execute("ROLLBACK TO job")
                        if isinstance(exc, sqlite3.Error):
                            # Callers handle one error for an unusable store, not SQLite's.
                            exc = OutboxUnavailable(f"the outbox is unavailable: {exc}")
                        results.append((None, exc))
                    db.execute("RELEASE job")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            self._discard_connection()
            failure = OutboxUnavailable(f"the outbox is unavailable: {exc}")
            logger.error("outbox error: %s", exc)
            results = [(None, failure)] * len(batch)
        for (_, future, loop, *_), (value, error) in zip(batch, results, strict=True):
            loop.call_soon_threadsafe(_settle, future, value, error)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
            try:
                _use_wal(db)
                db.execute("PRAGMA synchronous = FULL")
                db.execute("PRAGMA foreign_keys = ON")
            except sqlite3.Error:
                db.close()
                raise
            self._connection = db
            self._synced = True
        return self._connection

    def _discard_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
