"""Who may use the console, CSRF checks, and the headers of every console answer.

With no API tokens configured the console is open, as the API is: each visitor gets a
session anyway, for its CSRF token. With tokens, a session comes only from signing in
with a token that has the ``admin`` scope, checked by the API's own
:class:`~notifier.api.auth.Authenticator` (constant-time digest comparison and the rate
limit on failed attempts included).

A page asked for without a session redirects to the sign-in form; the script's JSON
endpoints answer 401 instead. Every request that changes something (any method but GET,
HEAD and OPTIONS) must come from the console's own pages: a cross-site ``Origin`` or
``Sec-Fetch-Site`` is refused, and so is a missing or wrong CSRF token (the sign-in form,
which has no session yet, relies on the first two).

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from markupsafe import Markup
from quart import Response, g, request

from notifier.api.auth import Authenticator
from notifier.console.session import COOKIE_NAME, SESSION_SECONDS, Session, SessionSigner
from notifier.errors import Forbidden, Unauthorized

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CSRF_HEADER",
    "ConsoleAccess",
    "csrf_field",
    "see_other",
]

#: What a console page may load: its own scripts, styles and frames, nothing inline, and
#: it may not be framed itself.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
#: Paths reachable without a session (with tokens configured).
PUBLIC_PATHS = frozenset({"/console/sign-in"})
PUBLIC_PREFIXES = ("/console/static/",)
#: Endpoints the page's script calls: refused with a 401 problem rather than redirected.
SCRIPT_ENDPOINTS = frozenset({"console.template_version_view", "console.preview"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The title of a change refused for where it came from (no scope is missing).
REFUSED = "Request refused: not from a console page"


def see_other(location: str) -> Response:
    """A 303 to a path of this service (relative: never built from the Host header)."""
    return Response("", status=303, headers={"Location": location})


def csrf_field() -> Markup:
    """The hidden form field carrying the current session's CSRF token."""
    session: Session | None = getattr(g, "console_session", None)
    token = session.csrf if session is not None else ""
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token)


class ConsoleAccess:
    """The console's ``before_request`` check, sign-in and cookies."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator
        self.open = authenticator.open
        self._signer = SessionSigner(authenticator.derive_key("notifier console session"))

    async def check(self) -> Response | None:
        """Load the session into ``g.console_session``; refuse or redirect without one
        where one is needed; refuse a cross-site or CSRF-less change."""
        session = self._signer.read(request.cookies.get(COOKIE_NAME))
        if session is not None and not self.open:
            # The token may have lost its admin scope (or gone) since the sign-in.
            name = session.token_name
            if name is None or "admin" not in self._authenticator.scopes_of(name):
                session = None
        g.console_session = session
        if session is not None:
            g.token_name = session.token_name  # the request's log line names the operator
        path = request.path
        if request.method not in SAFE_METHODS:
            _refuse_cross_site()
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        if session is None:
            if self.open:
                if request.method in SAFE_METHODS:
                    g.console_new_cookie, g.console_session = self._signer.issue(None)
                    return None
                raise Forbidden("the console page is out of date: load it again", title=REFUSED)
            if request.method in SAFE_METHODS and request.endpoint not in SCRIPT_ENDPOINTS:
                return see_other("/console/sign-in")
            raise Unauthorized("sign in to the console first")
        if request.method not in SAFE_METHODS:
            await _check_csrf(session)
        return None

    def sign_in(self, presented: str) -> str:
        """A new session cookie value for the token ``presented``; :class:`Unauthorized`
        for a token that is not valid (rate limited as the API's), :class:`Forbidden`
        for one without the admin scope."""
        presented = presented.strip()
        if not presented:
            raise Unauthorized("enter a token")
        name, scopes = self._authenticator.authenticate(presented)
        if "admin" not in scopes:
            raise Forbidden(
                f"token {name!r} lacks the 'admin' scope the console needs", scope="admin"
            )
        cookie, session = self._signer.issue(name)
        g.console_session = session
        return cookie

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE_NAME,
            value,
            max_age=SESSION_SECONDS,
            path="/console",
            secure=request.scheme == "https",
            httponly=True,
            samesite="Strict",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(
            COOKIE_NAME,
            path="/console",
            secure=request.scheme == "https",
            httponly=True,
            samesite="Strict",
        )
        g.console_new_cookie = None

    def protect(self, response: Response) -> Response:
        """Add the console's headers; set a cookie issued during this request."""
        new_cookie = getattr(g, "console_new_cookie", None)
        if new_cookie is not None:
            self.set_cookie(response, new_cookie)
        # setdefault: the preview frame's answer carries its own, stricter policy.
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.path.startswith(PUBLIC_PREFIXES):
            # Pages show messages and addresses: no shared or back-button cache keeps them.
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def _refuse_cross_site() -> None:
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        # The browser says where the request comes from; it knows the page's real
        # origin, which notifier behind a proxy that ends TLS does not.
        if fetch_site not in ("same-origin", "none"):
            raise Forbidden(
                f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:40]})", title=REFUSED
            )
        return
    # Browsers without Sec-Fetch-Site: the Origin's host must be this console's. Only the
    # host: behind a proxy that ends TLS the page's https:// origin reaches notifier as
    # http. (The CSRF token is checked as well in either case.)
    origin = request.headers.get("Origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
        raise Forbidden(
            "cross-origin request refused (Origin does not match this console)", title=REFUSED
        )


async def _check_csrf(session: Session) -> None:
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        form = await request.form
        presented = form.get(CSRF_FIELD, "")
    if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
        raise Forbidden(
            "the CSRF token is missing or wrong: load the console page again", title=REFUSED
        )
