"""Render + compose: a template name and a JSON context in, a composed message out."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notifier.compose import ComposedMessage, compose_message
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

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], datetime] | None = None
    ) -> Renderer:
        return cls(
            templates=TemplateStore(settings.templates.dir, clock=clock),
            message_id_domain=settings.message_id_domain,
            default_from=settings.defaults.from_,
            clock=clock,
        )

    def render(self, name: str, context: Mapping[str, Any]) -> ComposedMessage:
        """Render template ``name`` with ``context`` and compose the message.

        Raises the 404/422 errors of :mod:`notifier.errors`.
        """
        rendered = self.templates.render(name, context)
        return compose_message(
            rendered,
            message_id_domain=self.message_id_domain,
            default_from=self.default_from,
            clock=self.clock,
        )
