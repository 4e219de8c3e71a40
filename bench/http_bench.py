"""HTTP throughput of notifier's endpoints against an empty Quart JSON endpoint.

Usage: ``.venv/bin/python bench/http_bench.py [--seconds 3] [--rounds 5] [--connections 16]``

Two hypercorn processes with the same settings (one worker, as ``notifier serve`` runs):
one serves a plain Quart app whose only view, ``POST /bench/empty``, reads the JSON body
and returns ``{}`` (the baseline), the other the real notifier app. A load generator in
this process keeps ``--connections`` keep-alive HTTP/1.1 connections busy, one request in
flight on each. The two take turns, round after round, so the machine's slow moments hit
both; the report gives each one's median requests/s and its ratio to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from notifier_servers import child_environment  # type: ignore[import-not-found]

ROOT = Path(__file__).resolve().parent.parent
BURGER = (ROOT / "templates" / "burger_receipt.example.json").read_bytes()

BASELINE = "empty Quart JSON POST"
RENDER = "POST /v1/render/burger_receipt"
ENDPOINTS = {BASELINE: "/bench/empty", RENDER: "/v1/render/burger_receipt"}
TARGETS = {RENDER: 0.85}


def serve(fd: int, settings_file: str | None) -> None:
    """Child process: hypercorn on the inherited socket, with the notifier app (and the
    empty endpoint added to it) or, with no settings, a plain Quart app holding only the
    empty endpoint: the baseline, without notifier's per-request work."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from quart import Quart, request

    from notifier.app import create_app
    from notifier.settings import load_settings

    app = create_app(load_settings(settings_file)) if settings_file else Quart("baseline")

    @app.post("/bench/empty")
    async def empty() -> dict[str, object]:
        await request.get_json()
        return {}

    config = Config()
    config.bind = [f"fd://{fd}"]
    config.accesslog = None
    config.errorlog = None
    asyncio.run(hypercorn_serve(app, config))  # type: ignore[arg-type]


async def one_connection(port: int, request: bytes, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            if status not in (b"200", b"202"):
                raise RuntimeError(f"unexpected status {status!r}: {head!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done += 1
    finally:
        writer.close()
        counts.append(done)


async def measure(port: int, path: str, seconds: float, connections: int) -> float:
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BURGER)}\r\n\r\n"
    ).encode() + BURGER
    counts: list[int] = []
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(one_connection(port, request, deadline, counts) for _ in range(connections))
    )
    return sum(counts) / (time.perf_counter() - start)


@contextlib.contextmanager
def bench_server(settings: dict[str, object] | None) -> Iterator[int]:
    """Run the notifier app (or, with None, the plain Quart baseline) in a child
    process; yield its port."""
    if settings is None:
        with _child(None) as port:
            yield port
        return
    with tempfile.TemporaryDirectory() as scratch:
        settings_file = Path(scratch) / "settings.yml"
        settings = {
            "outbox": {"path": str(Path(scratch) / "outbox.sqlite3")},
            # A load test is one caller sending as fast as it can: no rate limit, and the
            # example templates' sender allowed.
            "limits": {"rate_per_minute": 0, "allowed_senders": ["*"]},
            **settings,
        }
        settings_file.write_text(json.dumps(settings))
        with _child(settings_file) as port:
            yield port


@contextlib.contextmanager
def _child(settings_file: Path | None) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    command = [sys.executable, str(Path(__file__).resolve()), "--serve-fd", str(listener.fileno())]
    if settings_file is not None:
        command += ["--settings", str(settings_file)]
    # Without NOTIFIER_* variables: the child reads them as settings overrides.
    child = subprocess.Popen(command, pass_fds=[listener.fileno()], env=child_environment())
    listener.close()
    try:
        yield port
    finally:
        child.terminate()
        child.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fd is not None:
        serve(args.serve_fd, args.settings)
        return 0
    # Render only: no subscribers, so nothing is delivered while measuring.
    settings = {"templates": {"dir": str(ROOT / "templates")}, "subscribers": []}
    with bench_server(None) as baseline_port, bench_server(settings) as port:
        return asyncio.run(drive({BASELINE: baseline_port, RENDER: port}, args))


async def drive(ports: dict[str, int], args: argparse.Namespace) -> int:
    for name, path in ENDPOINTS.items():  # warm up: compile templates, fill caches
        await wait_until_serving(ports[name])
        await measure(ports[name], path, 0.5, args.connections)
    rates: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    ratios: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    names = list(ENDPOINTS)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        measured = {
            name: await measure(ports[name], ENDPOINTS[name], args.seconds, args.connections)
            for name in order
        }
        for name in names:
            rates[name].append(measured[name])
            ratios[name].append(measured[name] / measured[BASELINE])
    print(f"{'endpoint':34} {'median req/s':>13} {'x empty':>8}")
    for name in names:
        print(
            f"{name:34} {statistics.median(rates[name]):13.0f} "
            f"{statistics.median(ratios[name]):8.2f}"
        )
    for name, target in TARGETS.items():
        ratio = statistics.median(ratios[name])
        verdict = "met" if ratio >= target else "NOT met"
        print(f"target: {name} >= {target}x empty endpoint: {verdict} ({ratio:.2f}x)")
    return 0


async def wait_until_serving(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
