"""Resident memory of one ``notifier serve`` process over many sends.

Usage: ``.venv/bin/python bench/memory_bench.py [--sends 100000] [--warmup 10000]
[--connections 16] [--postgres]``

One server set up as a default deployment (``notifier_servers.deployment_settings``:
delivery in the same process to the ``log`` subscriber, JSON logs to a file), on SQLite
or, with ``--postgres``, on a database of the benchmark's own. ``--warmup`` sends fill
the caches, pools and allocator arenas a running service settles into; then the
process's resident set (``VmRSS``, its render processes included if any started) is read
once the outbox is empty, and again after every tenth of ``--sends`` more, each reading
after the deliveries have drained. The target: growth under 10% from the reading after
warm-up to the last one. A steady climb across the readings is a leak even when the last
one is under the target; the report prints them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import postgres_server  # type: ignore[import-not-found]
from delivery_bench import post_all  # type: ignore[import-not-found]
from notifier_servers import (  # type: ignore[import-not-found]
    NotifierServer,
    deployment_settings,
    serving,
)

TARGET_GROWTH = 0.10
PATH = "/v1/send/burger_receipt"
PROC = Path("/proc")


def resident_bytes(pid: int) -> int:
    """``VmRSS`` of ``pid`` and of its children (render processes), in bytes."""
    total = 0
    pids = [pid]
    children = PROC / str(pid) / "task" / str(pid) / "children"
    with contextlib.suppress(OSError):
        pids += [int(child) for child in children.read_text().split()]
    for one in pids:
        with contextlib.suppress(OSError):
            for line in (PROC / str(one) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


async def send_many(port: int, count: int, connections: int) -> float:
    """Send ``count`` burger orders over ``connections`` keep-alive connections; return
    the requests per second."""
    start = time.perf_counter()
    await post_all(port, PATH, count, connections)
    return count / (time.perf_counter() - start)


async def drive(server: NotifierServer, args: argparse.Namespace) -> int:
    rate = await send_many(server.port, args.warmup, args.connections)
    await server.drain()
    baseline = resident_bytes(server.pid)
    print(f"after {args.warmup:,} warm-up sends ({rate:,.0f}/s): {baseline / 2**20:.1f} MiB")
    step = max(1, args.sends // 10)
    sent = 0
    readings = []
    while sent < args.sends:
        batch = min(step, args.sends - sent)
        rate = await send_many(server.port, batch, args.connections)
        await server.drain()
        sent += batch
        rss = resident_bytes(server.pid)
        readings.append(rss)
        growth = rss / baseline - 1
        print(f"after {sent:>9,} more sends ({rate:,.0f}/s): {rss / 2**20:.1f} MiB ({growth:+.1%})")
    problems = server.log_problems()
    if problems:
        print(f"{len(problems)} warning or error lines in the server's log, first:")
        print(problems[0])
        return 1
    growth = readings[-1] / baseline - 1
    met = "met" if growth < TARGET_GROWTH else "NOT met"
    print(f"RSS growth over {args.sends:,} sends: {growth:+.1%} (target < 10%: {met})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL outbox")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        if args.postgres:
            found = stack.enter_context(postgres_server.server())
            print(postgres_server.describe(found))
            outbox = {"url": stack.enter_context(postgres_server.fresh_database(found))}
            name = "postgresql"
        else:
            outbox = {"path": str(Path(scratch) / "outbox.sqlite3")}
            name = "sqlite"
        server = stack.enter_context(serving(name, deployment_settings(outbox), Path(scratch)))
        print(f"notifier serve on {name}, pid {server.pid}")
        return asyncio.run(drive(server, args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
