"""Start and stop real ``notifier serve`` processes for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

_RUNNING_ON = re.compile(rb"Running on http://(?P<host>[^ :]+):(?P<port>\d+)")
_WORKER_READY = re.compile(rb"worker delivering to")
START_TIMEOUT = 30.0


@dataclass
class ServeProcess:
    """A ``notifier serve`` child process; ``url`` is its base URL."""

    process: subprocess.Popen[bytes]
    url: str
    output: list[bytes] = field(default_factory=list)
    _drainer: threading.Thread | None = None

    @classmethod
    def start(
        cls, settings_file: Path, *extra_args: str, env: dict[str, str] | None = None
    ) -> ServeProcess:
        # --port 0 lets the kernel pick a free port; the server prints the one it bound,
        # so there is no window in which another process could take it.
        command = [sys.executable, "-m", "notifier", "serve", "--settings", str(settings_file)]
        command += ["--host", "127.0.0.1", "--port", "0", *extra_args]
        return cls._launch(command, env, _RUNNING_ON)

    @classmethod
    def start_worker(
        cls, settings_file: Path, *, env: dict[str, str] | None = None
    ) -> ServeProcess:
        """A real ``notifier worker`` process (``url`` is empty: it serves no HTTP)."""
        command = [sys.executable, "-m", "notifier", "worker", "--settings", str(settings_file)]
        return cls._launch(command, env, _WORKER_READY)

    @classmethod
    def _launch(
        cls, command: list[str], env: dict[str, str] | None, ready: re.Pattern[bytes]
    ) -> ServeProcess:
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
        child_env.update(env or {})
        # Unbuffered: readline() on the raw pipe reads no further than the line it returns.
        # A buffered reader could take two lines (a start-up warning and "Running on")
        # in one read, and select() would then wait for data that already arrived.
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env, bufsize=0
        )
        assert process.stderr is not None
        output: list[bytes] = []
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    continue
                line = process.stderr.readline()
                if not line:
                    break
                output.append(line)
                match = ready.search(line)
                if match:
                    url = (
                        f"http://{match['host'].decode()}:{match['port'].decode()}"
                        if "host" in ready.groupindex
                        else ""
                    )
                    served = cls(process=process, url=url, output=output)
                    # Keep reading the log so a chatty server never blocks on a full pipe.
                    served._drainer = threading.Thread(target=served._drain, daemon=True)
                    served._drainer.start()
                    return served
        process.kill()
        process.wait()
        process.stderr.close()
        raise AssertionError(
            f"{' '.join(command[2:4])} did not start:\n" + b"".join(output).decode(errors="replace")
        )

    def _drain(self) -> None:
        assert self.process.stderr is not None
        # Whole chunks, not lines: the raw pipe's readline() costs a system call a byte.
        fd = self.process.stderr.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            self.output.append(chunk)

    def log_text(self) -> str:
        return b"".join(self.output).decode(errors="replace")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash or an OOM kill."""
        self.process.kill()
        self.process.wait()
        self._close_log()

    def terminate(self) -> None:
        """Send SIGTERM and return at once (see :meth:`wait`)."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        code = self.process.wait(timeout=timeout)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._drainer is not None:
            self._drainer.join(timeout=5)
        if self.process.stderr is not None and not self.process.stderr.closed:
            self.process.stderr.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        # Stopped in any case; a non-zero exit is a failure only when nothing else failed
        # first, so that it never hides the error that ended the block.
        code = self.stop()
        if exc_type is None:
            assert code == 0, f"exited with {code}:\n{self.log_text()[-2000:]}"

    def stop(self, timeout: float = 15.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()
        return self.process.returncode


@contextlib.asynccontextmanager
async def healthz_probe(http: httpx.AsyncClient) -> AsyncIterator[list[float]]:
    """Ask ``GET /healthz`` every 20 ms while the block runs: the list it yields fills
    with the seconds each answer took (a stalled event loop shows as a long one)."""
    times: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:
        while not done.is_set():
            started = time.perf_counter()
            assert (await http.get("/healthz")).status_code == 200
            times.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        yield times
    finally:
        done.set()
        await prober
