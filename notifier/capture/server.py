"""Run the capture server: SMTP (aiosmtpd) and, optionally, its HTTP inbox (hypercorn).

:class:`CaptureServer` runs on the caller's event loop (the ``notifier capture`` command);
:class:`BackgroundCaptureServer` runs one in a thread with its own loop, like aiosmtpd's
``Controller``, so sync and async tests can use it alike (the ``smtp_capture`` fixture).

Both take sockets that are already bound: binding port 0 and reading the port back is
the only race-free way to get a free port, and aiosmtpd's ``Controller`` cannot do it.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig

from notifier.capture.faults import FaultRules
from notifier.capture.smtp import DEFAULT_MAX_MESSAGE_SIZE, CaptureHandler, make_smtp_protocol
from notifier.capture.store import CapturedMessage, MessageStore
from notifier.capture.web import create_capture_app

__all__ = ["BackgroundCaptureServer", "CaptureServer", "bind_socket"]

log = logging.getLogger(__name__)

#: How long a stopping server lets messages being written reach the disk.
SHUTDOWN_GRACE_SECONDS = 5.0


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 picks a free port: read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Lets a restarted capture server take its port back while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class CaptureServer:
    """An SMTP capture server, and optionally its HTTP inbox, on the running event loop.

    ``starttls_context`` makes the server advertise STARTTLS (``require_starttls`` refuses
    mail before it); ``tls_context`` serves implicit TLS (SMTPS) instead. Without either,
    STARTTLS is not advertised.
    """

    def __init__(
        self,
        store: MessageStore,
        *,
        smtp_socket: socket.socket,
        http_socket: socket.socket | None = None,
        faults: FaultRules | None = None,
        address_faults: bool = True,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        starttls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        tls_context: ssl.SSLContext | None = None,
        hostname: str = "notifier-capture",
    ) -> None:
        if starttls_context is not None and tls_context is not None:
            raise ValueError("choose STARTTLS or implicit TLS, not both")
        if require_starttls and starttls_context is None:
            raise ValueError("require_starttls needs a starttls_context")
        self.store = store
        self.faults = faults if faults is not None else FaultRules()
        self.handler = CaptureHandler(store, self.faults, address_faults=address_faults)
        self.smtp_socket = smtp_socket
        self.http_socket = http_socket
        self._tls_context = tls_context
        self._protocol_factory = make_smtp_protocol(
            self.handler,
            hostname=hostname,
            max_message_size=max_message_size,
            starttls_context=starttls_context,
            require_starttls=require_starttls,
        )
        self._smtp_server: asyncio.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_stop = asyncio.Event()

    @property
    def smtp_address(self) -> tuple[str, int]:
        """The host and port the SMTP server listens on."""
        host, port = self.smtp_socket.getsockname()[:2]
        return host, port

    @property
    def http_url(self) -> str | None:
        """The inbox's base URL, or None when no HTTP socket was given."""
        if self.http_socket is None:
            return None
        host, port = self.http_socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def start(self) -> None:
        """Start listening; returns once both servers accept connections."""
        loop = asyncio.get_running_loop()
        self._smtp_server = await loop.create_server(
            self._protocol_factory, sock=self.smtp_socket, ssl=self._tls_context
        )
        if self.http_socket is not None:
            await self._start_http()

    async def _start_http(self) -> None:
        assert self.http_socket is not None
        app = create_capture_app(self.store, self.faults)
        config = HypercornConfig()
        # hypercorn owns and closes the socket it is given, so hand it a duplicate.
        config.bind = [f"fd://{os.dup(self.http_socket.fileno())}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("notifier.capture.http")
        config.graceful_timeout = 1.0
        started = asyncio.Event()

        @app.before_serving
        async def mark_started() -> None:
            started.set()

        self._http_task = asyncio.create_task(
            serve(app, config, shutdown_trigger=self._http_stop.wait)
        )
        starting = asyncio.ensure_future(started.wait())
        await asyncio.wait({starting, self._http_task}, return_when=asyncio.FIRST_COMPLETED)
        if self._http_task.done():
            starting.cancel()
            self._http_task.result()  # raises why hypercorn could not start
            raise RuntimeError("the HTTP server stopped while starting")
        # hypercorn listens right after startup; a connection now succeeds or queues.

    async def stop(self) -> None:
        """Stop accepting, let messages being stored reach the disk, close every session."""
        if self._smtp_server is not None:
            self._smtp_server.close()
            pending_writes = set(self.handler.pending_writes)
            if pending_writes:
                await asyncio.wait(pending_writes, timeout=SHUTDOWN_GRACE_SECONDS)
            for session in list(self.handler.sessions):
                transport = session.transport
                if isinstance(transport, asyncio.WriteTransport):
                    # abort, not close: closing a STARTTLS session waits for a TLS
                    # shutdown that a loop about to end never finishes, leaking the socket.
                    transport.abort()
                elif transport is not None:
                    transport.close()
            await self._smtp_server.wait_closed()
            self._smtp_server = None
        if self._http_task is not None:
            self._http_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
            self._http_task = None

    async def __aenter__(self) -> CaptureServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class BackgroundCaptureServer:
    """A capture server in a background thread: start it, send mail, look at ``messages``.

    Works from sync and async code alike. ``port=0`` (the default) picks a free port;
    ``http_port`` (None: no HTTP) serves the JSON API and the inbox page too. Other
    keyword arguments go to :class:`CaptureServer`.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int | None = None,
        faults: FaultRules | None = None,
        ready_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        self.store = MessageStore(directory)
        self._bind = (host, port, http_port)
        self._options = options
        self._ready_timeout = ready_timeout
        self._server: CaptureServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        #: Fault rules; change them at any time, the running server sees the change.
        self.faults = faults if faults is not None else FaultRules()

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Bind the sockets, start the thread, return once the server accepts mail."""
        if self._thread is not None:
            raise RuntimeError("the capture server is already running")
        host, port, http_port = self._bind
        smtp_socket = bind_socket(host, port)
        http_socket = bind_socket(host, http_port) if http_port is not None else None
        self._server = CaptureServer(
            self.store,
            smtp_socket=smtp_socket,
            http_socket=http_socket,
            faults=self.faults,
            **self._options,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"smtp-capture-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._started.wait(self._ready_timeout):
            raise TimeoutError(f"capture server did not start within {self._ready_timeout}s")
        if self._error is not None:
            self._thread.join()
            self._close_sockets()
            raise self._error

    def _run(self) -> None:
        with asyncio.Runner() as runner:
            runner.run(self._serve())
        self._close_sockets()

    async def _serve(self) -> None:
        assert self._server is not None
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            await self._server.start()
        except BaseException as error:
            self._error = error
            self._started.set()
            return
        self._started.set()
        await self._stop_requested.wait()
        await self._server.stop()

    def stop(self) -> None:
        """Stop the server and wait for its thread (messages already stored stay on disk)."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop_requested is not None:
            with contextlib.suppress(RuntimeError):  # loop already gone after a failed start
                self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join()
        self._thread = None

    def _close_sockets(self) -> None:
        if self._server is not None:
            self._server.smtp_socket.close()
            if self._server.http_socket is not None:
                self._server.http_socket.close()

    def __enter__(self) -> BackgroundCaptureServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------

    @property
    def _running(self) -> CaptureServer:
        if self._server is None:
            raise RuntimeError("the capture server has not been started")
        return self._server

    @property
    def host(self) -> str:
        """The address to connect to (always the bound one, e.g. ``127.0.0.1``)."""
        return self._running.smtp_address[0]

    @property
    def port(self) -> int:
        """The SMTP port picked at start."""
        return self._running.smtp_address[1]

    @property
    def http_url(self) -> str | None:
        """Base URL of the JSON API and inbox page, when started with ``http_port``."""
        return self._running.http_url

    @property
    def peak_sessions(self) -> int:
        """The most SMTP connections that were open at the same time."""
        return self._running.handler.peak_sessions

    @property
    def messages(self) -> list[CapturedMessage]:
        """Captured messages, oldest first, each with its envelope and parsed ``message``."""
        return self.store.messages()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[CapturedMessage]:
        """Block until ``count`` messages are captured (TimeoutError after ``timeout``)."""
        return self.store.wait_for(count, timeout)

    async def wait_for_async(self, count: int, timeout: float = 5.0) -> list[CapturedMessage]:
        """Await ``count`` captured messages without blocking the test's event loop."""
        return await self.store.wait_for_async(count, timeout)

    def clear(self) -> None:
        """Forget every captured message (fault rules stay)."""
        self.store.clear()
