"""The aiosmtpd handler that stores every message and plays the injected faults.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from notifier.capture.faults import Fault, FaultRules, Stage, fault_from_address
from notifier.capture.store import CapturedMessage, MessageStore

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "CaptureHandler", "make_smtp_protocol"]

log = logging.getLogger(__name__)

#: Larger messages get ``552`` and are not stored (aiosmtpd's ``data_size_limit``). 32 MiB:
#: a message with the 10 MiB of attachments notifier accepts by default is 14 MiB in base64.
DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024


class CaptureHandler:
    """aiosmtpd handler: faults first, then durable storage, then ``250``."""

    def __init__(
        self, store: MessageStore, faults: FaultRules, *, address_faults: bool = True
    ) -> None:
        self.store = store
        self.faults = faults
        self.address_faults = address_faults
        #: SMTP sessions currently open (closed on shutdown), and the most seen at once.
        self.sessions: set[SMTP] = set()
        self.peak_sessions = 0
        #: Messages being written to disk; shutdown waits for them.
        self.pending_writes: set[asyncio.Future[CapturedMessage]] = set()

    def _fault_for(self, address: str, stage: Stage) -> Fault | None:
        # Rules first (they count down), then the address's own tag.
        fault = self.faults.take(address, stage)
        if fault is None and self.address_faults:
            tagged = fault_from_address(address)
            if tagged is not None and tagged.stage == stage:
                fault = tagged
        return fault

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Refuse the recipient when a ``fail-NNN`` fault applies, else accept it."""
        fault = self._fault_for(address, "rcpt")
        if fault is not None:
            return fault.reply(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Play a data-stage fault if one applies, else store the message durably."""
        for address in envelope.rcpt_tos:
            fault = self._fault_for(address, "data")
            if fault is None:
                continue
            if fault.kind == "reply":
                return fault.reply(address)
            if fault.kind == "disconnect":
                await _hang_up(server)  # never returns: the session ends here
            await asyncio.sleep(fault.delay)
            break  # one delay per message, however many recipients ask for one
        assert isinstance(envelope.original_content, bytes)
        # fsync blocks; a worker thread keeps the other sessions moving meanwhile.
        write = asyncio.ensure_future(
            asyncio.to_thread(
                self.store.add,
                _reverse_path(envelope.mail_from),
                list(envelope.rcpt_tos),
                envelope.original_content,
            )
        )
        self.pending_writes.add(write)
        write.add_done_callback(self.pending_writes.discard)
        # Shielded: a client hanging up now must not abandon a half-done write.
        stored = await asyncio.shield(write)
        log.info(
            "captured %s from <%s> to %s (%d bytes)",
            stored.id,
            stored.envelope_from,
            ", ".join(f"<{address}>" for address in stored.envelope_to),
            len(stored.data),
        )
        return f"250 2.0.0 OK: queued as {stored.id}"

    async def handle_exception(self, error: Exception) -> str:
        """Answer 451 when storing fails (disk full...): the client keeps and retries it."""
        log.exception("capture session failed", exc_info=error)
        return f"451 4.3.0 Message not stored: {type(error).__name__}"


def _reverse_path(mail_from: str | None) -> str:
    # aiosmtpd keeps the null sender as written ("<>"); store it as the empty address.
    return "" if mail_from in (None, "<>") else mail_from


async def _hang_up(server: SMTP) -> None:
    """Close the connection before the DATA reply, like a relay crashing mid-transaction."""
    assert server.transport is not None
    server.transport.close()
    # connection_lost() cancels the session task that is awaiting here; waiting for that
    # keeps aiosmtpd from writing a reply into the closed transport.
    await asyncio.Event().wait()


def make_smtp_protocol(
    handler: CaptureHandler,
    *,
    hostname: str,
    max_message_size: int,
    starttls_context: ssl.SSLContext | None,
    require_starttls: bool,
) -> Any:
    """A protocol factory for ``loop.create_server``: one aiosmtpd ``SMTP`` per connection."""

    def make_protocol() -> SMTP:
        return _CountingSMTP(
            handler,
            hostname=hostname,
            data_size_limit=max_message_size,
            enable_SMTPUTF8=True,
            # Keep bytes as received: the store must hold exactly what the client sent.
            decode_data=False,
            tls_context=starttls_context,
            require_starttls=require_starttls,
            ident="notifier capture",
        )

    return make_protocol


class _CountingSMTP(SMTP):
    """aiosmtpd's SMTP, keeping the handler's set of open sessions."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first_time = self.transport is None  # STARTTLS calls this again on the same session
        super().connection_made(transport)
        if first_time:
            handler: CaptureHandler = self.event_handler
            handler.sessions.add(self)
            handler.peak_sessions = max(handler.peak_sessions, len(handler.sessions))

    def connection_lost(self, error: Exception | None) -> None:
        handler: CaptureHandler = self.event_handler
        handler.sessions.discard(self)
        super().connection_lost(error)
