"""The ``smtp`` subscriber: deliver each message to the relay in settings.

Connections are pooled (``smtp.pool_size``) and reused across messages; one that failed
mid-transaction is dropped, and one that sat idle is checked with NOOP before reuse.
``smtp.timeout`` bounds the whole delivery of a message once a pool slot is free
(checking or opening the connection, TLS, login, MAIL, RCPT, DATA), not each socket
operation alone; waiting for a slot counts only against ``delivery.subscriber_timeout``.

Outcomes: every recipient accepted -> delivered; 5xx for the message or for every
recipient -> :class:`PermanentFailure`; some recipients refused ->
:class:`PartialDelivery` (4xx refusals are retried for those recipients only); anything
else (4xx, connection refused or dropped, timeout, TLS failure) -> transient.

Whether the relay answered is reported to ``on_relay_state`` (the ``notifier_relay_up``
metric): up when a connection is made or a transaction completes, down when connecting
fails.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiosmtplib

from notifier.errors import PartialDelivery, PermanentFailure, TransientFailure
from notifier.settings import SmtpSettings
from notifier.signals import OutboundMessage

__all__ = ["SmtpSubscriber", "relay_address"]

#: A pooled connection idle for longer than this is checked with NOOP before reuse
#: (relays close idle connections, and a send on a dead one would count as a failure).
IDLE_CHECK_SECONDS = 5.0


def relay_address(settings: SmtpSettings) -> str:
    """The relay as ``host:port`` (``[v6]:port``), as logs and metrics name it."""
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.port}"


class SmtpSubscriber:
    """Sends messages over a small pool of aiosmtplib connections.

    ``on_relay_state`` is called with True when the relay answers and False when it
    cannot be reached.
    """

    def __init__(
        self,
        settings: SmtpSettings,
        *,
        on_relay_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_relay_state = on_relay_state
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []
        self._slots: asyncio.Semaphore | None = None
        self._tls_context: ssl.SSLContext | None = None

    async def __call__(
        self, sender: Any, *, message: OutboundMessage, **kwargs: Any
    ) -> dict[str, Any]:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._settings.pool_size)
        # The slot first: waiting for a pooled connection is not the relay being slow and
        # must not use up the delivery's deadline (delivery.subscriber_timeout bounds it).
        try:
            async with self._slots, asyncio.timeout(self._settings.timeout):
                return await self._deliver(message)
        except TimeoutError:
            raise TransientFailure(
                f"delivery did not finish within smtp.timeout ({self._settings.timeout:g} s)"
            ) from None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client, _ in idle:
            try:
                async with asyncio.timeout(2):
                    await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()

    async def _deliver(self, message: OutboundMessage) -> dict[str, Any]:
        client = await self._checkout()
        try:
            refused, reply = await client.sendmail(message.sender, message.recipients, message.data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            self._checkin(client)  # the relay refused recipients; the session is fine
            refusals = {e.recipient: (e.code, e.message) for e in exc.recipients}
            if all(500 <= code < 600 for code, _ in refusals.values()):
                codes = sorted(code for code, _ in refusals.values())
                raise PermanentFailure(
                    f"the relay refused every recipient: {_describe(refusals)}",
                    smtp_code=codes[-1],
                ) from None
            raise PartialDelivery(
                f"the relay refused every recipient: {_describe(refusals)}",
                accepted=[],
                refused=refusals,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            text = f"{exc.code} {exc.message}"
            if 500 <= exc.code < 600:
                raise PermanentFailure(
                    f"the relay refused the message: {text}", smtp_code=exc.code
                ) from None
            raise TransientFailure(
                f"the relay deferred the message: {text}", smtp_code=exc.code
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise TransientFailure(f"SMTP delivery failed: {_exception_text(exc)}") from None
        except BaseException:
            client.close()  # cancelled (timeout) mid-transaction: the session is unusable
            raise
        self._checkin(client)
        self._report_relay(up=True)
        if refused:
            refusals = {
                rcpt: (response.code, response.message) for rcpt, response in refused.items()
            }
            accepted = [rcpt for rcpt in message.recipients if rcpt not in refused]
            raise PartialDelivery(
                f"the relay accepted {len(accepted)} recipient(s) and refused"
                f" {_describe(refusals)}",
                accepted=accepted,
                refused=refusals,
            )
        return {"reply": reply}

    async def _checkout(self) -> aiosmtplib.SMTP:
        while self._idle:
            client, idle_since = self._idle.pop()
            if not client.is_connected:
                continue
            if time.monotonic() - idle_since < IDLE_CHECK_SECONDS:
                return client
            try:
                await client.noop()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
                continue
            return client
        return await self._connect()

    def _checkin(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected:
            self._idle.append((client, time.monotonic()))

    async def _connect(self) -> aiosmtplib.SMTP:
        settings = self._settings
        client = aiosmtplib.SMTP(
            hostname=settings.host,
            port=settings.port,
            use_tls=settings.tls == "tls",
            # True: STARTTLS is required and aiosmtplib refuses to go on without it;
            # False (not None) for "none", which would try STARTTLS when offered.
            start_tls=settings.tls == "starttls",
            validate_certs=settings.verify,
            tls_context=self._context() if settings.tls != "none" else None,
            username=settings.username,
            password=settings.password.get_secret_value() if settings.password else None,
            timeout=settings.timeout,
        )
        try:
            await self._open(client)
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise TransientFailure(
                f"SMTP connection failed: {exc.code} {exc.message}", smtp_code=exc.code
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise TransientFailure(f"SMTP connection failed: {_exception_text(exc)}") from None
        except BaseException:
            client.close()
            raise
        return client

    async def _open(self, client: aiosmtplib.SMTP) -> None:
        """Connect ``client``, reporting whether the relay answered."""
        try:
            await client.connect()
        except (aiosmtplib.SMTPConnectError, OSError):
            # Refused, unreachable, timed out, dropped, or no 220 greeting: down. A
            # refusal after the greeting (EHLO, STARTTLS, login) is reported neither
            # way: the relay answers, but it does not serve us either.
            self._report_relay(up=False)
            raise
        self._report_relay(up=True)

    def _report_relay(self, *, up: bool) -> None:
        if self._on_relay_state is not None:
            self._on_relay_state(up)

    def _context(self) -> ssl.SSLContext:
        if self._tls_context is None:
            context = ssl.create_default_context()
            if self._settings.ca_file is not None:
                # In addition to the system's CAs: create_default_context(cafile=...)
                # would use this bundle alone.
                context.load_verify_locations(cafile=str(self._settings.ca_file))
            if not self._settings.verify:
                # Only when the operator set smtp.verify: false explicitly.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_context = context
        return self._tls_context


def _describe(refusals: dict[str, tuple[int, str]]) -> str:
    return "; ".join(f"{rcpt}: {code} {text}" for rcpt, (code, text) in refusals.items())


def _exception_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
