"""Render + compose: a template name and a JSON context in, a composed message out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from notifier.compose import ComposedMessage, compose_message
from notifier.errors import ComposeError
from notifier.settings import Settings
from notifier.templates import TemplateStore

__all__ = ["Renderer"]


@dataclass(frozen=True, slots=True)
class Renderer:
    """Everything needed to turn ``(name, context)`` into a :class:`ComposedMessage`."""

    templates: TemplateStore
    message_id_domain: str
    default_from: str | None
    clock: Callable[[], datetime] | None = None
    #: Most envelope recipients a message may have (None: no limit).
    max_recipients: int | None = None
    #: Allowed envelope senders (see ``limits.allowed_senders``); None allows any.
    allowed_senders: frozenset[str] | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], datetime] | None = None
    ) -> Renderer:
        return cls(
            templates=TemplateStore(settings.templates.dir, clock=clock),
            message_id_domain=settings.message_id_domain,
            default_from=settings.defaults.from_,
            clock=clock,
            max_recipients=settings.limits.max_recipients,
            allowed_senders=_allowed_senders(settings),
        )

    def render(self, name: str, context: Mapping[str, Any]) -> ComposedMessage:
        """Render template ``name`` with ``context`` and compose the message.

        Raises the 404/422 errors of :mod:`notifier.errors`.
        """
        rendered = self.templates.render(name, context)
        composed = compose_message(
            rendered,
            message_id_domain=self.message_id_domain,
            default_from=self.default_from,
            clock=self.clock,
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
