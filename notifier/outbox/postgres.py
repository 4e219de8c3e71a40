"""The outbox in PostgreSQL: one database shared by every replica and worker.

PostgreSQL is the only shared state; there is no protocol of notifier's own between
processes. What makes sharing safe:

* **Claims** lock due delivery rows with ``FOR UPDATE SKIP LOCKED``: concurrent claimers
  pass over each other's rows, so a delivery is never handed to two of them.
* **Leases**: a claimed delivery is ``sending`` until ``lease_until``, which its process
  renews while the delivery runs (:meth:`PostgresOutbox.renew`). A process that dies on
  any host stops renewing; once the lease has run out, any other claim takes the
  delivery over and counts the attempt that was cut off.
* **Wake-ups**: accepting a message sends ``NOTIFY notifier_outbox`` in its transaction;
  dispatchers ``LISTEN`` and look for work at once. Only a hint: they poll as well.
* **Idempotency keys** are reserved with ``INSERT ... ON CONFLICT``, globally.
* **Accepting** a message (message, deliveries, idempotency key, notification) is one
  transaction, sent in one round trip (pipeline mode), committed before the 202.
* **Migrations** run in one transaction under an advisory lock, so replicas starting at
  the same moment apply each migration once and wait for it.

A connection pool (psycopg-pool) per process holds up to ``outbox.pool_size``
connections. While the database cannot be reached, every operation raises
:class:`~notifier.errors.OutboxUnavailable` (503 for a send: nothing was accepted), and
the pool keeps reconnecting in the background.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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

__all__ = ["NOTIFY_CHANNEL", "PostgresOutbox"]

logger = logging.getLogger("notifier.outbox")

#: The channel accepted messages are announced on.
NOTIFY_CHANNEL = "notifier_outbox"
#: Seconds an operation waits for a pooled connection before the outbox counts as down.
CONNECTION_TIMEOUT = 5.0
#: Finished messages deleted at most per purge.
_PURGE_BATCH = 1000
#: The advisory lock migrations hold (any constant; it only has to be notifier's own).
_MIGRATION_LOCK = 0x6E6F74696669  # "notifi"

Connection = psycopg.AsyncConnection[TupleRow]

# Errors that mean "the database cannot do this now", not a bug in a statement: the
# connection or server went away, the pool has no connection, a serialisation failure.
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


class PostgresOutbox:
    """The outbox in the PostgreSQL database at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        clock: Callable[[], float] = time.time,
        connection_timeout: float = CONNECTION_TIMEOUT,
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self._timeout = connection_timeout
        self._clock = clock
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._migrated = False
        # Outcomes recorded in the same turn of the event loop share one transaction.
        self._records: Batcher[list[tuple[Any, ...]]] = Batcher(self._write_records)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is None:
            self._pool = AsyncConnectionPool(
                self._url,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._timeout,
                open=False,
                name="notifier-outbox",
                # Autocommit: an operation that is one statement is one round trip, its
                # own transaction; operations of several statements open one explicitly.
                kwargs={"autocommit": True},
            )
            # Without waiting: a database that is down at start is reconnected to in the
            # background, and the first operation that finds it up migrates it.
            await self._pool.open(wait=False)
        await self._migrate()

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            self._migrated = False
            await pool.close()

    async def describe(self) -> str:
        where = conninfo_to_dict(self._url)
        host = where.get("host", "localhost")
        async with self._transaction() as conn:
            version = await _schema_version(conn)
        return (
            f"PostgreSQL outbox {host}:{where.get('port', 5432)}/{where.get('dbname', '')},"
            f" schema version {version}"
        )

    async def _migrate(self) -> None:
        try:
            async with self._pool_connection() as conn, conn.transaction():
                # Every process runs this at start; the lock makes the others wait for
                # the first, and then find nothing left to do.
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS notifier_schema (version integer NOT NULL)"
                )
                version = await _schema_version(conn)
                if version > len(_MIGRATIONS):
                    raise OutboxUnavailable(
                        f"the outbox schema is version {version}, newer than this notifier"
                        f" knows ({len(_MIGRATIONS)}); upgrade notifier"
                    )
                for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                    await conn.execute(script)
                    await conn.execute("DELETE FROM notifier_schema")
                    await conn.execute("INSERT INTO notifier_schema VALUES (%s)", (number,))
                    logger.info("outbox schema migrated to version %d", number)
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        self._migrated = True

    # -- messages ------------------------------------------------------------------------

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
        until = now + lease.seconds if lease is not None else None
        params = {
            "id": record_id,
            "template": message.template,
            "hash": message.context_hash,
            "message_id": message.message_id,
            "sender": message.sender,
            "recipients": Jsonb(message.recipients),
            "data": message.data,
            "now": now,
            "request_id": message.request_id,
            "template_version": message.template_version or None,
            "subscribers": list(subscribers),
            "status": "queued" if lease is None else "sending",
            "owner": lease.owner if lease is not None else None,
            "until": until,
            "due": until if until is not None else now,
            "key": idempotency_key.key if idempotency_key is not None else None,
            "token": idempotency_key.token if idempotency_key is not None else None,
            "channel": NOTIFY_CHANNEL,
        }
        # One statement, so one round trip and one transaction, committed before this
        # returns. With a key, the message is stored only if the key's reservation is
        # still this request's: otherwise nothing is, and the conflict is raised.
        query = _ADD_WITH_KEY if idempotency_key is not None else _ADD
        if lease is None and subscribers:
            # Constant pieces of SQL only; every value is a parameter.
            query += _ADD_NOTIFY + " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM n)"  # noqa: S608
        else:
            query += " SELECT (SELECT count(*) FROM m)"
        rows = await self._one_statement(query.encode(), params)
        if not rows[0][0]:
            raise IdempotencyConflict(idempotency_key.key if idempotency_key else "")
        return MessageRecord(
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

    async def get(self, message_id: str) -> MessageRecord | None:
        if "\x00" in message_id:
            return None  # PostgreSQL text cannot hold NUL: no id has one
        async with self._transaction() as conn:
            records = await _select_records(conn, [message_id])
        return records[0] if records else None

    async def list_messages(
        self, *, status: DeliveryStatus, limit: int, before: str | None
    ) -> list[MessageRecord]:
        driving = {
            # Drive from the (few) failed deliveries, not from every message.
            "failed": "m.id IN (SELECT message FROM notifier_deliveries WHERE status = 'failed')"
            " AND NOT EXISTS (SELECT 1 FROM notifier_deliveries d WHERE d.message = m.id"
            " AND d.status IN ('queued', 'sending'))",
            "sending": "m.id IN (SELECT message FROM notifier_deliveries WHERE status = 'sending')",
            "queued": "m.id IN (SELECT message FROM notifier_deliveries WHERE status = 'queued')"
            " AND NOT EXISTS (SELECT 1 FROM notifier_deliveries d WHERE d.message = m.id"
            " AND d.status = 'sending')",
            "delivered": "NOT EXISTS (SELECT 1 FROM notifier_deliveries d"
            " WHERE d.message = m.id AND d.status != 'delivered')",
        }[status]
        below, bound = "<", before or "~"
        if before is not None and "\x00" in before:
            # PostgreSQL text cannot hold NUL. NUL sorts before every other character, so
            # the ids below "ab\0..." are those up to and including "ab".
            below, bound = "<=", before.partition("\x00")[0]
        query = (
            f"SELECT m.id FROM notifier_messages m WHERE {driving} AND m.id {below} %s"  # noqa: S608
            " ORDER BY m.id DESC LIMIT %s"
        )
        async with self._transaction() as conn:
            cursor = await conn.execute(query.encode(), (bound, limit))
            ids = [row[0] for row in await cursor.fetchall()]
            records = await _select_records(conn, ids)
        by_id = {record.id: record for record in records}
        return [by_id[i] for i in ids if i in by_id]

    async def retry(self, message_id: str) -> tuple[MessageRecord, int] | None:
        if "\x00" in message_id:
            return None  # as in get()
        now = self._clock()
        async with self._transaction() as conn:
            # One statement checks and requeues: a second operator's retry waits for this
            # one's row locks, then finds nothing failed any more.
            cursor = await conn.execute(
                "UPDATE notifier_deliveries SET status = 'queued', attempts = 0,"
                " next_attempt_at = %(now)s, due_at = %(now)s, updated_at = %(now)s,"
                # After a partial refusal only the refused recipients are tried again.
                " detail = CASE WHEN detail ? 'refused' THEN jsonb_build_object("
                "  'retry_recipients', (SELECT jsonb_agg(r) FROM jsonb_object_keys("
                "  detail -> 'refused') r)) END"
                " WHERE message = %(id)s AND status = 'failed' RETURNING subscriber",
                {"now": now, "id": message_id},
            )
            requeued = len(await cursor.fetchall())
            if requeued:
                await conn.execute(
                    "UPDATE notifier_messages SET retried_at = %s WHERE id = %s",
                    (now, message_id),
                )
                await conn.execute("SELECT pg_notify(%s, '')", (NOTIFY_CHANNEL,))
            records = await _select_records(conn, [message_id])
        return (records[0], requeued) if records else None

    # -- idempotency keys ----------------------------------------------------------------

    async def reserve(self, key: IdempotencyKey, *, ttl: float) -> Reservation:
        now = self._clock()
        async with self._transaction() as conn:
            # Insert the key, or take it over when it expired, was abandoned by a request
            # that never finished, or its message was purged. When the key is live, the
            # conflicting row is locked all the same, and read below.
            cursor = await conn.execute(
                "INSERT INTO notifier_idempotency_keys AS k (key, request_hash, token, state,"
                " created_at, expires_at) VALUES (%(key)s, %(hash)s, %(token)s, 'pending',"
                " %(now)s, %(expires)s)"
                " ON CONFLICT (key) DO UPDATE SET request_hash = excluded.request_hash,"
                " token = excluded.token, state = 'pending', message = NULL,"
                " created_at = excluded.created_at, expires_at = excluded.expires_at"
                " WHERE k.expires_at <= %(now)s"
                " OR (k.state = 'pending' AND k.created_at < %(abandoned)s)"
                " OR (k.state = 'done' AND k.message IS NULL)"
                " RETURNING k.key",
                {
                    "key": key.key,
                    "hash": key.request_hash,
                    "token": key.token,
                    "now": now,
                    "expires": now + ttl,
                    "abandoned": now - ABANDONED_RESERVATION_SECONDS,
                },
            )
            if await cursor.fetchone() is not None:
                return Reservation("reserved")
            cursor = await conn.execute(
                "SELECT k.request_hash, k.state, m.id, m.message_id"
                " FROM notifier_idempotency_keys k"
                " LEFT JOIN notifier_messages m ON m.id = k.message WHERE k.key = %s",
                (key.key,),
            )
            row = await cursor.fetchone()
        if row is None:  # purged between the two statements: it is free now
            return await self.reserve(key, ttl=ttl)
        request_hash, state, stored_id, message_id = row
        if request_hash != key.request_hash:
            return Reservation("mismatch")
        if state == "pending":
            return Reservation("in_flight")
        return Reservation("done", id=stored_id, message_id=message_id)

    async def forget(self, key: IdempotencyKey) -> None:
        await self._one_statement(
            "DELETE FROM notifier_idempotency_keys"
            " WHERE key = %s AND token = %s AND state = 'pending'",
            (key.key, key.token),
        )

    # -- the delivery queue --------------------------------------------------------------

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[Claim]:
        now = self._clock()
        rows = await self._one_statement(
            "WITH due AS ("
            " SELECT message, subscriber FROM notifier_deliveries"
            " WHERE status IN ('queued', 'sending') AND due_at <= %(now)s"
            " ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
            " claimed AS ("
            " UPDATE notifier_deliveries d SET status = 'sending', lease_owner = %(owner)s,"
            " lease_until = %(until)s, due_at = %(until)s, updated_at = %(now)s,"
            # A lease that ran out was an attempt cut off by a crash: it counts.
            " attempts = d.attempts + (d.status = 'sending')::int"
            " FROM due WHERE d.message = due.message AND d.subscriber = due.subscriber"
            " RETURNING d.message, d.subscriber, d.attempts, d.detail)"
            # The messages in the same statement: no second round trip.
            " SELECT c.message, c.subscriber, c.attempts, c.detail, m.template, m.message_id,"
            " m.sender, m.recipients, m.data, m.created_at, m.retried_at, m.request_id,"
            " m.template_version FROM claimed c JOIN notifier_messages m ON m.id = c.message",
            {"now": now, "limit": limit, "owner": owner, "until": now + lease_seconds},
        )
        claims: dict[str, Claim] = {}
        for row in rows:
            message_id, subscriber, attempts, detail = row[:4]
            claim = claims.get(message_id)
            if claim is None:
                claim = claims[message_id] = Claim(
                    message=OutboundMessage(
                        id=message_id,
                        template=row[4],
                        message_id=row[5],
                        sender=row[6],
                        recipients=list(row[7]),
                        data=bytes(row[8]),
                        created_at=datetime.fromtimestamp(row[9], UTC),
                        request_id=row[11],
                        template_version=row[12],
                    ),
                    subscribers={},
                    retried_at=row[10],
                )
            claim.subscribers[subscriber] = DeliveryState(attempts, detail)
        return list(claims.values())

    async def renew(self, *, owner: str, message_ids: Collection[str], lease_seconds: float) -> int:
        if not message_ids:
            return 0
        until = self._clock() + lease_seconds
        async with self._connection() as conn:
            cursor = await conn.execute(
                "UPDATE notifier_deliveries SET lease_until = %(until)s, due_at = %(until)s"
                " WHERE status = 'sending' AND lease_owner = %(owner)s"
                " AND message = ANY(%(ids)s)",
                {"until": until, "owner": owner, "ids": list(message_ids)},
            )
            return cursor.rowcount

    async def record(self, message_id: str, *, owner: str, outcomes: Mapping[str, Outcome]) -> None:
        now = self._clock()
        await self._records.add(
            [
                (
                    message_id,
                    subscriber,
                    owner,
                    outcome.status,
                    outcome.error,
                    outcome.smtp_code,
                    outcome.next_attempt_at if outcome.status == "queued" else now,
                    json.dumps(outcome.detail) if outcome.detail else None,
                    now,
                )
                for subscriber, outcome in outcomes.items()
            ]
        )

    async def _write_records(self, batches: list[list[tuple[Any, ...]]]) -> None:
        rows = [row for batch in batches for row in batch]
        columns = [list(column) for column in zip(*rows, strict=True)]
        # Every outcome of the batch in one statement: the rows travel as arrays.
        await self._one_statement(
            "UPDATE notifier_deliveries d SET status = v.status, attempts = d.attempts + 1,"
            " last_error = v.error, smtp_code = v.code, next_attempt_at = v.next,"
            " due_at = v.next, detail = v.detail::jsonb, lease_owner = NULL,"
            " lease_until = NULL, updated_at = v.now"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::int[], %s::float8[], %s::text[], %s::float8[])"
            " AS v(message, subscriber, owner, status, error, code, next, detail, now)"
            # Only the process holding the lease records: if it ran out and another took
            # the delivery over, that one's outcome is the one kept.
            " WHERE d.message = v.message AND d.subscriber = v.subscriber"
            " AND d.lease_owner = v.owner AND d.status = 'sending'",
            columns,
        )

    async def release(self, message_id: str, *, owner: str, subscribers: Iterable[str]) -> None:
        now = self._clock()
        await self._one_statement(
            "WITH released AS (UPDATE notifier_deliveries SET status = 'queued',"
            " next_attempt_at = %(now)s, due_at = %(now)s, lease_owner = NULL,"
            " lease_until = NULL, updated_at = %(now)s WHERE message = %(message)s"
            " AND subscriber = ANY(%(names)s) AND lease_owner = %(owner)s"
            " AND status = 'sending' RETURNING 1)"
            " SELECT pg_notify(%(channel)s, '') WHERE EXISTS (SELECT 1 FROM released)",
            {
                "now": now,
                "message": message_id,
                "names": list(subscribers),
                "owner": owner,
                "channel": NOTIFY_CHANNEL,
            },
        )

    async def next_due(self) -> float | None:
        [(due,)] = await self._one_statement(
            "SELECT min(due_at) FROM notifier_deliveries WHERE status IN ('queued', 'sending')"
        )
        return None if due is None else float(due)

    async def listen(self, wake: Callable[[], None]) -> None:
        try:
            # A connection of its own, outside the pool: it waits for notifications for
            # as long as the process runs.
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=max(1, round(self._timeout))
            )
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            # What was stored while nobody listened is found by the next poll; wake once
            # now so that it is found at once.
            wake()
            async for _ in conn.notifies():
                wake()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None
        finally:
            await conn.close()

    # -- housekeeping --------------------------------------------------------------------

    async def purge(self, *, retention: float) -> int:
        now = self._clock()
        async with self._transaction() as conn:
            await conn.execute(
                "DELETE FROM notifier_idempotency_keys WHERE expires_at < %s", (now,)
            )
            if not retention:
                return 0
            # In batches: a long delete would hold locks that sends need.
            cursor = await conn.execute(
                "DELETE FROM notifier_messages WHERE id IN (SELECT id FROM notifier_messages m"
                " WHERE m.created_at < %s AND NOT EXISTS (SELECT 1 FROM notifier_deliveries d"
                " WHERE d.message = m.id AND d.status IN ('queued', 'sending')) LIMIT %s)",
                (now - retention, _PURGE_BATCH),
            )
            return cursor.rowcount

    async def stats(self) -> tuple[int, float | None]:
        [(backlog, oldest)] = await self._one_statement(
            "SELECT count(*), min(m.created_at) FROM notifier_deliveries d"
            " JOIN notifier_messages m ON m.id = d.message"
            " WHERE d.status IN ('queued', 'sending')"
        )
        return int(backlog), oldest

    async def check(self) -> None:
        await self._one_statement("SELECT 1")

    # -- connections ---------------------------------------------------------------------

    @asynccontextmanager
    async def _pool_connection(self) -> AsyncIterator[Connection]:
        if self._pool is None:
            raise OutboxUnavailable("the outbox is not open")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit mode: each statement is its own transaction,
        committed (durably) before its result comes back. The outbox is opened and
        migrated first if that could not be done at start."""
        if not self._migrated:
            await self.open()
        async with self._pool_connection() as conn:
            yield conn

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction, committed when the block ends."""
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def _one_statement(self, query: str | bytes, params: Any = None) -> list[TupleRow]:
        """Run one statement (one round trip) and return its rows, if it has any."""
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchall() if cursor.description is not None else []


