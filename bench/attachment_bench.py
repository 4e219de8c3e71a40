"""Memory and event-loop cost of a 10 MiB attachment sent through the whole pipeline.

Usage: ``.venv/bin/python bench/attachment_bench.py [--mib 10] [--rounds 3] [--serve]``

One app (SQLite outbox in a temporary folder, no subscribers, so nothing is delivered)
takes ``POST /v1/send/burger_receipt`` as ``multipart/form-data`` with the burger order
as ``context`` and one attachment of random bytes, through Quart's test client: the
multipart reader, the render, :func:`notifier.compose.attach`, the outbox insert. For
each round it reports:

- the peak of Python allocations during the request (``tracemalloc``), absolute and as a
  multiple of the attachment's size; the stored message alone is 1.37 times the size
  (base64 and line ends);
- the longest the event loop went without running a 1 ms heartbeat during the request;
- the wall time of the request, and of ``attach`` alone on the same bytes.

With ``--serve``, also through a real ``notifier serve`` process: the latency of
``GET /healthz``, polled from another connection, while three sends with the attachment
run (httpx's multipart), against the same while thirty JSON sends run.

The test client hands the app the whole body at once, so the request body's own copies
are counted too (a real server streams it in pieces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

from notifier.app import create_app
from notifier.compose import Attachment, attach
from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BOUNDARY = "bench-boundary"


def form_body(context: bytes, content: bytes) -> bytes:
    return b"".join(
        [
            f"--{BOUNDARY}\r\n".encode(),
            b'Content-Disposition: form-data; name="context"\r\n',
            b"Content-Type: application/json\r\n\r\n",
            context,
            f"\r\n--{BOUNDARY}\r\n".encode(),
            b'Content-Disposition: form-data; name="attachment"; filename="invoice.pdf"\r\n',
            b"Content-Type: application/pdf\r\n\r\n",
            content,
            f"\r\n--{BOUNDARY}--\r\n".encode(),
        ]
    )


async def heartbeat(gaps: list[float], stop: asyncio.Event) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def one_round(client: Any, size: int, *, trace: bool) -> dict[str, float]:
    context = (ROOT / "templates" / "burger_receipt.example.json").read_bytes()
    content = os.urandom(size)
    body = form_body(context, content)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    gaps: list[float] = []
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat(gaps, stop))
    await asyncio.sleep(0.01)
    gaps.clear()
    if trace:
        tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    response = await client.post("/v1/send/burger_receipt", data=body, headers=headers)
    elapsed = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - baseline
    tracemalloc.stop()
    stop.set()
    await beating
    assert response.status_code == 202, await response.get_data(as_text=True)
    if trace:
        return {"peak_mib": peak / 2**20, "peak_ratio": peak / size}

    message = (
        b"To: b@example.com\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit"
        b"\r\n\r\nHello\r\n"
    )
    attachment = Attachment("invoice.pdf", "application/pdf", content)
    attach_started = time.perf_counter()
    attach(message, [attachment])
    attach_elapsed = time.perf_counter() - attach_started
    return {
        "loop_gap_ms": max(gaps) * 1000,
        "request_ms": elapsed * 1000,
        "attach_ms": attach_elapsed * 1000,
    }


def serve_rounds(size: int, rounds: int) -> None:
    """Through a real ``notifier serve``: ``/healthz`` latency while 3 sends with a
    ``size`` attachment run, against the same while 30 JSON sends run."""
    sys.path.insert(0, str(ROOT))
    from tests.servers import ServeProcess

    order = (ROOT / "templates" / "burger_receipt.example.json").read_bytes()
    content = os.urandom(size)
    with tempfile.TemporaryDirectory() as folder:
        settings_file = Path(folder) / "settings.yml"
        settings = {
            "templates": {"dir": str(ROOT / "templates")},
            "outbox": {"path": str(Path(folder) / "outbox.sqlite3")},
            "limits": {"allowed_senders": ["*"], "max_attachment_bytes": size},
            "subscribers": [],
        }
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        process = ServeProcess.start(settings_file)
        try:
            with httpx.Client(base_url=process.url, timeout=60) as http:
                for _ in range(rounds):
                    for label in ("json", "attachment"):
                        if label == "json":
                            request = {
                                "content": order,
                                "headers": {"Content-Type": "application/json"},
                            }
                        else:
                            request = {
                                "files": [
                                    ("context", ("order.json", order, "application/json")),
                                    ("attachment", ("a.pdf", content, "application/pdf")),
                                ]
                            }
                        latencies = probe_while(process.url, http, request)
                        print(
                            f"  serve {label:10} /healthz n={len(latencies):3}"
                            f" median {statistics.median(latencies) * 1000:6.1f} ms"
                            f" max {max(latencies) * 1000:6.1f} ms"
                        )
        finally:
            process.stop()


def probe_while(url: str, http: httpx.Client, request: dict[str, Any]) -> list[float]:
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url) as prober:
            while not stop.is_set():
                started = time.perf_counter()
                prober.get("/healthz")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.002)

    thread = threading.Thread(target=probe)
    thread.start()
    # 3 sends with the attachment; 30 JSON sends, which are that much quicker.
    for _ in range(3 if "files" in request else 30):
        response = http.post("/v1/send/burger_receipt", **request)
        assert response.status_code == 202, response.text
    stop.set()
    thread.join()
    return latencies or [0.0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=10.0, help="attachment size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--serve", action="store_true", help="also measure through a real notifier serve"
    )
    arguments = parser.parse_args()
    size = int(arguments.mib * 2**20)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_mapping(
            {
                "templates": {"dir": str(ROOT / "templates")},
                "outbox": {"path": str(Path(folder) / "outbox.sqlite3")},
                "limits": {"allowed_senders": ["*"], "max_attachment_bytes": size},
                "subscribers": [],
            }
        )
        app = create_app(settings)
        async with app.test_app() as test_app:
            client = test_app.test_client()
            # Timed rounds without tracemalloc, which slows every allocation many times.
            timed = [await one_round(client, size, trace=False) for _ in range(arguments.rounds)]
            traced = [await one_round(client, size, trace=True) for _ in range(arguments.rounds)]
    print(f"attachment: {arguments.mib:g} MiB, {arguments.rounds} rounds (median, max)")
    for results in (traced, timed):
        for key in results[0]:
            values = [result[key] for result in results]
            print(f"  {key:12} {statistics.median(values):8.1f} {max(values):8.1f}")
    print(json.dumps({"traced": traced, "timed": timed}))
    if arguments.serve:
        serve_rounds(size, arguments.rounds)


if __name__ == "__main__":
    asyncio.run(main())
