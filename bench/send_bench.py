"""``POST /v1/send`` against ``POST /v1/render`` on one notifier server whose outbox is
PostgreSQL, and the same on one whose outbox is SQLite, in one run.

Usage: ``.venv/bin/python bench/send_bench.py [--seconds 2] [--rounds 3] [--connections 16]
[--no-sqlite] [--split] [--quiet SECONDS]``

Each server is a ``notifier serve`` process set up as a default deployment
(``notifier_servers.deployment_settings``): it delivers what it accepts itself, to the
``log`` subscriber, and logs JSON lines to a file. A load generator in this process keeps
``--connections`` keep-alive connections busy with the burger order (``http_bench``'s).
Round after round, each server's two endpoints are measured back to back (which goes
first alternates), the servers taking turns going first. A send's deliveries run during
its own measurement, as in production; the backlog the server reports (``GET /metrics``)
the moment the clock stops shows whether they kept up, and the next measurement starts
only once it is empty. The database is one of the benchmark's own (``postgres_server``),
dropped at the end.

``--split`` adds a third server on PostgreSQL with no subscribers: its sends are stored
and never delivered, which splits a send's cost into storing and delivering.
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

ENDPOINTS = {"render": "/v1/render/burger_receipt", "send": "/v1/send/burger_receipt"}
TARGET = 0.8  # POST /v1/send on PostgreSQL, x POST /v1/render on the same server


@dataclass(frozen=True)
class Measurement:
    rate: float
    #: Deliveries queued or being sent when the clock stopped.
    backlog: int
    #: Seconds until the outbox was empty after that.
    drain: float
    cpu: CpuShare | None


async def measure(
    server: NotifierServer, endpoint: str, seconds: float, connections: int, meter: CpuMeter
) -> Measurement:
    meter.start()
    rate = await http_bench.measure(server.port, ENDPOINTS[endpoint], seconds, connections)
    cpu = meter.stop()
    backlog = await asyncio.to_thread(server.backlog)
    drain = await server.drain()
    return Measurement(rate, backlog, drain, cpu)


async def drive(servers: dict[str, NotifierServer], args: argparse.Namespace) -> int:
    meter = CpuMeter(
        {name: server.pid for name, server in servers.items()}, databases=args.databases
    )
    candidates = [(name, endpoint) for name in servers for endpoint in ENDPOINTS]
    for name, endpoint in candidates:  # warm up: templates, caches, the connection pool
        await http_bench.wait_until_serving(servers[name].port)
        await measure(servers[name], endpoint, 0.5, args.connections, meter)
    results: dict[tuple[str, str], list[Measurement]] = {c: [] for c in candidates}
    names = list(servers)
    quiet = []
    for round_index in range(args.rounds):
        # The two endpoints of a server run back to back, in alternating order, so that a
        # ratio compares measurements a few seconds apart on a machine whose other work
        # comes and goes; the servers take turns going first.
        shift = round_index % len(names)
        endpoints = list(ENDPOINTS)[:: 1 if round_index % 2 == 0 else -1]
        for name in names[shift:] + names[:shift]:
            if args.quiet:
                quiet.append(await wait_for_quiet(args.quiet))
            for endpoint in endpoints:
                results[name, endpoint].append(
                    await measure(servers[name], endpoint, args.seconds, args.connections, meter)
                )
    if quiet:
        print(quiet_summary(quiet))
    report(servers, results, args)
    return 0


def report(
    servers: dict[str, NotifierServer],
    results: dict[tuple[str, str], list[Measurement]],
    args: argparse.Namespace,
) -> None:
    print(
        f"{args.connections} connections, {args.rounds} rounds of {args.seconds:g} s per"
        " candidate; CPU columns are per request"
    )
    print(
        f"{'outbox':10} {'endpoint':7} {'median req/s':>12} {'x render':>8} {'backlog left':>12}"
        f" {'drain s':>7} {'notifier µs':>11} {'PostgreSQL µs':>13} {'load gen µs':>11}"
        f" {'busy':>5} {'other':>5}"
    )
    ratios: dict[str, list[float]] = {}
    for name in servers:
        ratios[name] = [
            send.rate / render.rate
            for send, render in zip(results[name, "send"], results[name, "render"], strict=True)
        ]
        for endpoint in ENDPOINTS:
            runs = results[name, endpoint]
            ratio = statistics.median(ratios[name]) if endpoint == "send" else 1.0
            print(
                f"{name:10} {endpoint:7} {statistics.median(m.rate for m in runs):12.0f}"
                f" {ratio:8.2f} {statistics.median(m.backlog for m in runs):12.0f}"
                f" {statistics.median(m.drain for m in runs):7.2f} {cpu_columns(runs, name)}"
            )
    for name, server in servers.items():
        problems = server.log_problems()
        if problems:
            print(
                f"{name}: {len(problems)} warning(s) or error(s) in its log, first: {problems[0]}"
            )
    pg = ratios["postgresql"]
    verdict = "met" if statistics.median(pg) >= TARGET else "NOT met"
    print(
        f"target: POST /v1/send on PostgreSQL >= {TARGET}x POST /v1/render: {verdict}"
        f" ({statistics.median(pg):.2f}x; rounds {min(pg):.2f}x to {max(pg):.2f}x)"
    )
    if "sqlite" in ratios:
        lite = ratios["sqlite"]
        print(
            f"for comparison, on SQLite: {statistics.median(lite):.2f}x"
            f" (rounds {min(lite):.2f}x to {max(lite):.2f}x)"
        )
    # notifier serves from one process, whose one core is what runs out first here: the
    # ratio of its CPU per request is the throughput ratio a quiet machine tends to, and
    # it moves much less than requests/s when other work shares the cores.
    for name in servers:
        cost = cpu_ratios(results, name)
        if cost:
            print(
                f"notifier CPU per request, render / send, {name}: {statistics.median(cost):.2f}x"
                f" (rounds {min(cost):.2f}x to {max(cost):.2f}x)"
            )


def cpu_ratios(results: dict[tuple[str, str], list[Measurement]], name: str) -> list[float]:
    """Per round: the server's CPU per render over its CPU per send."""
    ratios = []
    for send, render in zip(results[name, "send"], results[name, "render"], strict=True):
        if send.cpu is None or render.cpu is None:
            return []
        send_cost = send.cpu.processes[name] / (send.rate * send.cpu.wall)
        render_cost = render.cpu.processes[name] / (render.rate * render.cpu.wall)
        ratios.append(render_cost / send_cost)
    return ratios