async def _schema_version(conn: Connection) -> int:
    cursor = await conn.execute("SELECT coalesce(max(version), 0) FROM notifier_schema")
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def _select_records(conn: Connection, ids: list[str]) -> list[MessageRecord]:
    if not ids:
        return []
    cursor = await conn.execute(
        "SELECT id, template, message_id, sender, recipients, created_at, request_id,"
        " template_version FROM notifier_messages WHERE id = ANY(%s)",
        (ids,),
    )
    messages = await cursor.fetchall()
    cursor = await conn.execute(
        "SELECT message, subscriber, status, attempts, last_error, smtp_code,"
        " next_attempt_at, updated_at, detail FROM notifier_deliveries"
        " WHERE message = ANY(%s) ORDER BY message, position",
        (ids,),
    )
    deliveries: dict[str, list[DeliveryRecord]] = {}
    for row in await cursor.fetchall():
        deliveries.setdefault(row[0], []).append(
            DeliveryRecord(
                subscriber=row[1],
                status=row[2],
                attempts=row[3],
                last_error=row[4],
                smtp_code=row[5],
                next_attempt_at=row[6],
                updated_at=row[7],
                detail=row[8],
            )
        )
    return [
        MessageRecord(
            id=row[0],
            template=row[1],
            message_id=row[2],
            sender=row[3],
            recipients=list(row[4]),
            created_at=row[5],
            deliveries=deliveries.get(row[0], []),
            request_id=row[6],
            template_version=row[7],
        )
        for row in messages
    ]


