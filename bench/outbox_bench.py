"""The PostgreSQL outbox's claim + record cycle against a bare ``FOR UPDATE SKIP LOCKED``
loop on the same tables, in one run.

Usage: ``.venv/bin/python bench/outbox_bench.py [--messages 1000] [--batch 32]
[--claimers 1 4] [--rounds 3] [--quiet SECONDS]``

A fresh database (``postgres_server``) gets notifier's schema and ``--messages`` rendered
burger receipts with one subscriber each, stored through ``PostgresOutbox.add``; a copy
of those rows is kept aside, and before every candidate the outbox tables are emptied and
filled again from it, so each starts from the same rows on fresh pages. Then, timed,
``--claimers`` concurrent claimers each repeat "claim up to ``--batch``, record each as
delivered" until nothing is due:

* **notifier**: ``PostgresOutbox.claim`` then ``PostgresOutbox.record`` per message;
* **bare loop**: psycopg on autocommit connections, one statement per claim (``WITH due
  AS (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) UPDATE ... RETURNING``, joined to the
  message so that it returns everything notifier's claim does, bytes included: the
  minimum a dispatcher needs to deliver) and one ``UPDATE`` per delivery;
* **bare, ids only**: the bare loop without the message columns, for what fetching the
  message costs.

The candidates take turns, round after round; the report gives each one's median
deliveries/s, where its time went (claims, records; CPU in this process and in
PostgreSQL per delivery) and notifier's ratio to the bare loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import postgres_server  # type: ignore[import-not-found]
import psycopg
from cpu_meter import (  # type: ignore[import-not-found]
    CpuMeter,
    CpuShare,
    quiet_summary,
    wait_for_quiet,
)

from notifier.outbox import Claim, NewMessage, Outcome
from notifier.outbox.postgres import PostgresOutbox
from notifier.renderer import Renderer
from notifier.sending import context_hash
from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
SUBSCRIBER = "log"
LEASE_SECONDS = 300.0
DELIVERED = Outcome("delivered")
TARGET = 0.7  # notifier's cycle, x the bare loop

NOTIFIER = "notifier claim + record"
BARE = "bare loop"
BARE_IDS = "bare loop, ids only"

# The due rows exactly as notifier's claim selects them (same index, same order).
_DUE = (
    "WITH due AS (SELECT message, subscriber FROM notifier_deliveries"
    " WHERE status IN ('queued', 'sending') AND due_at <= %(now)s"
    " ORDER BY due_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
)
_LEASE = (
    " UPDATE notifier_deliveries d SET status = 'sending', lease_owner = %(owner)s,"
    " lease_until = %(until)s, due_at = %(until)s"
)
BARE_CLAIM = (
    _DUE + _LEASE + " FROM due JOIN notifier_messages m ON m.id = due.message"
    " WHERE d.message = due.message AND d.subscriber = due.subscriber"
    " RETURNING d.message, d.subscriber, d.attempts, d.detail, m.template, m.message_id,"
    " m.sender, m.recipients, m.data, m.created_at, m.retried_at, m.request_id"
)
BARE_CLAIM_IDS = (
    _DUE + _LEASE + " FROM due WHERE d.message = due.message AND d.subscriber = due.subscriber"
    " RETURNING d.message, d.subscriber"
)
BARE_RECORD = (
    "UPDATE notifier_deliveries SET status = 'delivered', attempts = attempts + 1,"
    " lease_owner = NULL, lease_until = NULL, due_at = %(now)s, updated_at = %(now)s"
    " WHERE message = %(message)s AND subscriber = %(subscriber)s AND lease_owner = %(owner)s"
)


@dataclass(frozen=True)
class Cycle:
    """One candidate: how a claimer claims a batch and records one item of it."""

    claim: Callable[[int, int], Awaitable[Sequence[Any]]]
    record: Callable[[int, Any], Awaitable[None]]


@dataclass(frozen=True)
class Run:
    deliveries: int
    seconds: float
    #: Time the claimers spent claiming and recording, summed over the claimers.
    claiming: float
    recording: float
    cpu: CpuShare | None

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


def notifier_cycle(outbox: PostgresOutbox) -> Cycle:
    async def claim(worker: int, batch: int) -> list[Claim]:
        return await outbox.claim(owner=f"bench-{worker}", limit=batch, lease_seconds=LEASE_SECONDS)

    async def record(worker: int, claim: Claim) -> None:
        outcomes = dict.fromkeys(claim.subscribers, DELIVERED)
        await outbox.record(claim.message.id, owner=f"bench-{worker}", outcomes=outcomes)

    return Cycle(claim, record)


def bare_cycle(connections: list[psycopg.AsyncConnection[Any]], statement: str) -> Cycle:
    async def claim(worker: int, batch: int) -> list[Any]:
        now = time.time()
        cursor = await connections[worker].execute(
            statement,
            {"now": now, "limit": batch, "owner": f"bench-{worker}", "until": now + LEASE_SECONDS},
        )
        return await cursor.fetchall()

    async def record(worker: int, row: Any) -> None:
        await connections[worker].execute(
            BARE_RECORD,
            {
                "now": time.time(),
                "message": row[0],
                "subscriber": row[1],
                "owner": f"bench-{worker}",
            },
        )

    return Cycle(claim, record)


async def run_cycle(cycle: Cycle, claimers: int, batch: int, meter: CpuMeter) -> Run:
    totals = {"deliveries": 0, "claiming": 0.0, "recording": 0.0}

    async def claimer(worker: int) -> None:
        while True:
            started = time.perf_counter()
            items = await cycle.claim(worker, batch)
            claimed = time.perf_counter()
            totals["claiming"] += claimed - started
            if not items:
                return
            for item in items:
                await cycle.record(worker, item)
            totals["recording"] += time.perf_counter() - claimed
            totals["deliveries"] += len(items)

    meter.start()
    start = time.perf_counter()
    await asyncio.gather(*(claimer(worker) for worker in range(claimers)))
    seconds = time.perf_counter() - start
    return Run(
        int(totals["deliveries"]), seconds, totals["claiming"], totals["recording"], meter.stop()
    )


async def fill(url: str, count: int) -> None:
    """``count`` messages through ``PostgresOutbox.add``, then a copy of the rows aside."""
    settings = Settings.from_mapping(
        {"templates": {"dir": str(ROOT / "templates")}, "limits": {"allowed_senders": ["*"]}}
    )
    renderer = Renderer.from_settings(settings)
    fingerprint = context_hash(CONTEXT)
    outbox = PostgresOutbox(url, pool_size=8)
    await outbox.open()
    remaining = iter(range(count))

    async def adder() -> None:
        for _ in remaining:
            composed = renderer.render("burger_receipt", CONTEXT)
            message = NewMessage(
                template="burger_receipt",
                context_hash=fingerprint,
                message_id=composed.message_id,
                sender=composed.sender,
                recipients=composed.recipients,
                data=composed.data,
            )
            await outbox.add(message, subscribers=[SUBSCRIBER])

    try:
        await asyncio.gather(*(adder() for _ in range(8)))
    finally:
        await outbox.close()
    renderer.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CREATE TABLE bench_messages AS TABLE notifier_messages")
        await conn.execute("CREATE TABLE bench_deliveries AS TABLE notifier_deliveries")


async def refill(conn: psycopg.AsyncConnection[Any]) -> int:
    """Put the outbox back as :func:`fill` left it; return the number of deliveries."""
    await conn.execute("TRUNCATE notifier_messages CASCADE")
    await conn.execute("INSERT INTO notifier_messages SELECT * FROM bench_messages")
    await conn.execute(
        "INSERT INTO notifier_deliveries OVERRIDING SYSTEM VALUE SELECT * FROM bench_deliveries"
    )
    # Hint bits and statistics now, so that no candidate pays for them in its run.
    await conn.execute("VACUUM ANALYZE notifier_messages, notifier_deliveries")
    cursor = await conn.execute("SELECT count(*) FROM notifier_deliveries")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def check_all_delivered(conn: psycopg.AsyncConnection[Any], name: str, run: Run) -> None:
    """A candidate that skipped or repeated work would look fast: refuse its numbers."""
    cursor = await conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'delivered' AND attempts = 1), count(*)"
        " FROM notifier_deliveries"
    )
    row = await cursor.fetchone()
    assert row is not None
    delivered_once, total = row
    if delivered_once != total or run.deliveries != total:
        raise RuntimeError(
            f"{name}: {delivered_once} of {total} deliveries recorded once as delivered,"
            f" {run.deliveries} claimed"
        )


async def drive(url: str, args: argparse.Namespace) -> int:
    started = time.perf_counter()
    await fill(url, args.messages)
    print(f"filled {args.messages} messages in {time.perf_counter() - started:.1f} s")
    most = max(args.claimers)
    outbox = PostgresOutbox(url, pool_size=max(2, most))
    await outbox.open()
    connections = [await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(most)]
    admin = await psycopg.AsyncConnection.connect(url, autocommit=True)
    cycles = {
        NOTIFIER: notifier_cycle(outbox),
        BARE: bare_cycle(connections, BARE_CLAIM),
        BARE_IDS: bare_cycle(connections, BARE_CLAIM_IDS),
    }
    runs: dict[tuple[int, str], list[Run]] = {(n, c): [] for n in args.claimers for c in cycles}
    meter = CpuMeter({}, databases=(postgres_server.database_name(url),))
    try:
        # Warm-up: every claimer's connection open, statements prepared, caches full.
        for cycle in cycles.values():
            await refill(admin)
            await run_cycle(cycle, most, args.batch, meter)
        names = list(cycles)
        quiet = []
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for claimers in args.claimers:
                for name in names[shift:] + names[:shift]:
                    await refill(admin)
                    if args.quiet:
                        quiet.append(await wait_for_quiet(args.quiet))
                    run = await run_cycle(cycles[name], claimers, args.batch, meter)
                    await check_all_delivered(admin, name, run)
                    runs[claimers, name].append(run)
    finally:
        await outbox.close()
        for conn in [*connections, admin]:
            await conn.close()
    if quiet:
        print(quiet_summary(quiet))
    report(runs, args)
    return 0


def report(runs: dict[tuple[int, str], list[Run]], args: argparse.Namespace) -> None:
    print(
        f"{args.messages} deliveries per run, claims of up to {args.batch}, {args.rounds} rounds;"
        " per delivery: time claiming and recording (per claimer), CPU here and in PostgreSQL"
    )
    print(
        f"{'claimers':>8} {'candidate':24} {'median deliveries/s':>19} {'x bare':>6}"
        f" {'claim µs':>8} {'record µs':>9} {'client CPU µs':>13} {'PostgreSQL µs':>13}"
        f" {'other':>5}"
    )
    verdicts = []
    for claimers in args.claimers:
        ratios = [
            mine.rate / bare.rate
            for mine, bare in zip(runs[claimers, NOTIFIER], runs[claimers, BARE], strict=True)
        ]
        for name in (NOTIFIER, BARE, BARE_IDS):
            done = runs[claimers, name]
            relative = [
                run.rate / bare.rate for run, bare in zip(done, runs[claimers, BARE], strict=True)
            ]

            def per_delivery(values: list[float], done: list[Run] = done) -> float:
                return statistics.median(
                    v / r.deliveries * 1e6 for v, r in zip(values, done, strict=True)
                )

            claim = per_delivery([r.claiming for r in done])
            record = per_delivery([r.recording for r in done])
            cpu = ""
            shares = [r.cpu for r in done if r.cpu is not None]
            if len(shares) == len(done):
                client = per_delivery([share.processes["this process"] for share in shares])
                server = per_delivery([share.postgres for share in shares])
                # Share of the cores busy with anything else: near 0 on a quiet machine.
                other = statistics.median(share.foreign for share in shares)
                cpu = f" {client:13.0f} {server:13.0f} {other:5.0%}"
            print(
                f"{claimers:8} {name:24} {statistics.median(r.rate for r in done):19.0f}"
                f" {statistics.median(relative):6.2f} {claim:8.0f} {record:9.0f}{cpu}"
            )
        ratio = statistics.median(ratios)
        verdict = "met" if ratio >= TARGET else "NOT met"
        verdicts.append(
            f"target: notifier's claim + record >= {TARGET}x the bare loop, {claimers}"
            f" claimer(s): {verdict} ({ratio:.2f}x; rounds {min(ratios):.2f}x to"
            f" {max(ratios):.2f}x)"
        )
    print("\n".join(verdicts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="claim limit (delivery.concurrency)")
    parser.add_argument("--claimers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for a quiet machine",
    )
    args = parser.parse_args()
    with postgres_server.server() as found, postgres_server.fresh_database(found) as url:
        print(postgres_server.describe(found))
        return asyncio.run(drive(url, args))


if __name__ == "__main__":
    sys.exit(main())
