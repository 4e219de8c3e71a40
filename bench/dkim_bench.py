"""What DKIM signing adds to a message: render + compose of the burger receipt with and
without a signature, in one run.

Usage: ``.venv/bin/python bench/dkim_bench.py [--rounds N] [--requests N]`` (or
``make bench``).

Keys are made with ``openssl genrsa`` (1024 and 2048 bits). Times are CPU time per
message (``time.process_time``), best of a few batches per round, medians over rounds,
so other load on the machine counts less than it would in wall-clock time. dkimpy does
its RSA arithmetic in pure Python; when the ``cryptography`` package is installed the
same RSA-2048 signature made by OpenSSL is shown beside it for scale.

Then ``POST /v1/render`` through the app (Quart's test client, 16 requests at a time,
the default 2 render processes), unsigned and signed, in alternating rounds: what the
hand-off to the render processes leaves of the request rate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim.crypto

from notifier.app import create_app
from notifier.renderer import Renderer
from notifier.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
BATCH = 20


def make_key(directory: Path, bits: int) -> Path:
    path = directory / f"dkim-{bits}.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), str(bits)],  # noqa: S607 (openssl on PATH)
        check=True,
        capture_output=True,
    )
    return path


def renderer(keys: list[dict[str, str]]) -> Renderer:
    settings = Settings.from_mapping(
        {
            "templates": {"dir": str(TEMPLATES)},
            "dkim": {"keys": keys},
            "limits": {"allowed_senders": ["*"]},
        }
    )
    return Renderer.from_settings(settings)


def candidates(directory: Path) -> dict[str, Callable[[], object]]:
    context = json.loads((TEMPLATES / "burger_receipt.example.json").read_text())
    domain = context["from"].rpartition("@")[2]
    unsigned = renderer([])
    found: dict[str, Callable[[], object]] = {
        "render + compose, unsigned": lambda: unsigned.render("burger_receipt", context)
    }
    for bits in (1024, 2048):
        key = str(make_key(directory, bits))
        signing = renderer([{"domain": domain, "selector": "bench", "private_key_file": key}])
        found[f"render + compose + DKIM, RSA-{bits} (dkimpy)"] = lambda signing=signing: (
            signing.render("burger_receipt", context)
        )
    pem = (directory / "dkim-2048.pem").read_bytes()
    parsed = dkim.crypto.parse_pem_private_key(pem)
    digest = hashlib.sha256(b"bench")
    found["RSA-2048 signature alone (dkimpy, pure Python)"] = lambda: (
        dkim.crypto.RSASSA_PKCS1_v1_5_sign(digest, parsed)
    )
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError:
        return found
    openssl_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(openssl_key, rsa.RSAPrivateKey)
    found["RSA-2048 signature alone (OpenSSL, for scale)"] = lambda: openssl_key.sign(
        b"bench", padding.PKCS1v15(), hashes.SHA256()
    )
    return found


def cpu_per_call(function: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(BATCH):
            function()
        best = min(best, (time.process_time() - started) / BATCH)
    return best


async def renders_per_second(
    directory: Path, keys: list[dict[str, str]], requests: int, concurrency: int = 16
) -> float:
    settings = {
        "templates": {"dir": str(TEMPLATES)},
        "outbox": {"path": str(directory / "outbox.sqlite3")},
        "limits": {"allowed_senders": ["*"]},
        "dkim": {"keys": keys},
    }
    context = json.loads((TEMPLATES / "burger_receipt.example.json").read_text())
    app = create_app(settings, subscribers=[], deliver=False)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        for _ in range(concurrency):  # starts the render processes when signing
            await client.post("/v1/render/burger_receipt", json=context)
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                response = await client.post("/v1/render/burger_receipt", json=context)
                assert response.status_code == 200, response.status_code

        started = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(requests)])
        return requests / (time.perf_counter() - started)


def http_rates(directory: Path, rounds: int, requests: int) -> None:
    context = json.loads((TEMPLATES / "burger_receipt.example.json").read_text())
    key = {
        "domain": context["from"].rpartition("@")[2],
        "selector": "bench",
        "private_key_file": str(directory / "dkim-2048.pem"),
    }
    rates: dict[str, list[float]] = {"unsigned": [], "signed, RSA-2048": []}
    ratios = []
    for _ in range(rounds):
        unsigned = asyncio.run(renders_per_second(directory, [], requests))
        signed = asyncio.run(renders_per_second(directory, [key], requests))
        rates["unsigned"].append(unsigned)
        rates["signed, RSA-2048"].append(signed)
        ratios.append(signed / unsigned)
    print(f"POST /v1/render, {requests} requests, 16 at a time, median of {rounds} rounds")
    for name, values in rates.items():
        print(f"  {name:<50} {statistics.median(values):8.0f} /s")
    print(f"  signed / unsigned: {statistics.median(ratios):.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        found = candidates(Path(directory))
        times: dict[str, list[float]] = {name: [] for name in found}
        names = list(found)
        for round_number in range(args.rounds):
            # Rotate the order each round so a slow moment does not hit one candidate.
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(cpu_per_call(found[name]))
        report(times, args.rounds)
        # Render processes start from a fresh interpreter (forkserver), which imports
        # this file again: that is why all of this sits under the __main__ check.
        http_rates(Path(directory), args.rounds, args.requests)
    return 0


def report(times: dict[str, list[float]], rounds: int) -> None:
    names = list(times)
    base = statistics.median(times[names[0]])
    print(f"DKIM signing, CPU time per message, median of {rounds} rounds")
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:<50} {median * 1000:8.2f} ms  {median / base:6.1f}x")


if __name__ == "__main__":
    sys.exit(main())
