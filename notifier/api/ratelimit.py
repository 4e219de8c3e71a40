"""Per-caller request rate limit: a token bucket per API token (per client address when
no tokens are configured), answering 429 with ``Retry-After``.

Buckets live in the process: with ``--workers N`` each worker allows the configured rate,
so the service as a whole allows up to N times it.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from quart import Quart, g, request

from notifier.errors import RateLimited
from notifier.settings import LimitsSettings

__all__ = ["RateLimiter", "client_network"]

#: Buckets kept at most; the least recently used are dropped beyond this.
MAX_BUCKETS = 10_000


def client_network(address: str | None = None) -> str:
    """The caller's address for rate limiting: IPv6 callers by their /64, since one
    host commonly holds a whole /64 and could rotate through it."""
    address = address if address is not None else (request.remote_addr or "")
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6:
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address


class RateLimiter:
    """Token buckets keyed by caller; ``init_app`` checks every ``/v1`` request."""

    def __init__(
        self, settings: LimitsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._per_second = settings.rate_per_minute / 60.0
        self._capacity = float(settings.rate_burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last time)

    def init_app(self, app: Quart) -> None:
        if self._per_second > 0:
            app.before_request(self.check)

    async def check(self) -> None:
        if not request.path.startswith("/v1/"):
            return
        caller = getattr(g, "token_name", None) or f"address {client_network()}"
        self.refuse_if_limited(
            caller, f"{caller} sent more than {self._per_second * 60:g} requests a minute"
        )

    def refuse_if_limited(self, caller: str, detail: str) -> None:
        """Take one request from ``caller``'s bucket or raise :class:`RateLimited`."""
        if self._per_second <= 0:
            return
        wait = self.take(caller)
        if wait > 0:
            raise RateLimited(detail, retry_after=math.ceil(wait))

    def take(self, caller: str) -> float:
        """Take one request from ``caller``'s bucket; return 0, or seconds to wait."""
        now = self._clock()
        tokens, last = self._buckets.pop(caller, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - last) * self._per_second)
        if tokens >= 1:
            tokens -= 1
            wait = 0.0
        else:
            wait = (1 - tokens) / self._per_second
        self._buckets[caller] = (tokens, now)  # re-inserted: dict order is recency
        if len(self._buckets) > MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]
        return wait