def _unavailable(exc: BaseException) -> OutboxUnavailable:
    logger.error("outbox error: %s", exc)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutboxUnavailable(f"the outbox is unavailable: {detail}")


# -- accepting a message, as one statement ------------------------------------------

_ADD_MESSAGE = (
    " m AS (INSERT INTO notifier_messages (id, template, context_hash, message_id, sender,"
    " recipients, data, created_at, request_id, template_version) SELECT %(id)s,"
    " %(template)s, %(hash)s, %(message_id)s, %(sender)s, %(recipients)s, %(data)s,"
    " %(now)s, %(request_id)s, %(template_version)s"
)
_ADD_DELIVERIES = (
    " RETURNING id),"
    " d AS (INSERT INTO notifier_deliveries (message, subscriber, status, attempts,"
    " next_attempt_at, lease_owner, lease_until, due_at, updated_at)"
    " SELECT m.id, s.name, %(status)s, 0, %(now)s, %(owner)s, %(until)s, %(due)s, %(now)s"
    " FROM m, unnest(%(subscribers)s::text[]) WITH ORDINALITY AS s(name, n) ORDER BY s.n"
    " RETURNING 1)"
)
_ADD = "WITH" + _ADD_MESSAGE + _ADD_DELIVERIES
# The message only if this request's reservation of the key is still pending: one that
# was given up as abandoned and taken by another request must not send twice.
# (Constant pieces of SQL only; every value is a parameter.)
_ADD_WITH_KEY = (
    "WITH k AS (UPDATE notifier_idempotency_keys SET state = 'done', message = %(id)s"  # noqa: S608
    " WHERE key = %(key)s AND token = %(token)s AND state = 'pending' RETURNING 1),"
    + _ADD_MESSAGE
    + " WHERE EXISTS (SELECT 1 FROM k)"
    + _ADD_DELIVERIES
)
# Wakes the dispatchers of every process (LISTEN notifier_outbox) once the transaction
# commits; a message already leased to this process's own dispatcher needs no wake-up.
_ADD_NOTIFY = ", n AS (SELECT pg_notify(%(channel)s, '') FROM m)"


