"""Subscribers: who receives each accepted message.

Settings list them by name: ``smtp`` and ``log`` are built in; anything else is a dotted
path ``package.module:function`` to a receiver (see :mod:`notifier.signals` for its
signature). An entry may also be a mapping with a ``type`` and that type's settings
(``{name, type: webhook, url, secret}``), registered under its ``name``. Built-in
subscribers that hold resources (the SMTP connection pool, a webhook's HTTP client) are
closed with the app.

:class:`Subscriber` is public: pass a list of them to ``create_app(subscribers=...)``.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from notifier.errors import SettingsError
from notifier.settings import Settings, WebhookSubscriberSettings

__all__ = ["Subscriber", "load_subscribers"]

_DOTTED_PATH = "package.module:function"


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A receiver and the name settings gave it (the key in ``GET /v1/messages/<id>``)."""

    name: str
    receiver: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        call = getattr(self.receiver, "__call__", None)  # noqa: B004 (instances too)
        return inspect.iscoroutinefunction(self.receiver) or inspect.iscoroutinefunction(call)

    async def aclose(self) -> None:
        close = getattr(self.receiver, "aclose", None)
        if close is not None:
            await close()


def load_subscribers(
    settings: Settings,
    *,
    on_relay_state: Callable[[bool], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Subscriber]:
    """Resolve every entry of ``settings.subscribers``; unknown names stop start-up.

    ``on_relay_state`` hears from the ``smtp`` subscriber whether the relay answers;
    ``clock`` (epoch seconds) is the time webhooks sign with.
    """
    from notifier.subscribers.log import LogSubscriber
    from notifier.subscribers.smtp import SmtpSubscriber
    from notifier.subscribers.webhook import WebhookSubscriber

    built_in: dict[str, Callable[[Settings], Callable[..., Any]]] = {
        "smtp": lambda s: SmtpSubscriber(s.smtp, on_relay_state=on_relay_state),
        "log": lambda s: LogSubscriber(s.log),
    }
    subscribers = []
    seen: set[str] = set()
    for entry in settings.subscribers:
        if isinstance(entry, WebhookSubscriberSettings):
            # The settings checked these entries (and that names are unique).
            webhook = WebhookSubscriber(
                entry,
                timeout=settings.delivery.subscriber_timeout,
                max_connections=settings.delivery.concurrency,
                clock=clock,
            )
            subscribers.append(Subscriber(name=entry.name, receiver=webhook))
            seen.add(entry.name)
            continue
        name = entry
        if name in seen:
            raise SettingsError(f"settings: subscribers: {name!r} is listed twice")
        seen.add(name)
        factory = built_in.get(name)
        receiver = factory(settings) if factory is not None else _import_receiver(name)
        subscribers.append(Subscriber(name=name, receiver=receiver))
    return subscribers


def _import_receiver(name: str) -> Callable[..., Any]:
    module_name, colon, attribute = name.partition(":")
    if not colon or not module_name or not attribute:
        raise SettingsError(
            f"settings: subscribers: {name!r} is neither a built-in subscriber (smtp, log)"
            f" nor a dotted path like {_DOTTED_PATH}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError(
            f"settings: subscribers: cannot import {module_name!r} for {name!r}: {exc}"
        ) from None
    receiver: Any = module
    for part in attribute.split("."):
        receiver = getattr(receiver, part, None)
        if receiver is None:
            raise SettingsError(f"settings: subscribers: {module_name} has no {attribute!r}")
    if not callable(receiver):
        raise SettingsError(f"settings: subscribers: {name!r} is not callable")
    resolved: Callable[..., Any] = receiver
    return resolved
