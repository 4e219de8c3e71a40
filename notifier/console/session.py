"""The console's session cookie and its CSRF token.

A session is a cookie signed with itsdangerous (a dependency of Quart): the name of the
token that signed in (None on an instance without tokens) and a random nonce, with the
time it was issued; it lasts :data:`SESSION_SECONDS`. The CSRF token of a session is an
HMAC of its nonce, sent back in each form (``csrf``) or ``X-CSRF-Token`` header.

The signing key comes from the admin tokens' digests (:meth:`Authenticator.derive_key`),
so every replica with the same settings accepts the same sessions, and changing or
removing the admin tokens ends every session. An instance without tokens has no secret
to derive from: its key is random per process, and a restart (or another replica) only
means the page issues a new session on its next load.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

__all__ = ["COOKIE_NAME", "SESSION_SECONDS", "Session", "SessionSigner"]

COOKIE_NAME = "notifier_console"
#: How long a sign-in lasts; the cookie's Max-Age and the signature's age limit.
SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session: who signed in (None: an open instance) and its CSRF token."""

    token_name: str | None
    csrf: str


class SessionSigner:
    """Issues and checks session cookie values with one key."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key if key is not None else os.urandom(32)
        self._serializer = URLSafeTimedSerializer(self._key, salt="notifier.console.session")

    def issue(self, token_name: str | None) -> tuple[str, Session]:
        """A new cookie value for ``token_name``, and the session it stands for."""
        nonce = os.urandom(16).hex()
        value = self._serializer.dumps({"token": token_name, "nonce": nonce})
        return value, Session(token_name=token_name, csrf=self._csrf(nonce))

    def read(self, value: str | None) -> Session | None:
        """The session a cookie value stands for, or None when it is missing, forged,
        malformed or older than :data:`SESSION_SECONDS`."""
        if not value or len(value) > 4096:
            return None
        try:
            data: Any = self._serializer.loads(value, max_age=SESSION_SECONDS)
        except BadSignature:  # also SignatureExpired, its subclass
            return None
        if not isinstance(data, dict):
            return None
        token, nonce = data.get("token"), data.get("nonce")
        if not isinstance(nonce, str) or not (token is None or isinstance(token, str)):
            return None
        return Session(token_name=token, csrf=self._csrf(nonce))

    def _csrf(self, nonce: str) -> str:
        return hmac.new(self._key, f"csrf:{nonce}".encode(), hashlib.sha256).hexdigest()
