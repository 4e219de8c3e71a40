"""The ``webhook`` subscriber type: POST each message's summary as signed JSON.

Configured as a mapping in ``subscribers`` (``{name, type: webhook, url, secret}``). The
body is ``{"id", "template", "message_id", "sender", "recipients", "created_at"}`` (plus
``template_version`` when the message carries one), signed per Standard Webhooks
(https://www.standardwebhooks.com/): ``webhook-id`` is the same on every retry of one
message to one subscriber, so the receiver can drop duplicates; ``webhook-timestamp``
is the time of the attempt; ``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256,
keyed with the secret's bytes, of ``<id>.<timestamp>.<body>``.

Outcomes: 2xx -> delivered. 408, 429, 5xx, timeouts and connection errors -> retried per
the ``delivery`` settings (a 429 or 503 with ``Retry-After`` in seconds is not retried
sooner than that, up to ``delivery.backoff_max``). Any other answer is final
(:class:`PermanentFailure`): other 4xx, and 3xx too, since redirects are not followed
(a redirect means the URL in settings is not the receiver's; retrying would not change
that. Fix the URL, then retry the failed messages). The response body is never read
beyond a small bound, logged or stored: only its status code is.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from notifier import __version__
from notifier.errors import PermanentFailure, TransientFailure
from notifier.outbox import iso_time
from notifier.settings import WebhookSubscriberSettings
from notifier.signals import OutboundMessage

__all__ = ["WebhookSubscriber", "secret_key", "signature", "webhook_id"]

#: Statuses below 500 that are still worth retrying (RFC 9110: request timeout; too
#: many requests).
RETRIED_CLIENT_ERRORS = frozenset({408, 429})
#: Bytes of a response body read (and dropped) so its connection can be reused; past
#: this the connection is closed instead.
MAX_DRAINED_BYTES = 64 * 1024


def webhook_id(subscriber: str, message_id: str) -> str:
    """The ``webhook-id`` of one message for one subscriber: stable across retries."""
    digest = hashlib.sha256(f"{subscriber}\0{message_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def secret_key(secret: str) -> bytes:
    """The HMAC key in a ``whsec_<base64>`` secret (padding optional, as receivers'
    libraries accept it)."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def signature(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for ``body``: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


class WebhookSubscriber:
    """POSTs to one URL over one pooled ``httpx.AsyncClient`` (opened on first use,
    closed with the app)."""

    def __init__(
        self,
        settings: WebhookSubscriberSettings,
        *,
        timeout: float,
        max_connections: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = settings.name
        self._url = settings.url.get_secret_value()
        self._key = secret_key(settings.secret.get_secret_value())
        self._timeout = timeout
        self._max_connections = max_connections
        self._clock = clock
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(max_connections=self._max_connections),
                follow_redirects=False,
                headers={"user-agent": f"notifier/{__version__}"},
                # Settings say where to post; proxies from the environment would not.
                trust_env=False,
            )
        return self._client

    async def __call__(
        self, sender: Any, *, message: OutboundMessage, **kwargs: Any
    ) -> dict[str, Any]:
        body = json.dumps(self._payload(message), separators=(",", ":")).encode()
        msg_id = webhook_id(self.name, message.id)
        timestamp = int(self._clock())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(
                self._key, msg_id=msg_id, timestamp=timestamp, body=body
            ),
        }
        # Error texts name the subscriber, never the URL: it may hold a token.
        try:
            async with self._http().stream(
                "POST", self._url, content=body, headers=headers
            ) as response:
                await _drain(response)
        except httpx.TimeoutException:
            raise TransientFailure(
                f"webhook {self.name}: no answer within {self._timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise TransientFailure(
                f"webhook {self.name}: {type(exc).__name__} (connection failed)"
            ) from None
        return _outcome(self.name, response, now=self._clock())

    def _payload(self, message: OutboundMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": message.id,
            "template": message.template,
            "message_id": message.message_id,
            "sender": message.sender,
            "recipients": message.recipients,
            "created_at": iso_time(message.created_at.timestamp()),
        }
        # Messages stored before versions were recorded have none.
        if message.template_version is not None:
            payload["template_version"] = message.template_version
        return payload

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


async def _drain(response: httpx.Response) -> None:
    """Read a small body so the connection goes back to the pool; never keep it."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > MAX_DRAINED_BYTES:
            break  # closing the stream closes this connection instead


def _outcome(name: str, response: httpx.Response, *, now: float) -> dict[str, Any]:
    status = response.status_code
    if 200 <= status < 300:
        return {"http_status": status}
    text = f"webhook {name}: the receiver answered {status}"
    if status >= 500 or status in RETRIED_CLIENT_ERRORS:
        raise TransientFailure(text, retry_after=_retry_after(response, now=now))
    if 300 <= status < 400:
        text += " (a redirect: not followed; set the receiver's final URL)"
    raise PermanentFailure(text)


def _retry_after(response: httpx.Response, *, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 10.2.3) as seconds from ``now``: delay seconds or an
    HTTP date; None when absent or unreadable."""
    value = response.headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit():  # not "²", which isdigit() also accepts
        # Ten digits are over 300 years; longer ones (int() refuses 4,300 and more) too.
        return float(min(int(value[:10]), 10**9))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)
