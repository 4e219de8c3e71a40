"""Render + compose: a template name and a JSON context in, a composed message out.

:meth:`Renderer.render_async` is what requests use. Almost every render and compose
takes well under a millisecond and runs on the event loop. Work that could take longer
runs in a pool of render processes, so that it never stalls the loop (and with it
``/healthz`` and every other request):

* a context larger than :data:`LOOP_CONTEXT_BYTES` goes to the pool at once;
* a render that has used :data:`LOOP_SLICE_SECONDS` of CPU time stops and runs again in the
  pool with the whole ``limits.render_timeout``, and renders of that template go
  straight to the pool for a while after; so does a render whose HTML part is too long
  to inline its CSS on the loop (:data:`notifier.html_parts.LOOP_CSS_INLINE_CHARS`);
* a message whose header block, body or inline images are large enough that the email
  package could take more than a few milliseconds over it is composed in the pool.

Processes, not threads: a thread running a slow render holds the GIL in 5 ms turns, and
the event loop, which takes it back at every ``await``, was measured answering
``/healthz`` in 0.5 s while two such threads ran. The hand-off costs a millisecond or
so, paid only by work that is slow anyway. (A ``--workers N`` serve worker is daemonic
and may not start processes: it uses render threads instead.)

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from notifier.compose import (
    MAX_HEADER_BLOCK_BYTES,
    MAX_HEADER_BYTES,
    Attachment,
    ComposedMessage,
    attach,
    compose_message,
)
from notifier.dkim import DkimSigner, load_signer
from notifier.errors import ComposeError, RenderCapacityExhausted
from notifier.sandbox import RenderBudget, SliceExhausted
from notifier.settings import Settings
from notifier.templates import RenderedTemplate, TemplateStore

__all__ = ["LOOP_SLICE_SECONDS", "Renderer"]

logger = logging.getLogger("notifier.render")

#: CPU seconds a render may use on the event loop before it moves to the pool.
LOOP_SLICE_SECONDS = 0.02
#: Request contexts larger than this (JSON bytes) are rendered in the pool at once.
LOOP_CONTEXT_BYTES = 64 * 1024
#: Seconds a template that ran past its slice keeps going straight to the pool.
SLOW_TEMPLATE_SECONDS = 60.0
#: Rendered text up to these sizes is composed on the event loop: a header block of 512
#: characters costs the email package's parser a few milliseconds at worst (measured).
LOOP_COMPOSE_HEADER_CHARS = 512
LOOP_COMPOSE_BODY_CHARS = 64 * 1024
#: Attachments up to this many bytes together are added on the event loop (well under a
#: millisecond); larger ones in a thread (10 MiB took 80 ms and more, measured).
LOOP_ATTACH_BYTES = 64 * 1024
#: Slow renders waiting for (or running in) a render process, per process, before 503.
QUEUE_PER_PROCESS = 8


@dataclass(frozen=True, slots=True)
class _RendererConfig:
    """What a render process needs to build its own :class:`Renderer`."""

    templates_dir: Path
    budget_seconds: float
    max_output: int
    message_id_domain: str
    default_from: str | None
    max_recipients: int | None
    allowed_senders: frozenset[str] | None
    max_header_bytes: int
    max_header_block_bytes: int
    #: The DKIM keys travel with the config (pickled to the process over its pipe).
    dkim_signer: DkimSigner | None = None


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
        render_processes: int = 2,
        dkim_signer: DkimSigner | None = None,
    ) -> None:
        self.templates = templates
        self.message_id_domain = message_id_domain
        self.default_from = default_from
        #: Only for renders in this process: render processes use the real time.
        self.clock = clock
        #: Most envelope recipients a message may have (None: no limit).
        self.max_recipients = max_recipients
        #: Allowed envelope senders (see ``limits.allowed_senders``); None allows any.
        self.allowed_senders = allowed_senders
        self.max_header_bytes = max_header_bytes
        self.max_header_block_bytes = max_header_block_bytes
        #: Signs composed messages whose From domain has a DKIM key (None: no keys).
        self.dkim_signer = dkim_signer
        self._render_processes = render_processes
        self._pool: concurrent.futures.Executor | None = None
        self._pool_starting: asyncio.Future[concurrent.futures.Executor] | None = None
        self._in_pool = 0
        #: Template name -> time.monotonic() when a render of it last ran past its slice.
        self._slow_templates: dict[str, float] = {}

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], datetime] | None = None
    ) -> Renderer:
        limits = settings.limits
        budget = RenderBudget(seconds=limits.render_timeout, max_output=limits.max_rendered_chars)
        return cls(
            templates=TemplateStore(
                settings.templates.dir,
                clock=clock,
                budget=budget,
                content_id_domain=settings.message_id_domain,
            ),
            message_id_domain=settings.message_id_domain,
            default_from=settings.defaults.from_,
            clock=clock,
            max_recipients=limits.max_recipients,
            allowed_senders=_allowed_senders(settings),
            max_header_bytes=limits.max_header_bytes,
            max_header_block_bytes=limits.max_header_block_bytes,
            render_processes=limits.render_processes,
            dkim_signer=load_signer(settings.dkim),
        )

    def render(self, name: str, context: Mapping[str, Any], sign: bool = True) -> ComposedMessage:
        """Render template ``name`` with ``context`` and compose the message, here.

        For the command line, the render processes and tests; requests use
        :meth:`render_async`. Raises the 404/422 errors of :mod:`notifier.errors`.
        """
        return self.compose(self.templates.render(name, context), sign)

    async def render_async(
        self,
        name: str,
        context: Mapping[str, Any],
        *,
        context_bytes: int = 0,
        attachments: Sequence[Attachment] = (),
    ) -> ComposedMessage:
        """:meth:`render` with ``attachments`` added, keeping the event loop free (see
        the module doc). The steps: render, compose, attach, DKIM-sign, in that order.

        ``context_bytes`` is the size of the JSON the context came from. Raises
        :class:`RenderCapacityExhausted` (503) when too many slow renders wait.
        """
        if not attachments:
            return await self._composed_async(name, context, context_bytes, sign=True)
        composed = await self._composed_async(name, context, context_bytes, sign=False)
        return await self.sign_async(await self.attach_async(composed, attachments))

    async def _composed_async(
        self, name: str, context: Mapping[str, Any], context_bytes: int, *, sign: bool
    ) -> ComposedMessage:
        if context_bytes > LOOP_CONTEXT_BYTES or self._recently_slow(name):
            return await self._run_in_pool(_render_in_worker, name, dict(context), sign)
        try:
            rendered = self.templates.render(name, context, slice_seconds=LOOP_SLICE_SECONDS)
        except SliceExhausted:
            self._slow_templates[name] = time.monotonic()
            return await self._run_in_pool(_render_in_worker, name, dict(context), sign)
        if not _cheap_to_compose(rendered):
            return await self._run_in_pool(_compose_in_worker, rendered, sign)
        composed = self.compose(rendered, sign=False)
        return await self.sign_async(composed) if sign else composed

    async def attach_async(
        self, composed: ComposedMessage, attachments: Sequence[Attachment]
    ) -> ComposedMessage:
        """``composed`` with ``attachments`` added (:func:`notifier.compose.attach`),
        keeping the event loop free; not signed (:meth:`render_async` signs after).

        Large attachments are encoded in a thread, not in a render process: the work is
        C calls over a block of lines at a time, and between blocks the thread lets the
        event loop have the GIL (its switch interval, 5 ms); a render process would need
        the megabytes pickled through a pipe there and the result back, two more copies
        of the largest thing a request holds.
        """
        if sum(len(attachment.content) for attachment in attachments) <= LOOP_ATTACH_BYTES:
            data = attach(composed.data, attachments)
        else:
            data = await asyncio.to_thread(attach, composed.data, attachments)
        return replace(composed, data=data)

    async def sign_async(self, composed: ComposedMessage) -> ComposedMessage:
        """:meth:`signed`, off the event loop when a key applies."""
        if self.dkim_signer is None or self.dkim_signer.key_for(composed.data) is None:
            return composed
        # dkimpy signs in pure Python, about 12 ms of CPU per RSA-2048 signature
        # (docs/benchmarks.md): far too long for the event loop, and a thread would hold
        # the GIL for all of it. A render process signs it; the hand-off costs ~1 ms.
        return await self._run_in_pool(_sign_in_worker, composed)

    def compose(self, rendered: RenderedTemplate, sign: bool = True) -> ComposedMessage:
        """Compose a rendered template, apply the recipient and sender limits, and
        DKIM-sign the result (unless ``sign`` is false: :meth:`render_async` signs after
        adding attachments, and off the event loop)."""
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
        if rendered.version:
            composed = replace(composed, template_version=rendered.version)
        # DKIM signing must stay the very LAST step: anything that changes the bytes after
        # it (wrapping in multipart/mixed for attachments, say) breaks the signature.
        return self.signed(composed) if sign else composed

    def signed(self, composed: ComposedMessage) -> ComposedMessage:
        """``composed`` with a DKIM signature when its From domain has a key."""
        if self.dkim_signer is None:
            return composed
        return replace(composed, data=self.dkim_signer.sign(composed.data))

    def close(self) -> None:
        """Stop the render processes (a render still running ends within its budget)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pool_starting = None

    def _recently_slow(self, name: str) -> bool:
        since = self._slow_templates.get(name)
        if since is None:
            return False
        if time.monotonic() - since < SLOW_TEMPLATE_SECONDS:
            return True
        del self._slow_templates[name]
        return False

    async def _run_in_pool(
        self, function: Callable[..., ComposedMessage], *args: Any
    ) -> ComposedMessage:
        if self._in_pool >= self._render_processes * QUEUE_PER_PROCESS:
            raise RenderCapacityExhausted(
                "too many slow renders are in progress (limits.render_processes); try again"
            )
        self._in_pool += 1
        try:
            if self._pool is None:
                # Starting processes blocks for a while: do it in a thread, once.
                if self._pool_starting is None:
                    self._pool_starting = asyncio.ensure_future(asyncio.to_thread(self._start_pool))
                try:
                    self._pool = await asyncio.shield(self._pool_starting)
                except RuntimeError as exc:
                    # multiprocessing refuses to start processes from some programs (one
                    # that starts them while its main module is still being imported).
                    raise OSError(f"cannot start render processes: {exc}") from None
                self._pool_starting = None
            loop = asyncio.get_running_loop()
            composed: ComposedMessage = await loop.run_in_executor(self._pool, function, *args)
            return composed
        except (concurrent.futures.BrokenExecutor, OSError) as exc:
            # A render process died (killed from outside, out of memory) or could not
            # be started: start afresh with the next slow render.
            self.close()
            raise RenderCapacityExhausted(
                f"render processes unavailable ({exc}); try again"
            ) from None
        finally:
            # Counted until the request stops waiting. A render whose request went away
            # is dropped if it has not started, and otherwise ends within its budget.
            self._in_pool -= 1

    def _start_pool(self) -> concurrent.futures.Executor:
        if multiprocessing.current_process().daemon:
            # Under `notifier serve --workers N` each worker is a daemonic process, and
            # those may not start processes of their own: slow renders run in threads
            # then, which keeps the loop free but shares its GIL (docs/templates.md).
            logger.warning(
                "slow renders run in threads: this process (a serve worker) cannot start"
                " render processes"
            )
            return _ThreadRenderPool(self, self._render_processes)
        context = multiprocessing.get_context("forkserver")
        # Each render process is forked from a server that has imported this module
        # already: it starts in milliseconds, not after importing notifier again.
        context.set_forkserver_preload([__name__])
        pool = concurrent.futures.ProcessPoolExecutor(
            self._render_processes,
            # forkserver: render processes start from a clean process, not from a copy
            # of this one with its threads, sockets and event loop.
            mp_context=context,
            initializer=_start_worker,
            initargs=(self._config(),),
        )
        # Start every process now: later submissions then never start one on the loop.
        concurrent.futures.wait([pool.submit(os.getpid) for _ in range(self._render_processes)])
        return pool

    def _config(self) -> _RendererConfig:
        budget = self.templates.budget
        return _RendererConfig(
            templates_dir=self.templates.directory,
            budget_seconds=budget.seconds,
            max_output=budget.max_output,
            message_id_domain=self.message_id_domain,
            default_from=self.default_from,
            max_recipients=self.max_recipients,
            allowed_senders=self.allowed_senders,
            max_header_bytes=self.max_header_bytes,
            max_header_block_bytes=self.max_header_block_bytes,
            dkim_signer=self.dkim_signer,
        )


