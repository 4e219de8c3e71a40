"""Writes gathered per turn of the event loop: many callers, one transaction.

Under load, many deliveries finish in the same turn of the event loop; recording each
outcome in a transaction of its own would pay a store-thread hand-off (SQLite) or a
connection and three round trips (PostgreSQL) per outcome. :class:`Batcher` collects
what is added during one turn and writes it together; every caller still returns only
once its item is written (or raises what the write raised).

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    """``await batcher.add(item)``: ``item`` is written with the others of this turn."""

    def __init__(self, write: Callable[[list[T]], Awaitable[None]]) -> None:
        self._write = write
        self._items: list[T] = []
        self._written: asyncio.Future[None] | None = None
        self._writing: set[asyncio.Task[None]] = set()

    async def add(self, item: T) -> None:
        if self._written is None:
            loop = asyncio.get_running_loop()
            self._written = loop.create_future()
            # call_soon runs after the callbacks already scheduled for this turn: every
            # delivery that finishes in the same turn gets into the same write.
            loop.call_soon(self._flush)
        self._items.append(item)
        # Shielded: a caller cancelled while waiting (a shutdown) does not cancel the
        # write the others wait for; its item is written all the same.
        await asyncio.shield(self._written)

    def _flush(self) -> None:
        items, written = self._items, self._written
        self._items, self._written = [], None
        assert written is not None
        task = asyncio.get_running_loop().create_task(self._write_all(items, written))
        self._writing.add(task)  # a strong reference until it is done
        task.add_done_callback(self._writing.discard)

    async def _write_all(self, items: list[T], written: asyncio.Future[None]) -> None:
        try:
            await self._write(items)
        except BaseException as exc:
            if not written.done():
                written.set_exception(exc)
                # Retrieved by the callers; mark it so that a batch nobody waits for any
                # more (all cancelled) does not warn about an unretrieved exception.
                written.exception()
            if not isinstance(exc, Exception):
                raise
        else:
            if not written.done():
                written.set_result(None)
