"""Durable store of captured messages: one ``.eml`` file per message plus its envelope.

Layout of the capture directory, for message id ``ID``:

- ``ID.json``: the envelope (``from``, ``to``) and arrival time, written first;
- ``ID.eml``: the exact bytes received, written last, so its presence marks a complete
  message.

Each file is written to a temporary name, fsynced, then renamed into place, and the
directory is fsynced after each rename: a crash or SIGTERM at any point leaves either a
complete message or nothing that :meth:`MessageStore.load` will show. Ids are the arrival
time in nanoseconds, zero-padded, strictly increasing, so sorting ids sorts by arrival,
across restarts too.

The store is shared between the server's event loop thread and test threads; every
method is thread-safe.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from functools import cached_property
from pathlib import Path

from notifier.capture.errors import WaitTimeout
from notifier.errors import UnknownMessage

__all__ = ["CapturedMessage", "MessageStore"]

log = logging.getLogger(__name__)

_ID_DIGITS = 20


@dataclass(frozen=True)
class CapturedMessage:
    """One message as the capture server received it."""

    #: Sortable by arrival; also the file name stem in the capture directory.
    id: str
    #: ``MAIL FROM`` address (empty string for the null sender ``<>``).
    envelope_from: str
    #: ``RCPT TO`` addresses that the server accepted, in order.
    envelope_to: tuple[str, ...]
    #: The exact bytes received after ``DATA``, dot-unstuffed, line ends untouched.
    data: bytes
    #: When the server stored it (UTC).
    received_at: datetime

    @cached_property
    def message(self) -> EmailMessage:
        """The data parsed with the modern ``email`` policy (headers decoded)."""
        return BytesParser(policy=policy.default).parsebytes(self.data)

    @property
    def subject(self) -> str | None:
        """The decoded ``Subject`` header, or None when there is none."""
        value = self.message["Subject"]
        return None if value is None else str(value)

    @property
    def text(self) -> str | None:
        """The plain-text body (the text part of a multipart message), or None."""
        body = self.message.get_body(preferencelist=("plain",))
        return None if body is None else _content_as_text(body)

    @property
    def html(self) -> str | None:
        """The HTML body, or None when the message has no HTML part."""
        body = self.message.get_body(preferencelist=("html",))
        return None if body is None else _content_as_text(body)

    def __getitem__(self, header: str) -> str | None:
        """Shortcut for a decoded header of the message: ``captured["To"]``."""
        value = self.message[header]
        return None if value is None else str(value)


def _content_as_text(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        # Unknown charset or broken transfer encoding: show what there is rather than fail.
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    # Wire line ends (CRLF) are transport detail; text readers expect "\n".
    return text.replace("\r\n", "\n")


class MessageStore:
    """Captured messages in memory, mirrored durably in ``directory``."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._messages: dict[str, CapturedMessage] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Callable[[], None]] = []
        self._last_id_ns = 0
        self.load()

    # -- reading ------------------------------------------------------------------

    def load(self) -> None:
        """(Re)read every complete message from disk; leftovers of interrupted writes go."""
        self.directory.mkdir(parents=True, exist_ok=True)
        loaded: dict[str, CapturedMessage] = {}
        for leftover in self.directory.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        for eml_path in sorted(self.directory.glob("*.eml")):
            message_id = eml_path.stem
            try:
                envelope = json.loads(eml_path.with_suffix(".json").read_text("utf-8"))
                loaded[message_id] = CapturedMessage(
                    id=message_id,
                    envelope_from=envelope["from"],
                    envelope_to=tuple(envelope["to"]),
                    data=eml_path.read_bytes(),
                    received_at=datetime.fromisoformat(envelope["received_at"]),
                )
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("skipping unreadable captured message %s: %s", eml_path, error)
        for sidecar in self.directory.glob("*.json"):
            # An envelope without its .eml is a write that never completed.
            if sidecar.stem not in loaded and not sidecar.with_suffix(".eml").exists():
                sidecar.unlink(missing_ok=True)
        with self._lock:
            self._messages = loaded
            if loaded:
                self._last_id_ns = max(self._last_id_ns, int(max(loaded)))
        self._notify()

    def messages(self) -> list[CapturedMessage]:
        """Every captured message, oldest first."""
        with self._lock:
            return [self._messages[key] for key in sorted(self._messages)]

    def get(self, message_id: str) -> CapturedMessage:
        """The message with this id; raises :class:`UnknownMessage`."""
        with self._lock:
            try:
                return self._messages[message_id]
            except KeyError:
                raise UnknownMessage(f"no captured message has id {message_id!r}") from None

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __iter__(self) -> Iterator[CapturedMessage]:
        return iter(self.messages())

    # -- writing ------------------------------------------------------------------

    def add(
        self, envelope_from: str, envelope_to: list[str] | tuple[str, ...], data: bytes
    ) -> CapturedMessage:
        """Store a message durably, then make it visible; returns it once it is on disk.

        Blocking (it fsyncs): call it from a worker thread when on an event loop.
        """
        with self._lock:
            id_ns = max(time.time_ns(), self._last_id_ns + 1)
            self._last_id_ns = id_ns
        message = CapturedMessage(
            id=f"{id_ns:0{_ID_DIGITS}d}",
            envelope_from=envelope_from,
            envelope_to=tuple(envelope_to),
            data=bytes(data),
            received_at=datetime.fromtimestamp(id_ns / 1e9, tz=UTC),
        )
        envelope = {
            "from": message.envelope_from,
            "to": list(message.envelope_to),
            "received_at": message.received_at.isoformat(),
        }
        base = self.directory / message.id
        _write_atomically(base.with_suffix(".json"), json.dumps(envelope).encode())
        _write_atomically(base.with_suffix(".eml"), message.data)
        with self._lock:
            self._messages[message.id] = message
        self._notify()
        return message

    def delete(self, message_id: str) -> None:
        """Remove one message from memory and disk; raises :class:`UnknownMessage`."""
        with self._lock:
            if self._messages.pop(message_id, None) is None:
                raise UnknownMessage(f"no captured message has id {message_id!r}")
        self._remove_files(message_id)
        self._notify()

    def clear(self) -> None:
        """Remove every message."""
        with self._lock:
            removed = list(self._messages)
            self._messages.clear()
        for message_id in removed:
            self._remove_files(message_id)
        self._notify()

    def _remove_files(self, message_id: str) -> None:
        base = self.directory / message_id
        # The .eml goes first: without it the message no longer exists for load().
        base.with_suffix(".eml").unlink(missing_ok=True)
        base.with_suffix(".json").unlink(missing_ok=True)

    # -- waiting ------------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` (from any thread) after every change; returns an unsubscriber."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self) -> None:
        with self._lock:
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[CapturedMessage]:
        """Block until at least ``count`` messages are stored; returns them, oldest first.

        Raises :class:`WaitTimeout` (a ``TimeoutError``) saying how many arrived.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._changed.wait(remaining):
                    if len(self._messages) >= count:
                        break
                    raise self._timeout(count, timeout)
        return self.messages()

    async def wait_for_async(self, count: int, timeout: float = 5.0) -> list[CapturedMessage]:
        """Like :meth:`wait_for`, without blocking the running event loop."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop already closed
                loop.call_soon_threadsafe(changed.set)

        unsubscribe = self.subscribe(wake)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    if len(self) >= count:
                        return self.messages()
                    await changed.wait()
        except TimeoutError:
            raise self._timeout(count, timeout) from None
        finally:
            unsubscribe()

    def _timeout(self, count: int, timeout: float) -> WaitTimeout:
        arrived = len(self._messages)
        return WaitTimeout(
            f"expected at least {count} captured message(s) within {timeout:g}s, got {arrived}",
            expected=count,
            arrived=arrived,
        )


def _write_atomically(path: Path, payload: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
