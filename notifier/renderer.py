"""Render + compose: a template name and a JSON context in, a composed message out.

:meth:`Renderer.render_async` is what requests use. A render starts on the event loop,
where almost every render finishes in well under a millisecond; one still running after
:data:`LOOP_SLICE_SECONDS` stops and runs again in a render thread with the whole of
``limits.render_timeout``, so a slow template or a large context never stalls the loop
(and with it ``/healthz`` and every other request). Compose follows the same rule by
size: a message whose header block or body is large enough that the email package could
take more than a few milliseconds over it is composed in a render thread.

Running every render in a thread would be simpler, but a thread hand-off costs 50 to
250 µs per request (measured), several times the render itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parseaddr
from typing import Any, TypeVar

from notifier.compose import (
    MAX_HEADER_BLOCK_BYTES,
    MAX_HEADER_BYTES,
    ComposedMessage,
    compose_message,
)
from notifier.errors import ComposeError, RenderCapacityExhausted
from notifier.sandbox import RenderBudget, SliceExhausted
from notifier.settings import Settings
from notifier.templates import RenderedTemplate, TemplateStore

__all__ = ["LOOP_SLICE_SECONDS", "Renderer"]

#: How long a render may run on the event loop before it moves to a render thread.
LOOP_SLICE_SECONDS = 0.02
#: Rendered text up to these sizes is composed on the event loop (measured worst case
#: at these sizes: a few milliseconds; docs/benchmarks.md).
LOOP_COMPOSE_HEADER_CHARS = 1024
LOOP_COMPOSE_BODY_CHARS = 64 * 1024
#: Slow renders waiting for (or holding) a render thread, per thread, before 503.
QUEUE_PER_THREAD = 8

T = TypeVar("T")


class Renderer:
    """Everything needed to turn ``(name, context)`` into a :class:`ComposedMessage`."""

    def __init__(
        self,
        *,
        templates: TemplateStore,
        message_id_domain: str,
        default_from: str | None,
        clock: Callable[[], datetime] | None = None,
        max_recipients: int | None = None,
        allowed_senders: frozenset[str] | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_header_block_bytes: int = MAX_HEADER_BLOCK_BYTES,
        render_threads: int = 2,
    ) -> None:
        self.templates = templates
        self.message_id_domain = message_id_domain
        self.default_from = default_from
        self.clock = clock
        #: Most envelope recipients a message may have (None: no limit).
        self.max_recipients = max_recipients
        #: Allowed envelope senders (see ``limits.allowed_senders``); None allows any.
        self.allowed_senders = allowed_senders
        self.max_header_bytes = max_header_bytes
        self.max_header_block_bytes = max_header_block_bytes
        self._render_threads = render_threads
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._off_loop = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], datetime] | None = None
    ) -> Renderer:
        limits = settings.limits
        budget = RenderBudget(seconds=limits.render_timeout, max_output=limits.max_rendered_chars)
        return cls(
            templates=TemplateStore(settings.templates.dir, clock=clock, budget=budget),
            message_id_domain=settings.message_id_domain,
            default_from=settings.defaults.from_,
            clock=clock,
            max_recipients=limits.max_recipients,
            allowed_senders=_allowed_senders(settings),
            max_header_bytes=limits.max_header_bytes,
            max_header_block_bytes=limits.max_header_block_bytes,
            render_threads=limits.render_threads,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> ComposedMessage:
        """Render template ``name`` with ``context`` and compose the message, here.

        For the command line and tests; requests use :meth:`render_async`. Raises the
        404/422 errors of :mod:`notifier.errors`.
        """
        return self.compose(self.templates.render(name, context))

    async def render_async(self, name: str, context: Mapping[str, Any]) -> ComposedMessage:
        """:meth:`render`, keeping the event loop free (see the module doc).

        Raises :class:`RenderCapacityExhausted` (503) when too many slow renders wait.
        """
        try:
            rendered = self.templates.render(name, context, slice_seconds=LOOP_SLICE_SECONDS)
        except SliceExhausted:
            rendered = await self._in_thread(self.templates.render, name, context)
        if _cheap_to_compose(rendered):
            return self.compose(rendered)
        return await self._in_thread(self.compose, rendered)

    def compose(self, rendered: RenderedTemplate) -> ComposedMessage:
        """Compose a rendered template and apply the recipient and sender limits."""
        composed = compose_message(
            rendered,
            message_id_domain=self.message_id_domain,
            default_from=self.default_from,
            clock=self.clock,
            max_header_bytes=self.max_header_bytes,
            max_header_block_bytes=self.max_header_block_bytes,
        )
        if self.max_recipients is not None and len(composed.recipients) > self.max_recipients:
            raise ComposeError(
                f"the message has {len(composed.recipients)} recipients; the limit is"
                f" {self.max_recipients} (limits.max_recipients)",
                title="Too many recipients",
            )
        if self.allowed_senders is not None and not _sender_allowed(
            composed.sender, self.allowed_senders
        ):
            raise ComposeError(
                f"the sender {composed.sender!r} is not allowed (limits.allowed_senders)",
                title="Sender not allowed",
                sender=composed.sender,
            )
        return composed

    def close(self) -> None:
        """Stop the render threads (renders still running finish within their budget)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        if self._off_loop >= self._render_threads * QUEUE_PER_THREAD:
            raise RenderCapacityExhausted(
                "too many slow renders are in progress (limits.render_threads); try again"
            )
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._render_threads, thread_name_prefix="notifier-render"
            )
        self._off_loop += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(function, *args))
        finally:
            # Counted until the request stops waiting; a render whose request went away
            # still ends within its budget.
            self._off_loop -= 1


def _cheap_to_compose(rendered: RenderedTemplate) -> bool:
    text = rendered.text
    if len(text) > LOOP_COMPOSE_HEADER_CHARS + LOOP_COMPOSE_BODY_CHARS:
        return False
    if rendered.html is not None and len(rendered.html) > LOOP_COMPOSE_BODY_CHARS:
        return False
    end = text.find("\n\n")
    return 0 <= end <= LOOP_COMPOSE_HEADER_CHARS


def _allowed_senders(settings: Settings) -> frozenset[str] | None:
    entries = {entry.strip().lower() for entry in settings.limits.allowed_senders}
    if "*" in entries:
        return None
    if not entries and settings.defaults.from_:
        # Secure default: with nothing configured, only the default sender may send.
        _, address = parseaddr(settings.defaults.from_)
        entries = {address.lower()}
    return frozenset(entries)


def _sender_allowed(sender: str, allowed: frozenset[str]) -> bool:
    address = sender.lower()
    domain = "@" + address.rpartition("@")[2]
    return address in allowed or domain in allowed or domain[1:] in allowed
