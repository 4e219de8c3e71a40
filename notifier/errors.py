"""The exceptions notifier raises, one base class, each mapped to an HTTP problem.

Every error that reaches a client carries its HTTP ``status``, a problem ``type`` slug
and a short ``title``; :mod:`notifier.api.problems` turns them into RFC 9457 bodies in
one place, so views never build error responses themselves.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequestBody",
    "ComposeError",
    "HeaderInjection",
    "InvalidAddress",
    "MissingVariable",
    "NotifierError",
    "PermanentFailure",
    "SettingsError",
    "TemplateError",
    "UnknownTemplate",
    "UnsupportedMediaType",
]


class NotifierError(Exception):
    """Base of every notifier exception."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str, *, title: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if title is not None:
            self.title = title
        #: Extra members for the problem body (for instance ``variable``).
        self.extra = extra


class SettingsError(NotifierError, ValueError):
    """The settings file or a ``NOTIFIER_*`` override is invalid; start-up stops."""

    slug = "invalid-settings"
    title = "Invalid settings"


class BadRequestBody(NotifierError, ValueError):
    """The request body is not valid JSON or not a JSON object."""

    status = 400
    slug = "invalid-json"
    title = "Request body is not a JSON object"


class UnsupportedMediaType(NotifierError, ValueError):
    """The request did not declare a JSON ``Content-Type``."""

    status = 415
    slug = "unsupported-media-type"
    title = "Content-Type must be application/json"


class UnknownTemplate(NotifierError, LookupError):
    """No template has this name (bad names, traversal attempts included)."""

    status = 404
    slug = "unknown-template"
    title = "Unknown template"


class TemplateError(NotifierError, ValueError):
    """The template itself is broken: syntax error, sandbox violation, bad header block."""

    status = 422
    slug = "template-error"
    title = "Template error"


class MissingVariable(TemplateError, KeyError):
    """The template uses a variable that the request did not provide."""

    slug = "missing-variable"
    title = "Missing template variable"

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return self.detail


class ComposeError(NotifierError, ValueError):
    """The rendered text cannot become a safe, valid message."""

    status = 422
    slug = "invalid-message"
    title = "The rendered message is invalid"


class HeaderInjection(ComposeError):
    """A value would add a header line, a body, or recipients the template did not write."""

    slug = "header-injection"
    title = "Header injection refused"


class InvalidAddress(ComposeError):
    """An address header does not parse to valid mailboxes."""

    slug = "invalid-address"
    title = "Invalid address"


class PermanentFailure(NotifierError):
    """Raised by a ``message_ready`` subscriber: do not retry, record the message as failed."""

    slug = "permanent-failure"
    title = "Permanent delivery failure"
