"""API tokens: ``Authorization: Bearer <token>``, each with scopes.

``send`` covers ``POST /v1/render/*``, ``POST /v1/send/*`` and ``GET /v1/messages/<id>``;
``admin`` covers everything else under ``/v1``. ``/healthz``, ``/readyz``, ``/metrics``
and the API description need no token. With no tokens configured the API is open (a
warning is logged when the app starts), which suits local use only.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from typing import Literal, NoReturn

from quart import Quart, g, request

from notifier.api.ratelimit import Rate, RateLimiter, client_network
from notifier.errors import Forbidden, Unauthorized
from notifier.settings import AuthSettings

__all__ = [
    "API_PREFIX",
    "FAILED_AUTHENTICATION_RATE",
    "SEND_ENDPOINTS",
    "Authenticator",
    "Scope",
    "required_scope",
]

logger = logging.getLogger("notifier.auth")

Scope = Literal["send", "admin"]

#: Paths under this prefix need a token (when tokens are configured) and count against
#: the caller's rate limit (``notifier.api.ratelimit``).
API_PREFIX = "/v1/"

#: Endpoints the ``send`` scope opens; every other ``/v1`` endpoint needs ``admin``.
SEND_ENDPOINTS = frozenset(
    {"render.render_message", "messages.send_message", "messages.get_message"}
)


def required_scope(path: str, endpoint: str) -> Scope | None:
    """The scope a route needs when tokens are configured; None: it needs no token."""
    if not path.startswith(API_PREFIX):
        return None
    return "send" if endpoint in SEND_ENDPOINTS else "admin"


#: Failed authentications allowed per client address while the global rate limit is off
#: (the default): guessing tokens still runs into 429, and a caller with a valid token
#: never meets this limit.
FAILED_AUTHENTICATION_RATE = Rate(per_minute=60, burst=10)


@dataclass(frozen=True, slots=True)
class _KnownToken:
    name: str
    digest: bytes
    scopes: frozenset[str]


class Authenticator:
    """Checks each ``/v1`` request's bearer token and scope (a ``before_request`` hook)."""

    def __init__(self, settings: AuthSettings, *, limiter: RateLimiter | None = None) -> None:
        self._limiter = limiter
        # Only digests are kept: comparing fixed-length digests in constant time leaks
        # neither a token's content nor its length through timing.
        self._tokens = [
            _KnownToken(
                name=token.name,
                digest=_digest(token.token.get_secret_value()),
                scopes=frozenset(token.scopes),
            )
            for token in settings.tokens
        ]

    @property
    def open(self) -> bool:
        return not self._tokens

    def authenticate(self, presented: str) -> tuple[str, frozenset[str]]:
        """The name and scopes of the token ``presented`` (the operator console's sign-in
        uses this); :class:`Unauthorized`, or 429 after too many failures, otherwise."""
        token = self._authenticate(f"Bearer {presented}")
        return token.name, token.scopes

    def scopes_of(self, name: str) -> frozenset[str]:
        """The scopes of the token named ``name``; empty when no token has that name."""
        for token in self._tokens:
            if token.name == name:
                return token.scopes
        return frozenset()

    def derive_key(self, purpose: str) -> bytes | None:
        """A key for ``purpose`` made from the admin tokens' digests, the same in every
        process and replica with these settings, and a different one once an admin token
        changes (so what it signed stops being valid); None without admin tokens."""
        digests = sorted(token.digest for token in self._tokens if "admin" in token.scopes)
        if not digests:
            return None
        return hmac.new(b"".join(digests), purpose.encode("utf-8"), hashlib.sha256).digest()

    def init_app(self, app: Quart) -> None:
        app.before_request(self.check)

        @app.before_serving
        async def warn_when_open() -> None:
            if self.open:
                logger.warning(
                    "no API tokens are configured (auth.tokens): the API is open to anyone"
                    " who can reach it; configure tokens outside local use"
                )

    async def check(self) -> None:
        g.token_name = None
        if self.open or not request.path.startswith(API_PREFIX):
            return
        token = self._authenticate(request.headers.get("Authorization", ""))
        g.token_name = token.name
        rule = request.url_rule
        if rule is None:
            return  # unknown path: routing answers 404/405 to an authenticated caller
        needed = required_scope(request.path, rule.endpoint)
        if needed is not None and needed not in token.scopes and "admin" not in token.scopes:
            raise Forbidden(
                f"token {token.name!r} lacks the {needed!r} scope for this request",
                scope=needed,
            )

    def _authenticate(self, header: str) -> _KnownToken:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            self._refuse("send 'Authorization: Bearer <token>'")
        digest = _digest(presented.strip())
        found = None
        for token in self._tokens:  # compare with every token: no early exit on a match
            if hmac.compare_digest(digest, token.digest):
                found = token
        if found is None:
            self._refuse("the token is not valid")
        return found

    def _refuse(self, detail: str) -> NoReturn:
        if self._limiter is not None:
            # Guessing tokens costs from a bucket per address: the global rate when one
            # is set, else a fixed one, so turning limits off does not invite guessing.
            rate = self._limiter.default_rate
            self._limiter.refuse_if_limited(
                f"failed authentication {client_network()}",
                "too many failed authentications; try again later",
                rate=rate if rate.limited else FAILED_AUTHENTICATION_RATE,
            )
        raise Unauthorized(detail)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
