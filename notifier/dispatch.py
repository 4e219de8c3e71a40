"""The dispatcher: claim due messages, send ``message_ready``, record each outcome.

It runs as a background task of the serving app (or of ``notifier worker``). Any number
of dispatchers in any number of processes may share one outbox: claims never hand one
delivery to two of them, and each renews the leases of what it is delivering, so the
work of a process that dies goes back to the others once its leases run out. Each
claimed message goes out through
:data:`notifier.signals.message_ready`; every subscriber named in settings is connected
to it as a relay that starts the subscriber as its own task, so subscribers run side by
side: a slow or failing one never holds the others back. Each subscriber's return or
exception becomes its recorded outcome, and transient failures are retried with
exponential backoff and jitter within the ``delivery`` settings.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from quart import Quart

from notifier.errors import (
    DeliveryFailure,
    OutboxUnavailable,
    PartialDelivery,
    PermanentFailure,
    TransientFailure,
)
from notifier.logs import fields
from notifier.metrics import Metrics
from notifier.outbox import Claim, DeliveryState, Outbox, Outcome
from notifier.settings import DeliverySettings
from notifier.signals import OutboundMessage, message_ready
from notifier.subscribers import Subscriber

__all__ = ["DeliveryRound", "Dispatcher", "retry_delay"]

logger = logging.getLogger("notifier.dispatch")

#: How often an idle dispatcher looks at the outbox even when nothing woke it (other
#: processes sharing the outbox add messages this one may not be told about).
IDLE_POLL_SECONDS = 1.0
#: After a lost wake-up connection (PostgreSQL LISTEN), wait this long before the next.
LISTEN_RETRY_SECONDS = 5.0
#: Longest error text kept per attempt.
MAX_ERROR_LENGTH = 1000
#: Addresses in error texts (relay replies quote them) are masked in log lines unless
#: log.include_addresses is set.
_ADDRESS = re.compile(r"[^\s<>\"'(),;:]+@[^\s<>\"'(),;:]+")
#: How often to purge finished messages past retention and expired idempotency keys.
HOUSEKEEPING_SECONDS = 60.0


def retry_delay(attempts: int, settings: DeliverySettings, rng: Callable[[], float]) -> float:
    """Seconds before the next try after ``attempts`` failed ones: exponential backoff
    with "equal jitter" (half fixed, half random), so retries of many messages that
    failed together spread out instead of hitting the relay at the same moment."""
    ceiling = min(settings.backoff_max, settings.backoff_initial * 2.0 ** (attempts - 1))
    return float(ceiling / 2 + rng() * ceiling / 2)


class DeliveryRound:
    """One message going out to the subscribers that are due for it.

    Passed to the relays through ``message_ready`` (keyword ``delivery_round``); each
    relay whose subscriber is due starts it with :meth:`start`. Each subscriber runs as
    one task that also records its outcome as soon as it has one (``finish``), so a slow
    subscriber never holds another's outcome back.
    """

    def __init__(
        self,
        claim: Claim,
        timeout: float,
        finish: Callable[[DeliveryRound, str, Any], Awaitable[None]],
    ) -> None:
        self.claim = claim
        self._timeout = timeout
        self._finish = finish
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: perf_counter() when each subscriber was started, for its duration.
        self.started_at: dict[str, float] = {}
        #: Subscribers whose outcome is stored.
        self.recorded: set[str] = set()

    def is_due(self, name: str) -> bool:
        return name in self.claim.subscribers and name not in self._tasks

    def message_for(self, name: str) -> OutboundMessage:
        state = self.claim.subscribers[name]
        return self.claim.message.for_attempt(
            attempt=state.attempts + 1, recipients=state.retry_recipients
        )

    def start(self, name: str, call: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self.started_at[name] = time.perf_counter()
        self._tasks[name] = asyncio.create_task(self._attempt(name, call), name=f"deliver {name}")

    async def _attempt(self, name: str, call: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        # asyncio.timeout, not wait_for: wait_for would run the call in a task of its own.
        try:
            async with asyncio.timeout(self._timeout):
                result: Any = await call()
        except Exception as exc:  # the subscriber's exception is its outcome
            result = exc
        await self._finish(self, name, result)

    @property
    def started(self) -> list[asyncio.Task[None]]:
        return list(self._tasks.values())

    def not_started(self) -> list[str]:
        """Due subscribers no relay started: no longer configured under that name."""
        return [name for name in self.claim.subscribers if name not in self._tasks]

    def cancel(self) -> list[str]:
        """Cancel unfinished subscribers; return their names."""
        unfinished = [name for name, task in self._tasks.items() if not task.done()]
        for name in unfinished:
            self._tasks[name].cancel()
        return unfinished


class Dispatcher:
    """Background delivery for one app; start it in the serving lifecycle."""

    def __init__(
        self,
        app: Quart,
        outbox: Outbox,
        subscribers: list[Subscriber],
        settings: DeliverySettings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
        retention: float = 0.0,
        log_addresses: bool = False,
    ) -> None:
        self._app = app
        self._retention = retention
        self._log_addresses = log_addresses
        self._metrics = metrics or Metrics()
        self._outbox = outbox
        self._subscribers = subscribers
        self._settings = settings
        self._clock = clock
        self._rng = rng
        # Names the process in the outbox (for operators reading it); leases belong to
        # this exact dispatcher through the random part.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._next_housekeeping = 0.0
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self._deliveries: dict[asyncio.Task[None], DeliveryRound] = {}
        self._relays: dict[str, Callable[..., Awaitable[None]]] = {}
        self._stopping = False
        self._reserved = 0
        #: Subscribers whose own line records a delivery (the log subscriber): a second
        #: line saying the same would only double the log.
        self._self_logging = {
            s.name for s in subscribers if getattr(s.receiver, "logs_each_message", False)
        }

    @property
    def lease_seconds(self) -> float:
        return self._settings.lease_seconds

    def start(self) -> None:
        for subscriber in self._subscribers:
            relay = _relay(subscriber)
            # Strong references, sender-specific: each app's relays see only its messages.
            message_ready.connect(relay, sender=self._app, weak=False)
            self._relays[subscriber.name] = relay
        self._loop_task = asyncio.create_task(self._run(), name="notifier dispatcher")
        self._helpers = [
            asyncio.create_task(self._renew_leases(), name="notifier lease renewal"),
            asyncio.create_task(self._listen(), name="notifier wake-ups"),
        ]

    def wake(self) -> None:
        """A message was stored: look for due work now instead of at the next poll."""
        self._wake.set()

    def reserve(self) -> bool:
        """Reserve room to deliver a message this process is about to store.

        True: store it leased to :attr:`owner` and pass it to :meth:`deliver_now` (or
        :meth:`unreserve` if storing fails). False (busy or stopping): store it queued and
        :meth:`wake` the dispatcher. Delivering a fresh message directly spares the
        outbox a claim and keeps its latency low; the lease in the database still covers
        a crash before the delivery ends.
        """
        if self._stopping or self._loop_task is None or self._free() <= 0:
            return False
        self._reserved += 1
        return True

    def unreserve(self) -> None:
        self._reserved -= 1

    def deliver_now(self, claim: Claim) -> None:
        """Deliver a message stored leased to this dispatcher (see :meth:`reserve`)."""
        self._reserved -= 1
        if self._stopping:
            # Too late to start, and nothing hands it back: its lease runs out, and the
            # next claim by any process (another one, or this service started again)
            # takes it over and delivers it.
            return
        self._start(claim)

    def _free(self) -> int:
        return self._settings.concurrency - len(self._deliveries) - self._reserved

    def _start(self, claim: Claim) -> None:
        delivery_round = DeliveryRound(claim, self._settings.subscriber_timeout, self._record)
        task = asyncio.create_task(self._deliver(delivery_round))
        self._deliveries[task] = delivery_round
        task.add_done_callback(self._deliveries.pop)

    async def stop(self, *, grace: float) -> None:
        """Stop claiming; give in-flight deliveries ``grace`` seconds, then cancel them
        and hand what they had not finished back to the outbox: due at once for any
        process sharing it (woken where the backend can), with no attempt counted."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._deliveries:
            await asyncio.wait(list(self._deliveries), timeout=grace)
        for task in list(self._deliveries):
            task.cancel()
        if self._deliveries:
            await asyncio.wait(list(self._deliveries))
        # Leases were renewed until now; what was cut off has been handed back.
        for helper in self._helpers:
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        self._helpers = []
        for relay in self._relays.values():
            message_ready.disconnect(relay, sender=self._app)
        self._relays.clear()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except Exception:
                # Whatever went wrong (a custom outbox, a bug), the dispatcher must keep
                # running: stored messages depend on it. Log, pause, go on.
                logger.exception("the dispatcher hit an unexpected error; retrying in 1 s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)

    @property
    def running(self) -> bool:
        """Whether the dispatch loop is alive (for readiness)."""
        return self._loop_task is not None and not self._loop_task.done()

    async def _step(self) -> None:
        """One turn: housekeeping when due, then claim and start what fits, or wait."""
        if time.monotonic() >= self._next_housekeeping:
            await self._housekeeping()
        free = self._free()
        if free <= 0:
            # Full: wait for a delivery to end, or for stop() (whose grace period must
            # not first wait for a free slot), or for a reservation to be handed over.
            waiter = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait(
                    [*self._deliveries, waiter],
                    timeout=IDLE_POLL_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
            return
        self._wake.clear()
        try:
            claims = await self._outbox.claim(
                owner=self.owner, limit=free, lease_seconds=self.lease_seconds
            )
        except OutboxUnavailable as exc:
            logger.error("cannot claim messages: %s", exc.detail)
            claims = []
        for claim in claims:
            self._start(claim)
        if len(claims) < free and not self._stopping:
            await self._idle()

    async def _housekeeping(self) -> None:
        self._next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
        try:
            purged = await self._outbox.purge(retention=self._retention)
        except OutboxUnavailable as exc:
            logger.error("outbox housekeeping failed: %s", exc.detail)
            return
        if purged:
            logger.info("removed %d finished message(s) past outbox.retention", purged)

    async def _renew_leases(self) -> None:
        """Keep the leases of running deliveries alive: a third of the lease apart, so
        that two renewals may fail before another process could take a delivery over."""
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            running = {round_.claim.message.id for round_ in self._deliveries.values()}
            if not running:
                continue
            try:
                await self._outbox.renew(
                    owner=self.owner, message_ids=running, lease_seconds=self.lease_seconds
                )
            except OutboxUnavailable as exc:
                logger.error("cannot renew delivery leases: %s", exc.detail)

    async def _listen(self) -> None:
        """Wake up when another process stores work (PostgreSQL NOTIFY); polling covers
        the time the wake-up connection is down, and backends without one."""
        while True:
            try:
                await self._outbox.listen(self.wake)
            except OutboxUnavailable as exc:
                logger.warning("no wake-ups from the outbox for now: %s", exc.detail)
                await asyncio.sleep(LISTEN_RETRY_SECONDS)
            else:
                return

    async def _idle(self) -> None:
        timeout = IDLE_POLL_SECONDS
        try:
            next_due = await self._outbox.next_due()
        except OutboxUnavailable:
            next_due = None
        if next_due is not None:
            timeout = max(0.0, min(timeout, next_due - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _deliver(self, delivery_round: DeliveryRound) -> None:
        message = delivery_round.claim.message
        try:
            try:
                await message_ready.send_async(
                    self._app,
                    _sync_wrapper=_in_thread,
                    message=message,
                    delivery_round=delivery_round,
                )
            except Exception:
                # A receiver connected directly (not through settings) failed. blinker
                # stops at the first receiver that raises, so relays it had not reached
                # yet are started below; ours never raise.
                logger.exception("a message_ready receiver failed for message %s", message.id)
            for name in delivery_round.not_started():
                relay = self._relays.get(name)
                if relay is not None:
                    await relay(self._app, message=message, delivery_round=delivery_round)
            missing = PermanentFailure("no subscriber with this name is configured")
            for name in delivery_round.not_started():
                await self._record(delivery_round, name, missing)
            # Each subscriber's task records its own outcome; wait for all of them.
            await asyncio.gather(*delivery_round.started)
        except asyncio.CancelledError:
            delivery_round.cancel()
            recorded = delivery_round.recorded
            unfinished = [name for name in delivery_round.claim.subscribers if name not in recorded]
            await self._release(message.id, unfinished)
            raise

    async def _record(self, delivery_round: DeliveryRound, name: str, result: Any) -> None:
        """Store one subscriber's outcome (each as soon as it is known: a delivered email
        is on record, and never sent again, even if a slower subscriber is still busy
        when the process dies)."""
        claim = delivery_round.claim
        state = claim.subscribers[name]
        outcome = self._outcome(claim, state, result)
        message = claim.message
        try:
            await self._outbox.record(message.id, owner=self.owner, outcomes={name: outcome})
        except OutboxUnavailable as exc:
            # The lease runs out and the message is delivered again: at-least-once.
            logger.error("cannot record the outcome of message %s: %s", message.id, exc.detail)
        delivery_round.recorded.add(name)
        self._observe(delivery_round, name, state.attempts + 1, outcome)

    def _observe(
        self, delivery_round: DeliveryRound, name: str, attempt: int, outcome: Outcome
    ) -> None:
        """One log line and the metrics for one delivery attempt."""
        started = delivery_round.started_at.get(name)
        elapsed = time.perf_counter() - started if started is not None else None
        label = "retried" if outcome.status == "queued" else outcome.status
        self._metrics.deliveries.labels(name, label).inc()
        if elapsed is not None:
            self._metrics.delivery_seconds.labels(name).observe(elapsed)
        message = delivery_round.claim.message
        error = outcome.error
        if error and not self._log_addresses:
            error = _ADDRESS.sub("<address>", error)
        if outcome.status != "delivered":
            level = logging.WARNING
        else:
            level = logging.DEBUG if name in self._self_logging else logging.INFO
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "delivery attempt",
            extra=fields(
                id=message.id,
                message_id=message.message_id,
                request_id=message.request_id,
                subscriber=name,
                attempt=attempt,
                outcome=label,
                smtp_code=outcome.smtp_code,
                error=error,
                duration_ms=None if elapsed is None else round(elapsed * 1000, 2),
            ),
        )

    async def _release(self, message_id: str, names: list[str]) -> None:
        if not names:
            return
        with contextlib.suppress(OutboxUnavailable):
            await asyncio.shield(
                self._outbox.release(message_id, owner=self.owner, subscribers=names)
            )

    def _outcome(self, claim: Claim, state: DeliveryState, result: BaseException | Any) -> Outcome:
        attempts = state.attempts + 1
        previous = dict(state.detail or {})
        refused: dict[str, Any] = previous.get("refused", {})
        if not isinstance(result, BaseException):
            if refused:
                return Outcome(
                    "failed",
                    error=f"{len(refused)} recipient(s) refused for good",
                    smtp_code=max(r["code"] for r in refused.values()),
                    detail={"refused": refused},
                )
            return Outcome("delivered", detail=_result_detail(result))
        error = _error_text(result)
        smtp_code = result.smtp_code if isinstance(result, DeliveryFailure) else None
        if isinstance(result, PartialDelivery):
            for rcpt, (code, text) in result.refused.items():
                if not 400 <= code < 500:
                    refused[rcpt] = {"code": code, "message": text}
            retry = result.retry_recipients
            detail: dict[str, Any] = {"refused": refused} if refused else {}
            if retry and self._may_retry(claim, attempts):
                detail["retry_recipients"] = retry
                return self._retry_later(attempts, error, smtp_code, detail)
            return Outcome("failed", error=error, smtp_code=smtp_code, detail=detail or None)
        if isinstance(result, PermanentFailure):
            return Outcome("failed", error=error, smtp_code=smtp_code, detail=previous or None)
        if self._may_retry(claim, attempts):
            asked = result.retry_after if isinstance(result, TransientFailure) else None
            return self._retry_later(attempts, error, smtp_code, previous or None, asked)
        return Outcome("failed", error=error, smtp_code=smtp_code, detail=previous or None)

    def _may_retry(self, claim: Claim, attempts: int) -> bool:
        # An operator's retry starts a fresh budget: age counts from it.
        since = claim.retried_at or claim.message.created_at.timestamp()
        age = self._clock() - since
        return attempts < self._settings.max_attempts and age < self._settings.max_age

    def _retry_later(
        self,
        attempts: int,
        error: str,
        smtp_code: int | None,
        detail: dict[str, Any] | None,
        retry_after: float | None = None,
    ) -> Outcome:
        delay = retry_delay(attempts, self._settings, self._rng)
        if retry_after is not None:
            # The peer said when to come back (HTTP Retry-After): not sooner, but not
            # later than the longest backoff either, whatever it asked for.
            delay = max(delay, min(retry_after, self._settings.backoff_max))
        return Outcome(
            "queued",
            error=error,
            smtp_code=smtp_code,
            next_attempt_at=self._clock() + delay,
            detail=detail,
        )


def _relay(subscriber: Subscriber) -> Callable[..., Awaitable[None]]:
    """The receiver connected to ``message_ready`` on behalf of ``subscriber``."""
    if subscriber.is_async:

        def call(sender: Any, message: OutboundMessage) -> Coroutine[Any, Any, Any]:
            coroutine: Coroutine[Any, Any, Any] = subscriber.receiver(sender, message=message)
            return coroutine

    else:

        def call(sender: Any, message: OutboundMessage) -> Coroutine[Any, Any, Any]:
            # A sync subscriber (SMTP via smtplib, an HTTP client...) runs in a thread so
            # that it cannot stall the event loop, the API or the other subscribers.
            return asyncio.to_thread(subscriber.receiver, sender, message=message)

    async def relay(
        sender: Any, *, delivery_round: DeliveryRound | None = None, **kwargs: Any
    ) -> None:
        if delivery_round is None or not delivery_round.is_due(subscriber.name):
            return
        message = delivery_round.message_for(subscriber.name)
        delivery_round.start(subscriber.name, functools.partial(call, sender, message))

    relay.__name__ = relay.__qualname__ = f"relay_to_{subscriber.name}"
    return relay


def _in_thread(func: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    """blinker's ``_sync_wrapper``: run a directly connected sync receiver in a thread."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, **kwargs)

    return wrapper


def _error_text(error: BaseException) -> str:
    if isinstance(error, asyncio.CancelledError | TimeoutError) and not str(error):
        text = "the subscriber did not finish within delivery.subscriber_timeout"
    elif isinstance(error, DeliveryFailure):
        text = error.detail
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text[:MAX_ERROR_LENGTH]


def _result_detail(result: Any) -> dict[str, Any] | None:
    if isinstance(result, dict) and result:
        return {key: str(value)[:MAX_ERROR_LENGTH] for key, value in result.items()}
    return None