class _ThreadRenderPool(concurrent.futures.ThreadPoolExecutor):
    """Render threads standing in for render processes: the tasks meant for a render
    process's own renderer run on this process's."""

    def __init__(self, renderer: Renderer, threads: int) -> None:
        super().__init__(threads, thread_name_prefix="notifier-render")
        self._renderer = renderer

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        own: dict[Callable[..., Any], Callable[..., Any]] = {
            _render_in_worker: self._renderer.render,
            _compose_in_worker: self._renderer.compose,
            _sign_in_worker: self._renderer.signed,
        }
        return super().submit(own.get(fn, fn), *args, **kwargs)


# -- inside a render process ---------------------------------------------------------

_worker_renderer: Renderer | None = None


def _start_worker(config: _RendererConfig) -> None:
    global _worker_renderer  # one renderer per render process, built once
    budget = RenderBudget(seconds=config.budget_seconds, max_output=config.max_output)
    _worker_renderer = Renderer(
        templates=TemplateStore(
            config.templates_dir, budget=budget, content_id_domain=config.message_id_domain
        ),
        message_id_domain=config.message_id_domain,
        default_from=config.default_from,
        max_recipients=config.max_recipients,
        allowed_senders=config.allowed_senders,
        max_header_bytes=config.max_header_bytes,
        max_header_block_bytes=config.max_header_block_bytes,
        dkim_signer=config.dkim_signer,
    )


def _worker() -> Renderer:
    # The pool's initializer ran before any task: a missing renderer is a bug.
    assert _worker_renderer is not None, "render process started without its settings"
    return _worker_renderer


def _render_in_worker(name: str, context: dict[str, Any], sign: bool) -> ComposedMessage:
    return _worker().render(name, context, sign)


def _compose_in_worker(rendered: RenderedTemplate, sign: bool) -> ComposedMessage:
    return _worker().compose(rendered, sign)


def _sign_in_worker(composed: ComposedMessage) -> ComposedMessage:
    return _worker().signed(composed)


# -- helpers ---------------------------------------------------------------------------


def _cheap_to_compose(rendered: RenderedTemplate) -> bool:
    text = rendered.text
    if len(text) > LOOP_COMPOSE_HEADER_CHARS + LOOP_COMPOSE_BODY_CHARS:
        return False
    if rendered.html is not None and len(rendered.html) > LOOP_COMPOSE_BODY_CHARS:
        return False
    # Inline images are base64-encoded by the email package, a line at a time.
    if sum(len(image.data) for image in rendered.inline_images) > LOOP_COMPOSE_BODY_CHARS:
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