def cpu_columns(runs: list[Measurement], name: str) -> str:
    """Median CPU microseconds per request: the measured server, PostgreSQL (all of the
    server's processes), the load generator; the machine's busy share, and the share
    busy with anything else (near 0 on a quiet machine: a noisy run shows here)."""
    shares = [(m.cpu, m.rate * m.cpu.wall) for m in runs if m.cpu is not None]
    if not shares:
        return ""

    def per_request(seconds: list[float]) -> float:
        return statistics.median(s / n * 1e6 for s, (_, n) in zip(seconds, shares, strict=True))

    notifier = per_request([cpu.processes[name] for cpu, _ in shares])
    pg = per_request([cpu.postgres for cpu, _ in shares])
    load = per_request([cpu.processes["this process"] for cpu, _ in shares])
    busy = statistics.median(cpu.utilisation for cpu, _ in shares)
    other = statistics.median(cpu.foreign for cpu, _ in shares)
    return f"{notifier:11.0f} {pg:13.0f} {load:11.0f} {busy:5.0%} {other:5.0%}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    parser.add_argument(
        "--split", action="store_true", help="also PostgreSQL with no subscribers (store only)"
    )
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
        postgres_server.fresh_database(found) as url,
        tempfile.TemporaryDirectory() as scratch,
        contextlib.ExitStack() as stack,
    ):
        print(postgres_server.describe(found))
        servers = {
            "postgresql": stack.enter_context(
                serving("postgresql", deployment_settings({"url": url}), Path(scratch))
            )
        }
        args.databases = (postgres_server.database_name(url),)
        if args.split:
            # Its own database: it must not see (or claim) the other server's messages.
            store_only_url = stack.enter_context(postgres_server.fresh_database(found))
            args.databases += (postgres_server.database_name(store_only_url),)
            store_only = deployment_settings({"url": store_only_url}, subscribers=[])
            servers["pg, store"] = stack.enter_context(
                serving("store-only", store_only, Path(scratch))
            )
        if not args.no_sqlite:
            sqlite = deployment_settings({"path": str(Path(scratch) / "outbox.sqlite3")})
            servers["sqlite"] = stack.enter_context(serving("sqlite", sqlite, Path(scratch)))
        return asyncio.run(drive(servers, args))


if __name__ == "__main__":
    sys.exit(main())
