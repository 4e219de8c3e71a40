"""What DKIM signing adds to a message: render + compose of the burger receipt with and
without a signature, in one run.

Usage: ``.venv/bin/python bench/dkim_bench.py [--rounds N]`` (or ``make bench``).

Keys are made with ``openssl genrsa`` (1024 and 2048 bits). Times are CPU time per
message (``time.process_time``), best of a few batches per round, medians over rounds,
so other load on the machine counts less than it would in wall-clock time. dkimpy does
its RSA arithmetic in pure Python; when the ``cryptography`` package is installed the
same RSA-2048 signature made by OpenSSL is shown beside it for scale.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
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
    base = statistics.median(times[names[0]])
    print(f"DKIM signing, CPU time per message, median of {args.rounds} rounds")
    for name in names:
        median = statistics.median(times[name])
        print(f"  {name:<50} {median * 1000:8.2f} ms  {median / base:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
