"""The exceptions notifier raises, one base class, each mapped to an HTTP problem.

Every error that reaches a client carries its HTTP ``status``, a problem ``type`` slug
and a short ``title``; :mod:`notifier.problems` turns them into RFC 9457 bodies in
one place, so views never build error responses themselves.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequestBody",
    "ComposeError",
    "DeliveryFailure",
    "Forbidden",
    "HeaderInjection",
    "IdempotencyConflict",
    "IdempotencyMismatch",
    "InvalidAddress",
    "InvalidAttachment",
    "InvalidIdempotencyKey",
    "InvalidLocale",
    "InvalidMultipart",
    "InvalidQuery",
    "MissingVariable",
    "NothingToRetry",
    "NotifierError",
    "OutboxUnavailable",
    "PartialDelivery",
    "PayloadTooLarge",
    "PermanentFailure",
    "RateLimited",
    "RenderBudgetExceeded",
    "RenderCapacityExhausted",
    "SettingsError",
    "TemplateError",
    "TransientFailure",
    "Unauthorized",
    "UnknownMessage",
    "UnknownTemplate",
    "UnsupportedMediaType",
]


class NotifierError(Exception):
    """Base of every notifier exception."""

    status: int = 500
    slug: str = "internal-error"
    title: str = "Internal error"
    #: HTTP headers the problem response carries (``WWW-Authenticate``, ``Retry-After``).
    headers: dict[str, str] = {}  # noqa: RUF012 (a default, replaced per instance)

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


class InvalidMultipart(BadRequestBody):
    """A ``multipart/form-data`` request that cannot be read: no boundary, cut short, a
    part without a name or with an unknown one, ``context`` twice (400)."""

    slug = "invalid-multipart"
    title = "Malformed multipart/form-data request"


class PayloadTooLarge(NotifierError):
    """A request over one of the size limits; ``limit`` names the setting (413)."""

    status = 413
    slug = "payload-too-large"
    title = "Request too large"


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


class RenderBudgetExceeded(TemplateError):
    """A render ran out of time or output (``limits.render_timeout``,
    ``limits.max_rendered_chars``); ``budget`` says which."""

    slug = "render-budget-exceeded"
    title = "The template exceeded its render budget"


class RenderCapacityExhausted(NotifierError):
    """Too many slow renders are already waiting for a render process (8 per process,
    ``limits.render_processes``): try again shortly (503, ``Retry-After: 1``)."""

    status = 503
    slug = "render-capacity-exhausted"
    title = "Too many slow renders in progress"
    headers = {"Retry-After": "1"}  # noqa: RUF012


class MissingVariable(TemplateError, KeyError):
    """The template uses a variable that the request did not provide."""

    slug = "missing-variable"
    title = "Missing template variable"

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return self.detail


class InvalidLocale(NotifierError, ValueError):
    """The context member ``locale`` is not a BCP 47 language tag of a known language."""

    status = 422
    slug = "invalid-locale"
    title = "Invalid locale"


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


class InvalidAttachment(NotifierError, ValueError):
    """An attachment's file name or media type cannot go into a message (422)."""

    status = 422
    slug = "invalid-attachment"
    title = "Invalid attachment"


class DeliveryFailure(NotifierError):
    """A subscriber could not deliver a message; ``smtp_code`` is the relay's reply code."""

    slug = "delivery-failure"
    title = "Delivery failure"

    def __init__(
        self, detail: str, *, smtp_code: int | None = None, title: str | None = None, **extra: Any
    ) -> None:
        super().__init__(detail, title=title, **extra)
        self.smtp_code = smtp_code


class PermanentFailure(DeliveryFailure):
    """Raised by a ``message_ready`` subscriber: do not retry, record it as failed."""

    slug = "permanent-failure"
    title = "Permanent delivery failure"


class TransientFailure(DeliveryFailure):
    """Raised by a subscriber for a failure worth retrying (any other exception is too).

    ``retry_after``: seconds the peer asked to wait (HTTP ``Retry-After``); the next
    attempt comes no sooner than that, nor later than ``delivery.backoff_max``.
    """

    slug = "transient-failure"
    title = "Transient delivery failure"

    def __init__(
        self,
        detail: str,
        *,
        smtp_code: int | None = None,
        retry_after: float | None = None,
        title: str | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, smtp_code=smtp_code, title=title, **extra)
        self.retry_after = retry_after


class PartialDelivery(DeliveryFailure):
    """The relay accepted the message for some recipients and refused others.

    ``refused`` maps each refused recipient to ``(code, text)``. Recipients refused with
    a 4xx code are retried (only they); 5xx refusals are final.
    """

    slug = "partial-delivery"
    title = "Some recipients were refused"

    def __init__(self, detail: str, *, accepted: list[str], refused: dict[str, tuple[int, str]]):
        codes = sorted({code for code, _ in refused.values()})
        super().__init__(detail, smtp_code=codes[-1] if codes else None)
        self.accepted = accepted
        self.refused = refused

    @property
    def retry_recipients(self) -> list[str]:
        return [rcpt for rcpt, (code, _) in self.refused.items() if 400 <= code < 500]


class OutboxUnavailable(NotifierError, OSError):
    """The outbox could not store the message: nothing was accepted (503)."""

    status = 503
    slug = "outbox-unavailable"
    title = "The message could not be stored"


class IdempotencyConflict(NotifierError):
    """The same ``Idempotency-Key`` is being used by a request still in progress (409)."""

    status = 409
    slug = "idempotency-key-in-use"
    title = "A request with this Idempotency-Key is in progress"

    def __init__(self, key: str) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still being handled; retry later",
            idempotency_key=key[:255],
        )


class IdempotencyMismatch(NotifierError, ValueError):
    """The ``Idempotency-Key`` was used before with a different request (422)."""

    status = 422
    slug = "idempotency-key-reused"
    title = "Idempotency-Key reused with a different request"


class InvalidIdempotencyKey(NotifierError, ValueError):
    """The ``Idempotency-Key`` header is empty, too long or not printable ASCII (400)."""

    status = 400
    slug = "invalid-idempotency-key"
    title = "Invalid Idempotency-Key"


class InvalidQuery(NotifierError, ValueError):
    """A query parameter has a value the endpoint does not accept (400)."""

    status = 400
    slug = "invalid-query"
    title = "Invalid query parameter"


class NothingToRetry(NotifierError):
    """``POST /v1/messages/<id>/retry`` on a message that has no failed delivery (409)."""

    status = 409
    slug = "nothing-to-retry"
    title = "The message has no failed delivery"


class Unauthorized(NotifierError, PermissionError):
    """No valid ``Authorization: Bearer`` token where tokens are configured (401)."""

    status = 401
    slug = "unauthorized"
    title = "A valid API token is required"
    headers = {"WWW-Authenticate": 'Bearer realm="notifier"'}  # noqa: RUF012


class Forbidden(NotifierError, PermissionError):
    """The token is valid but lacks the scope this route needs (403)."""

    status = 403
    slug = "forbidden"
    title = "The token lacks the scope for this request"


class RateLimited(NotifierError):
    """The caller exceeded its request rate (429, with ``Retry-After``)."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.headers = {"Retry-After": str(retry_after)}


class UnknownMessage(NotifierError, LookupError):
    """No message has this id."""

    status = 404
    slug = "unknown-message"
    title = "Unknown message"
