"""pytest plugin (entry point ``pytest11``): the ``smtp_capture`` fixtures.

``smtp_capture`` is a :class:`~notifier.capture.BackgroundCaptureServer` on a free
loopback port, fresh for each test::

    def test_receipt_is_sent(smtp_capture):
        send_receipt(host=smtp_capture.host, port=smtp_capture.port)
        (message,) = smtp_capture.wait_for(1, timeout=5)
        assert message.envelope_to == ("bob@example.com",)
        assert message.subject == "Your Burger order"

``smtp_capture_factory(**options)`` starts more, or differently configured, servers
(STARTTLS context, size limit, HTTP inbox...); all stop when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from notifier.capture.server import BackgroundCaptureServer

__all__ = ["smtp_capture", "smtp_capture_factory"]

CaptureFactory = Callable[..., BackgroundCaptureServer]


@pytest.fixture
def smtp_capture_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaptureFactory]:
    """Start capture servers with custom options; each gets its own directory."""
    started: list[BackgroundCaptureServer] = []

    def start(**options: Any) -> BackgroundCaptureServer:
        directory = options.pop("directory", None) or tmp_path_factory.mktemp("smtp_capture")
        server = BackgroundCaptureServer(directory, **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def smtp_capture(smtp_capture_factory: CaptureFactory) -> BackgroundCaptureServer:
    """A capture server on 127.0.0.1 and a free port, stopped after the test."""
    return smtp_capture_factory()
