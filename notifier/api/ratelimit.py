"""Per-caller request rate limits: a token bucket per API token (per client address when
the caller has no token), answering 429 with ``Retry-After``.

Limits are opt-in. ``limits.rate_per_minute`` (0, off, by default) applies to every caller;
a token's own ``rate_per_minute`` applies to that token whatever the global setting is.

Buckets live in the process: with ``--workers N`` each worker allows the configured rate,
so the service as a whole allows up to N times it.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quart import Quart, g, request

from notifier.errors import RateLimited
from notifier.settings import ApiToken, LimitsSettings

__all__ = ["Rate", "RateLimiter", "client_network"]

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


@dataclass(frozen=True, slots=True)
class Rate:
    """A steady rate (``per_minute``; 0 is no limit) and the burst allowed above it."""

    per_minute: int
    burst: int

    @property
    def limited(self) -> bool:
        return self.per_minute > 0


class RateLimiter:
    """Token buckets keyed by caller; ``init_app`` checks every ``/v1`` request."""

    def __init__(
        self,
        settings: LimitsSettings,
        *,
        tokens: Sequence[ApiToken] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_rate = Rate(settings.rate_per_minute, settings.rate_burst)
        self._token_rates = {
            token.name: Rate(
                self.default_rate.per_minute
                if token.rate_per_minute is None
                else token.rate_per_minute,
                self.default_rate.burst if token.rate_burst is None else token.rate_burst,
            )
            for token in tokens
        }
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last time)

    def init_app(self, app: Quart) -> None:
        rates = [self.default_rate, *self._token_rates.values()]
        if any(rate.limited for rate in rates):
            app.before_request(self.check)

    async def check(self) -> None:
        if not request.path.startswith("/v1/"):
            return
        token_name = getattr(g, "token_name", None)
        if token_name is None:
            caller, rate = f"address {client_network()}", self.default_rate
        else:
            caller, rate = token_name, self._token_rates.get(token_name, self.default_rate)
        self.refuse_if_limited(
            caller, f"{caller} sent more than {rate.per_minute} requests a minute", rate=rate
        )

    def refuse_if_limited(self, caller: str, detail: str, *, rate: Rate | None = None) -> None:
        """Take one request from ``caller``'s bucket or raise :class:`RateLimited`.

        ``rate`` defaults to the global one (``limits``); no limit when it is 0.
        """
        rate = rate or self.default_rate
        if not rate.limited:
            return
        wait = self.take(caller, rate)
        if wait > 0:
            raise RateLimited(detail, retry_after=math.ceil(wait))

    def take(self, caller: str, rate: Rate | None = None) -> float:
        """Take one request from ``caller``'s bucket; return 0, or seconds to wait."""
        rate = rate or self.default_rate
        if not rate.limited:
            return 0.0
        per_second = rate.per_minute / 60.0
        now = self._clock()
        tokens, last = self._buckets.pop(caller, (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - last) * per_second)
        if tokens >= 1:
            tokens -= 1
            wait = 0.0
        else:
            wait = (1 - tokens) / per_second
        self._buckets[caller] = (tokens, now)  # re-inserted: dict order is recency
        if len(self._buckets) > MAX_BUCKETS:
            del self._buckets[next(iter(self._buckets))]
        return wait
