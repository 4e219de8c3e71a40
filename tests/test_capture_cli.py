"""``notifier capture`` as a real process: ports, API, faults, SIGTERM and restart."""

from __future__ import annotations

import re
import selectors
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from notifier.capture import MessageStore
from tests.capture_helpers import burger_receipt

pytestmark = pytest.mark.slow

STARTED = re.compile(
    r"SMTP on (?P<smtp_host>[\d.]+):(?P<smtp_port>\d+), inbox on (?P<url>http://\S+)/, "
    r".*\((?P<kept>\d+) message\(s\) kept\)"
)


@dataclass
class CaptureProcess:
    process: subprocess.Popen[str]
    smtp_host: str
    smtp_port: int
    url: str
    kept: int

    def stop(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


@contextmanager
def capture_process(directory: Path, *extra: str, timeout: float = 20) -> Iterator[CaptureProcess]:
    log = (directory.parent / f"{directory.name}-stderr.log").open("w")
    process = subprocess.Popen(
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
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError(f"notifier capture did not start within {timeout}s")
        line = process.stdout.readline()
        match = STARTED.search(line)
        assert match, f"unexpected start-up line: {line!r}"
        yield CaptureProcess(
            process,
            match["smtp_host"],
            int(match["smtp_port"]),
            match["url"],
            int(match["kept"]),
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        log.close()


def test_capture_command_serves_smtp_and_the_api_and_keeps_mail_across_restarts(tmp_path):
    directory = tmp_path / "capture"
    with capture_process(directory, "--fault", "*@flaky.test=fail-451*1") as capture:
        assert capture.smtp_host == "127.0.0.1"
        with smtplib.SMTP(capture.smtp_host, capture.smtp_port, timeout=10) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@example.com", ["bob@flaky.test"], burger_receipt())
            client.sendmail("a@example.com", ["bob@flaky.test"], burger_receipt())
        listed = httpx.get(f"{capture.url}/api/wait", params={"count": 1}, timeout=30).json()
        assert [message["subject"] for message in listed["messages"]] == ["Your Burger order"]
        assert capture.stop() == 0

    with capture_process(directory) as restarted:
        assert restarted.kept == 1
        (summary,) = httpx.get(f"{restarted.url}/api/messages", timeout=10).json()["messages"]
        raw = httpx.get(f"{restarted.url}/api/messages/{summary['id']}/raw", timeout=10)
        assert raw.content == burger_receipt()
        assert restarted.stop() == 0


def test_sigterm_loses_no_acknowledged_message(tmp_path):
    directory = tmp_path / "capture"
    acknowledged: dict[str, bytes] = {}
    enough_sent = threading.Event()

    with capture_process(directory) as capture:

        def keep_sending() -> None:
            try:
                with smtplib.SMTP(capture.smtp_host, capture.smtp_port, timeout=10) as client:
                    client.ehlo()
                    for number in range(10_000):
                        data = burger_receipt(subject=f"Order {number}")
                        client.mail("a@example.com")
                        client.rcpt("bob@example.com")
                        code, reply = client.data(data)
                        assert code == 250
                        acknowledged[reply.decode().rsplit(" ", 1)[-1]] = data
                        if len(acknowledged) >= 20:
                            enough_sent.set()
            except (smtplib.SMTPException, OSError):
                pass  # the server went away mid-stream: exactly what this test does
            finally:
                enough_sent.set()

        sender = threading.Thread(target=keep_sending)
        sender.start()
        try:
            assert enough_sent.wait(30)
            assert capture.stop() == 0
        finally:
            sender.join(30)

    stored = {message.id: message.data for message in MessageStore(directory).messages()}
    assert len(acknowledged) >= 20
    for message_id, data in acknowledged.items():
        assert stored.get(message_id) == data
    assert not list(directory.glob(".*.tmp"))


def test_bad_fault_option_exits_2_with_a_message(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "notifier.capture",
            "--smtp-port",
            "0",
            "--http-port",
            "0",
            "--dir",
            str(tmp_path),
            "--fault",
            "*@x=explode",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown fault action" in result.stderr


def test_port_in_use_exits_1_with_a_message(tmp_path):
    with capture_process(tmp_path / "first") as first:
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "notifier.capture",
                "--smtp-port",
                str(first.smtp_port),
                "--http-port",
                "0",
                "--dir",
                str(tmp_path / "second"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert "in use" in result.stderr
        assert time.monotonic() - started < 30
        assert first.stop() == 0