# -- schema --------------------------------------------------------------------------

_MIGRATIONS: list[str] = [
    # 1: messages, per-subscriber deliveries, idempotency keys
    """
    CREATE TABLE notifier_messages (
        id text PRIMARY KEY,
        template text NOT NULL,
        context_hash text NOT NULL,
        message_id text NOT NULL,
        sender text NOT NULL,
        recipients jsonb NOT NULL,
        data bytea NOT NULL,
        created_at double precision NOT NULL,
        retried_at double precision,
        request_id text
    );
    CREATE INDEX notifier_messages_created_at ON notifier_messages (created_at);
    CREATE TABLE notifier_deliveries (
        message text NOT NULL REFERENCES notifier_messages (id) ON DELETE CASCADE,
        subscriber text NOT NULL,
        -- the order of the subscribers in settings, for showing them in that order
        position bigint GENERATED ALWAYS AS IDENTITY,
        status text NOT NULL CHECK (status IN ('queued', 'sending', 'delivered', 'failed')),
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL,
        lease_owner text,
        lease_until double precision,
        -- when the row needs a dispatcher: next_attempt_at while queued, lease_until
        -- while sending; one indexed column for the claim query
        due_at double precision NOT NULL,
        last_error text,
        smtp_code integer,
        detail jsonb,
        updated_at double precision NOT NULL,
        PRIMARY KEY (message, subscriber)
    );
    CREATE INDEX notifier_deliveries_due ON notifier_deliveries (due_at)
        WHERE status IN ('queued', 'sending');
    CREATE INDEX notifier_deliveries_status ON notifier_deliveries (status, message);
    CREATE TABLE notifier_idempotency_keys (
        key text PRIMARY KEY,
        request_hash text NOT NULL,
        token text NOT NULL,
        state text NOT NULL CHECK (state IN ('pending', 'done')),
        message text REFERENCES notifier_messages (id) ON DELETE SET NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL
    );
    CREATE INDEX notifier_idempotency_keys_expiry ON notifier_idempotency_keys (expires_at);
    """,
    # 2: the version of the template files that rendered each message (NULL before)
    """
    ALTER TABLE notifier_messages ADD COLUMN template_version text;
    """,
]
