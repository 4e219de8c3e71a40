"""Real ``notifier serve`` processes for the benchmarks, set up as a default deployment.

Each one is the ``notifier serve`` command (one worker, delivery in the same process),
with a settings file of the benchmark's making and its JSON log in a file: a terminal
would slow it down and mix its lines into the report. The kernel picks the port; the
server's own "Running on" line says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["NotifierServer", "child_environment", "deployment_settings", "serving"]

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
DRAIN_TIMEOUT = 120.0
_RUNNING_ON = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")
_PROBLEM_LEVELS = ('"level": "warning"', '"level": "error"', '"level": "critical"')
_BACKLOG = re.compile(r"^notifier_outbox_backlog (\S+)$", re.MULTILINE)


def child_environment() -> dict[str, str]:
    """This process's environment without ``NOTIFIER_*`` variables, for notifier processes.

    notifier reads every ``NOTIFIER_<SECTION>__<KEY>`` as a settings override and refuses
    unknown ones, so ``NOTIFIER_BENCH_POSTGRES_URL`` would stop it at start ("unknown key
    'bench_postgres_url'"), and a developer's own overrides would change what is measured.
    """
    return {key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")}


def deployment_settings(outbox: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """Settings of a default deployment around ``outbox``: deliveries in the serving
    process (``delivery.in_serve``), to the ``log`` subscriber, JSON logs at INFO."""
    return {
        "templates": {"dir": str(ROOT / "templates")},
        "outbox": outbox,
        # A load test is one caller sending as fast as it can: no rate limit, and the
        # example templates' sender allowed.
        "limits": {"rate_per_minute": 0, "allowed_senders": ["*"]},
        "subscribers": ["log"],
        "log": {"format": "json", "level": "INFO"},
        "delivery": {"in_serve": True},
        **overrides,
    }


class NotifierServer:
    """One running ``notifier serve`` process (see :func:`serving`)."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.name = name
        self.process = process
        self.log = log
        self.port = port
        # Start-up lines (the open-API warning of a server without tokens) are expected.
        self._served_from = log.stat().st_size

    @property
    def pid(self) -> int:
        return self.process.pid

    def backlog(self) -> int:
        """Deliveries queued or being sent, from ``GET /metrics``
        (``notifier_outbox_backlog``, which the server counts in the outbox then)."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            found = _BACKLOG.search(response.read().decode())
        if found is None:
            raise RuntimeError(f"{self.name}: no notifier_outbox_backlog in /metrics")
        return int(float(found[1]))

    async def drain(self) -> float:
        """Wait until the outbox holds no delivery queued or being sent; return the seconds
        that took (the polls count, so a few tens of milliseconds are not delivery)."""
        start = time.perf_counter()
        deadline = start + DRAIN_TIMEOUT
        while await asyncio.to_thread(self.backlog):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.name}: deliveries still queued after {DRAIN_TIMEOUT} s")
            await asyncio.sleep(0.02)
        return time.perf_counter() - start

    def log_problems(self) -> list[str]:
        """Log lines at WARNING or above since start-up (none is expected in a benchmark)."""
        problems = []
        with self.log.open("rb") as lines:
            lines.seek(self._served_from)
            for raw in lines:
                # A substring test, not json.loads: the log holds a line per request and
                # per delivery. Anything that is not a JSON line is a traceback or worse.
                line = raw.decode(errors="replace").rstrip()
                if not line.startswith("{") or any(level in line for level in _PROBLEM_LEVELS):
                    problems.append(line)
        return problems


@contextlib.contextmanager
def serving(name: str, settings: dict[str, Any], scratch: Path) -> Iterator[NotifierServer]:
    """Run ``notifier serve`` with ``settings`` (files go in ``scratch``); yield it once it
    serves, stop it (SIGTERM, as an orchestrator would) when the block ends."""
    settings_file = scratch / f"{name}.settings.json"
    settings_file.write_text(json.dumps(settings))
    log = scratch / f"{name}.log"
    command = [sys.executable, "-m", "notifier", "serve", "--settings", str(settings_file)]
    command += ["--host", "127.0.0.1", "--port", "0"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=child_environment(),
            cwd=scratch,
        )
    try:
        server = NotifierServer(name, process, log, _wait_for_port(process, log))
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_port(process: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = _RUNNING_ON.search(log.read_text(encoding="utf-8", errors="replace"))
        if found is not None:
            return int(found[1])
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"notifier serve did not start:\n{log.read_text(errors='replace')[-3000:]}")
