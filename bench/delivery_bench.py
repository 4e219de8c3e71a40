"""Delivery speed: notifier end to end against a plain aiosmtplib script, and
``POST /v1/send`` against ``POST /v1/render``.

Usage: ``.venv/bin/python bench/delivery_bench.py [--messages 2000] [--pool 4]``

A capture server (``notifier capture``) runs in its own process and receives everything.

1. Baseline: a script sends pre-built burger receipts over a pool of ``--pool``
   aiosmtplib connections, as fast as the capture server takes them.
2. notifier end to end: a ``notifier`` server process (smtp subscriber only, the same
   pool size) gets the same number of ``POST /v1/send`` requests from 16 connections;
   the clock stops when the capture server holds every message.
3. Throughput of ``POST /v1/send`` and ``POST /v1/render`` on that server, in turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiosmtplib
import http_bench  # type: ignore[import-not-found]

from notifier.renderer import Renderer
from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
TARGET_END_TO_END = 0.7
TARGET_SEND_VS_RENDER = 0.8


class Capture:
    """A ``notifier capture`` process on free ports."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "notifier.capture",
                "--smtp-port",
                "0",
                "--http-port",
                "0",
                "--dir",
                str(directory),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        found = re.search(r"SMTP on [\d.]+:(\d+), inbox on (http://\S+?)/?,", line)
        if found is None:
            self.process.kill()
            raise RuntimeError(f"capture server did not start: {line!r}")
        self.smtp_port = int(found[1])
        self.http = found[2].rstrip("/")

    def wait_for(self, count: int, timeout: float = 300) -> None:
        """Long-poll the capture API (at most 60 s a call) until it holds ``count``."""
        deadline = time.monotonic() + timeout
        url = f"{self.http}/api/wait?count={count}&timeout=30"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=40) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as error:
                if error.code != 408 or time.monotonic() > deadline:
                    raise

    def clear(self) -> None:
        request = urllib.request.Request(f"{self.http}/api/messages", method="DELETE")
        with urllib.request.urlopen(request, timeout=30):
            pass

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def plain_script(port: int, messages: list[bytes], pool: int) -> float:
    """Messages per second for a pool of aiosmtplib connections sending pre-built mail."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for data in messages:
        queue.put_nowait(data)

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        while not queue.empty():
            data = queue.get_nowait()
            await client.sendmail("shopping@example-shop.com", ["bob@example.com"], data)
        await client.quit()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(pool)))
    return len(messages) / (time.perf_counter() - start)


async def post_all(port: int, path: str, count: int, connections: int) -> None:
    body = json.dumps(CONTEXT).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    remaining = [count]

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while remaining[0] > 0:
            remaining[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"202":
                raise RuntimeError(f"unexpected answer {head!r}")
            length = int(re.search(rb"(?i)content-length: (\d+)", head)[1])  # type: ignore[index]
            await reader.readexactly(length)
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    settings = Settings.from_mapping(
        {"templates": {"dir": str(ROOT / "templates")}, "limits": {"allowed_senders": ["*"]}}
    )
    renderer = Renderer.from_settings(settings)
    prebuilt = [renderer.render("burger_receipt", CONTEXT).data for _ in range(args.messages)]

    with tempfile.TemporaryDirectory() as scratch:
        capture = Capture(Path(scratch) / "capture")
        try:
            script_rates, notifier_rates = [], []
            server_settings = {
                "templates": {"dir": str(ROOT / "templates")},
                "smtp": {"host": "127.0.0.1", "port": capture.smtp_port, "pool_size": args.pool},
                "subscribers": ["smtp"],
            }
            with http_bench.bench_server(server_settings) as port:
                asyncio.run(http_bench.wait_until_serving(port))
                for _ in range(args.rounds):
                    capture.clear()
                    script_rates.append(
                        asyncio.run(plain_script(capture.smtp_port, prebuilt, args.pool))
                    )
                    capture.wait_for(args.messages)
                    capture.clear()
                    start = time.perf_counter()
                    asyncio.run(post_all(port, "/v1/send/burger_receipt", args.messages, 16))
                    capture.wait_for(args.messages)
                    notifier_rates.append(args.messages / (time.perf_counter() - start))
                send_rates, render_rates = [], []
                for _ in range(args.rounds):
                    # Each measurement starts with no delivery backlog; a send's own
                    # delivery work happens during its measurement, as in real use.
                    capture.clear()
                    render_rates.append(
                        asyncio.run(
                            http_bench.measure(port, "/v1/render/burger_receipt", args.seconds, 16)
                        )
                    )
                    rate = asyncio.run(
                        http_bench.measure(port, "/v1/send/burger_receipt", args.seconds, 16)
                    )
                    send_rates.append(rate)
                    capture.wait_for(int(rate * args.seconds * 0.99))
        finally:
            capture.stop()

    script, end_to_end = statistics.median(script_rates), statistics.median(notifier_rates)
    send, render = statistics.median(send_rates), statistics.median(render_rates)
    ratio_delivery = statistics.median(
        n / s for n, s in zip(notifier_rates, script_rates, strict=True)
    )
    ratio_send = statistics.median(s / r for s, r in zip(send_rates, render_rates, strict=True))
    print(f"plain aiosmtplib script, pool of {args.pool}: {script:8.0f} messages/s")
    print(
        f"notifier POST -> delivered, pool of {args.pool}:  {end_to_end:8.0f} messages/s"
        f"  ({ratio_delivery:.2f}x)"
    )
    print(f"POST /v1/render:                        {render:8.0f} requests/s")
    print(f"POST /v1/send:                          {send:8.0f} requests/s  ({ratio_send:.2f}x)")
    for label, ratio, target in (
        ("end-to-end delivery vs plain script", ratio_delivery, TARGET_END_TO_END),
        ("POST /v1/send vs POST /v1/render", ratio_send, TARGET_SEND_VS_RENDER),
    ):
        verdict = "met" if ratio >= target else "NOT met"
        print(f"target: {label} >= {target}x: {verdict} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
