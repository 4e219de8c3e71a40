"""``POST /v1/send`` throughput of two ``notifier serve`` replicas sharing one PostgreSQL
outbox against one replica alone, with the same total load, in one run.

Usage: ``.venv/bin/python bench/replica_bench.py [--seconds 2] [--rounds 3]
[--connections 16] [--quiet SECONDS]``

Three ``notifier serve`` processes set up as a default deployment
(``notifier_servers.deployment_settings``: each delivers what it accepts, to the ``log``
subscriber): one alone on a database of its own, two sharing another. The load
generator in this process keeps ``--connections`` connections busy: all on the single
replica, or half on each of the pair. ``POST /v1/render`` is measured the same way as a
control that touches no database: what a second process can get out of this machine at
all. Round after round, one replica and two are measured back to back (which goes first
alternates); each send measurement starts with an empty outbox, and the backlog left
when its clock stops is reported.

On a machine with few cores the replicas, PostgreSQL and the load generator share
them, so the ratio is about this machine; the CPU columns (per request) are what carries
over to hosts with cores of their own (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import http_bench  # type: ignore[import-not-found]
import postgres_server  # type: ignore[import-not-found]
from cpu_meter import (  # type: ignore[import-not-found]
    CpuMeter,
    CpuShare,
    quiet_summary,
    wait_for_quiet,
)
from notifier_servers import (  # type: ignore[import-not-found]
    NotifierServer,
    deployment_settings,
    serving,
)

ENDPOINTS = {"send": "/v1/send/burger_receipt", "render": "/v1/render/burger_receipt"}


@dataclass(frozen=True)
class Measurement:
    rate: float
    backlog: int
    drain: float
    cpu: CpuShare | None
    #: The measured replicas' names (their CPU is summed).
    replicas: tuple[str, ...]


async def measure(
    group: list[NotifierServer],
    endpoint: str,
    seconds: float,
    connections: int,
    meter: CpuMeter,
) -> Measurement:
    shares = [connections // len(group)] * len(group)
    shares[0] += connections - sum(shares)
    meter.start()
    rates = await asyncio.gather(
        *(
            http_bench.measure(server.port, ENDPOINTS[endpoint], seconds, share)
            for server, share in zip(group, shares, strict=True)
        )
    )
    cpu = meter.stop()
    # The replicas of a group share one outbox: any of them reports all of it.
    backlog = await asyncio.to_thread(group[0].backlog)
    drain = await group[0].drain()
    return Measurement(sum(rates), backlog, drain, cpu, tuple(s.name for s in group))


async def drive(groups: dict[int, list[NotifierServer]], args: argparse.Namespace) -> int:
    meter = CpuMeter(
        {server.name: server.pid for group in groups.values() for server in group},
        databases=args.databases,
    )
    candidates = [(endpoint, replicas) for endpoint in ENDPOINTS for replicas in groups]
    for group in groups.values():
        for server in group:
            await http_bench.wait_until_serving(server.port)
    for endpoint, replicas in candidates:  # warm up: templates, caches, connection pools
        await measure(groups[replicas], endpoint, 0.5, args.connections, meter)
    results: dict[tuple[str, int], list[Measurement]] = {c: [] for c in candidates}
    endpoints = list(ENDPOINTS)
    quiet = []
    for round_index in range(args.rounds):
        # One replica and two run back to back, in alternating order, so that a ratio
        # compares measurements a few seconds apart on a machine whose other work comes
        # and goes; the endpoints take turns going first.
        sizes = list(groups)[:: 1 if round_index % 2 == 0 else -1]
        shift = round_index % len(endpoints)
        for endpoint in endpoints[shift:] + endpoints[:shift]:
            if args.quiet:
                quiet.append(await wait_for_quiet(args.quiet))
            for replicas in sizes:
                results[endpoint, replicas].append(
                    await measure(groups[replicas], endpoint, args.seconds, args.connections, meter)
                )
    if quiet:
        print(quiet_summary(quiet))
    report(groups, results, args)
    return 0


def report(
    groups: dict[int, list[NotifierServer]],
    results: dict[tuple[str, int], list[Measurement]],
    args: argparse.Namespace,
) -> None:
    print(
        f"{args.connections} connections in all, {args.rounds} rounds of {args.seconds:g} s per"
        " candidate; CPU columns are per request (notifier: the measured replicas together)"
    )
    print(
        f"{'endpoint':8} {'replicas':>8} {'median req/s':>12} {'x one':>6} {'backlog left':>12}"
        f" {'drain s':>7} {'notifier µs':>11} {'PostgreSQL µs':>13} {'load gen µs':>11}"
        f" {'busy':>5} {'other':>5}"
    )
    ratios: dict[str, list[float]] = {}
    per_request: dict[tuple[str, int], tuple[float, float]] = {}
    for endpoint in ENDPOINTS:
        ratios[endpoint] = [
            two.rate / one.rate
            for two, one in zip(results[endpoint, 2], results[endpoint, 1], strict=True)
        ]
        for replicas in groups:
            runs = results[endpoint, replicas]
            ratio = statistics.median(ratios[endpoint]) if replicas == 2 else 1.0
            columns = ""
            measured = [(m.cpu, m.rate * m.cpu.wall, m.replicas) for m in runs if m.cpu]
            if measured:
                notifier = statistics.median(
                    sum(cpu.processes[name] for name in names) / n * 1e6
                    for cpu, n, names in measured
                )
                pg = statistics.median(cpu.postgres / n * 1e6 for cpu, n, _ in measured)
                load = statistics.median(
                    cpu.processes["this process"] / n * 1e6 for cpu, n, _ in measured
                )
                busy = statistics.median(cpu.utilisation for cpu, _, _ in measured)
                # Anything else that ran: near 0 on a quiet machine.
                other = statistics.median(cpu.foreign for cpu, _, _ in measured)
                per_request[endpoint, replicas] = (notifier, pg)
                columns = f" {notifier:11.0f} {pg:13.0f} {load:11.0f} {busy:5.0%} {other:5.0%}"
            print(
                f"{endpoint:8} {replicas:8} {statistics.median(m.rate for m in runs):12.0f}"
                f" {ratio:6.2f} {statistics.median(m.backlog for m in runs):12.0f}"
                f" {statistics.median(m.drain for m in runs):7.2f}{columns}"
            )
    for group in groups.values():
        for server in group:
            problems = server.log_problems()
            if problems:
                print(
                    f"{server.name}: {len(problems)} warning(s) or error(s), first: {problems[0]}"
                )
    for endpoint in ENDPOINTS:
        values = ratios[endpoint]
        print(
            f"two replicas vs one, POST /v1/{endpoint}: {statistics.median(values):.2f}x"
            f" (rounds {min(values):.2f}x to {max(values):.2f}x); no target: reported"
        )
    if ("send", 1) in per_request:
        notifier, pg = per_request["send", 1]
        print(
            f"per send: {notifier:.0f} µs of a replica's CPU, {pg:.0f} µs of PostgreSQL's:"
            f" a replica with a core of its own takes about {1e6 / notifier:.0f} sends/s,"
            f" and PostgreSQL needs about a core per {1e6 / pg:.0f} sends/s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each pair of measurements, wait up to SECONDS for a quiet machine",
    )
    args = parser.parse_args()
    with (
        postgres_server.server() as found,
        postgres_server.fresh_database(found) as alone_url,
        postgres_server.fresh_database(found) as shared_url,
        tempfile.TemporaryDirectory() as scratch,
        contextlib.ExitStack() as stack,
    ):
        print(postgres_server.describe(found))
        args.databases = tuple(map(postgres_server.database_name, (alone_url, shared_url)))

        def start(name: str, url: str) -> NotifierServer:
            settings = deployment_settings({"url": url})
            return stack.enter_context(serving(name, settings, Path(scratch)))

        # Separate databases: a replica sharing the pair's outbox would take part of
        # their deliveries (and their wake-ups) while it is not being measured.
        groups = {
            1: [start("alone", alone_url)],
            2: [start("pair-a", shared_url), start("pair-b", shared_url)],
        }
        return asyncio.run(drive(groups, args))


if __name__ == "__main__":
    sys.exit(main())
