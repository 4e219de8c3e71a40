"""HTTP throughput of notifier's endpoints against an empty Quart JSON endpoint.

Usage: ``.venv/bin/python bench/http_bench.py [--seconds 3] [--rounds 5] [--connections 16]``

One hypercorn process (one worker, the settings ``notifier serve`` uses) serves the real
notifier app plus ``POST /bench/empty``, a Quart view that reads the JSON body and
returns ``{}``. A load generator in this process keeps ``--connections`` keep-alive
HTTP/1.1 connections busy, one request in flight on each. Endpoints take turns, round
after round, so the machine's slow moments hit all of them; the report gives each one's
median requests/s and its ratio to the empty endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BURGER = (ROOT / "templates" / "burger_receipt.example.json").read_bytes()

ENDPOINTS = {
    "empty Quart JSON POST": "/bench/empty",
    "POST /v1/render/burger_receipt": "/v1/render/burger_receipt",
}
BASELINE = "empty Quart JSON POST"
TARGETS = {"POST /v1/render/burger_receipt": 0.85}


def serve(fd: int, settings_file: str) -> None:
    """Child process: the notifier app plus the empty endpoint, on the inherited socket."""
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config
    from quart import request

    from notifier.app import create_app
    from notifier.settings import load_settings

    app = create_app(load_settings(settings_file))

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

    with tempfile.TemporaryDirectory() as scratch:
        settings_file = Path(scratch) / "settings.yml"
        settings_file.write_text(
            json.dumps(
                {
                    "templates": {"dir": str(ROOT / "templates")},
                    "outbox": {"path": str(Path(scratch) / "outbox.sqlite3")},
                }
            )
        )
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-fd",
                str(listener.fileno()),
                "--settings",
                str(settings_file),
            ],
            pass_fds=[listener.fileno()],
        )
        listener.close()
        try:
            return asyncio.run(drive(port, args))
        finally:
            child.terminate()
            child.wait(timeout=30)


async def drive(port: int, args: argparse.Namespace) -> int:
    await wait_until_serving(port)
    for path in ENDPOINTS.values():  # warm up: compile templates, fill caches
        await measure(port, path, 0.5, args.connections)
    rates: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    ratios: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    names = list(ENDPOINTS)
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        measured = {
            name: await measure(port, ENDPOINTS[name], args.seconds, args.connections)
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
