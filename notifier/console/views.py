"""The console's pages and the two small JSON endpoints its script calls.

Every view here is thin: templates come from the renderer's :class:`TemplateStore`, a
preview is the render path of ``POST /v1/render/<name>`` (the same errors, as the same
problem bodies), messages come from the outbox's listing, and a retry is
:meth:`Sending.retry`, the operation behind ``POST /v1/messages/<id>/retry``.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import base64
import email.policy
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from quart import (
    Blueprint,
    Response,
    current_app,
    g,
    render_template,
    request,
    send_from_directory,
)
from quart_schema import hide
from werkzeug.exceptions import NotFound

from notifier.api.render import (
    MessageRequest,
    json_object,
    message_view_async,
    read_json_object,
    render_timed,
)
from notifier.console.access import ConsoleAccess, csrf_field, see_other
from notifier.errors import (
    BadRequestBody,
    NothingToRetry,
    NotifierError,
    UnknownMessage,
    UnknownTemplate,
)
from notifier.outbox import DELIVERY_STATUSES, DeliveryStatus, MessageRecord, Outbox
from notifier.problems import PROBLEM_TYPE_BASE, problem_body
from notifier.renderer import Renderer
from notifier.sending import Sending
from notifier.templates import NAME_PATTERN

__all__ = ["console"]

PACKAGE_DIR = Path(__file__).parent
STATIC_DIR = PACKAGE_DIR / "static"

console = Blueprint(
    "console", __name__, url_prefix="/console", template_folder=str(PACKAGE_DIR / "templates")
)

#: Messages on one page of the listing.
PAGE_SIZE = 50
#: Rows one listing reads from the outbox at most while filtering by template or time:
#: a filter that matches little costs a bounded amount of work, not a scan of everything.
MAX_SCANNED = 2000
#: Rows asked of the outbox at a time while filtering.
BATCH = 200
#: The time filter's choices: (value, label, seconds back; 0 for all).
SINCE_CHOICES = (
    ("1h", "last hour", 3600),
    ("24h", "last 24 hours", 24 * 3600),
    ("7d", "last 7 days", 7 * 24 * 3600),
    ("all", "any time", 0),
)
#: Files of the templates directory looked at for the preview's version, at most.
MAX_VERSION_FILES = 1000
#: The policy of a previewed HTML body inside its sandboxed frame: the message's own
#: inline styles and embedded images, nothing loaded from anywhere, no script.
HTML_PREVIEW_POLICY = (
    "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)


def _access() -> ConsoleAccess:
    access: ConsoleAccess = current_app.extensions["notifier.console"]
    return access


def _renderer() -> Renderer:
    renderer: Renderer = current_app.extensions["notifier.renderer"]
    return renderer


@console.before_request
async def check_access() -> Response | None:
    return await _access().check()


@console.after_request
async def protect(response: Response) -> Response:
    return _access().protect(response)


@console.context_processor
async def page_globals() -> dict[str, Any]:
    return {"csrf_field": csrf_field, "session": getattr(g, "console_session", None)}


# -- signing in and out ------------------------------------------------------------------


@console.get("/sign-in")
@hide
async def sign_in_form() -> Response | str:
    if _access().open or getattr(g, "console_session", None) is not None:
        return see_other("/console")
    return await render_template("console/sign_in.html", error=None)


@console.post("/sign-in")
@hide
async def sign_in() -> Response:
    access = _access()
    if access.open:
        return see_other("/console")
    form = await request.form
    try:
        cookie = access.sign_in(form.get("token", ""))
    except NotifierError as error:
        page = await render_template("console/sign_in.html", error=error.detail)
        return Response(page, status=error.status, headers=error.headers)
    response = see_other("/console")
    access.set_cookie(response, cookie)
    return response


@console.post("/sign-out")
@hide
async def sign_out() -> Response:
    response = see_other("/console/sign-in" if not _access().open else "/console")
    _access().clear_cookie(response)
    return response


@console.get("/static/<path:filename>")
@hide
async def static(filename: str) -> Response:
    response = await send_from_directory(STATIC_DIR, filename)
    response.cache_control.max_age = 300
    return response


# -- templates ---------------------------------------------------------------------------


@console.get("")
@hide
async def template_list() -> str:
    store = _renderer().templates
    infos = [store.info(name) for name in store.names()]
    return await render_template(
        "console/templates.html", templates=infos, directory=store.directory
    )


def _template_name(name: str) -> str:
    if NAME_PATTERN.fullmatch(name) is None or name not in _renderer().templates.names():
        raise UnknownTemplate(f"no template named {name[:100]!r}", template=name[:100])
    return name


@console.get("/templates/<name>")
@hide
async def template_page(name: str) -> str:
    store = _renderer().templates
    info = store.info(_template_name(name))
    example_error = None
    try:
        example = store.example(name)
    except NotifierError as error:
        example, example_error = None, error.detail
    context_text = json.dumps(example if example is not None else {}, indent=2, ensure_ascii=False)
    return await render_template(
        "console/template.html",
        info=info,
        context_text=context_text,
        example_error=example_error,
        version=_directory_fingerprint(store.directory),
    )


@console.get("/templates/<name>/version")
@hide
async def template_version_view(name: str) -> dict[str, Any]:
    """What the preview polls: it renders again when this changes."""
    store = _renderer().templates
    info = store.info(_template_name(name))
    return {"version": _directory_fingerprint(store.directory), "valid": info.error is None}


@console.post("/templates/<name>/preview")
@hide
async def preview(name: str) -> dict[str, Any]:
    """Render as ``POST /v1/render/<name>`` would: the message, or the problem the API
    would answer with (as ``problem``: the page shows it, the request itself succeeded)."""
    _template_name(name)
    try:
        context, size = await read_json_object()
        asked = MessageRequest(context=context, context_bytes=size, attachments=())
        composed = await render_timed(_renderer(), name, asked)
    except NotifierError as error:
        return {
            "problem": problem_body(
                error.status,
                detail=error.detail,
                title=error.title,
                type_=PROBLEM_TYPE_BASE + error.slug,
                **error.extra,
            )
        }
    return {"message": await message_view_async(composed)}


@console.post("/templates/<name>/html")
@hide
async def preview_html(name: str) -> Response:
    """The HTML part rendered with the form's context, for the page's sandboxed frame
    (a form targets it: a frame's document then has this policy, not the page's)."""
    _template_name(name)
    form = await request.form
    html = "<p>The context is not a JSON object.</p>"
    try:
        # The API's own reading: the same 400s (lone surrogates, NaN) as /v1/render.
        context = json_object(form.get("context", ""), what="the context")
        valid = True
    except BadRequestBody:
        valid = False
    if valid:
        try:
            composed = await _renderer().render_async(name, context)
        except NotifierError:
            html = "<p>No preview: see the problem above the frame.</p>"
        else:
            body = (await message_view_async(composed))["html"]
            if body is None:
                html = "<p>This message has no HTML part.</p>"
            else:
                html = _with_inline_images(composed.data, body)
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = HTML_PREVIEW_POLICY
    response.headers["X-Frame-Options"] = "SAMEORIGIN"  # framed by the console page
    return response


def _with_inline_images(data: bytes, html: str) -> str:
    """``html`` with each ``cid:`` URL of an image the message carries replaced by a
    ``data:`` URL of it: a browser cannot resolve ``cid:``, and the frame's policy lets
    it show embedded images only."""
    message = BytesParser(policy=email.policy.default).parsebytes(data)
    for part in message.walk():
        content_id = part.get("Content-ID", "")
        if part.get_content_maintype() != "image" or not content_id:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        encoded = base64.b64encode(payload).decode("ascii")
        url = f"data:{part.get_content_type()};base64,{encoded}"
        html = html.replace(f"cid:{content_id.strip().strip('<>')}", url)
    return html


def _directory_fingerprint(directory: Path) -> str:
    """A fingerprint of the templates directory (names, sizes, modification times): it
    changes when a template, an include or an example is edited, added or removed."""
    digest = hashlib.sha256()
    for path in itertools.islice(_files_under(directory), MAX_VERSION_FILES):
        try:
            stat = os.stat(path)
        except OSError:
            continue  # removed meanwhile: the next poll sees it gone
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _files_under(directory: Path) -> Iterator[str]:
    for root, dirs, files in os.walk(directory):
        dirs.sort()  # a stable order: the same files give the same fingerprint
        for file_name in sorted(files):
            yield os.path.join(root, file_name)


# -- messages ----------------------------------------------------------------------------


@console.get("/messages")
@hide
async def message_list() -> str:
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    status = request.args.get("status", "")
    statuses = tuple(one for one in DELIVERY_STATUSES if one == status) or DELIVERY_STATUSES
    template = request.args.get("template", "")
    since = request.args.get("since", "24h")
    seconds = next((s for value, _, s in SINCE_CHOICES if value == since), None)
    if seconds is None:
        since, seconds = "24h", 24 * 3600
    cutoff = time.time() - seconds if seconds else None
    before = request.args.get("before") or None
    found: list[MessageRecord] = []
    for one_status in statuses:
        found += await _matching(
            outbox, one_status, template=template, cutoff=cutoff, before=before
        )
    found.sort(key=lambda record: record.id, reverse=True)
    page = found[:PAGE_SIZE]
    return await render_template(
        "console/messages.html",
        messages=page,
        older=page[-1].id if len(found) > PAGE_SIZE else None,
        status=status if status in DELIVERY_STATUSES else "",
        statuses=DELIVERY_STATUSES,
        template=template,
        templates=_renderer().templates.names(),
        since=since,
        since_choices=SINCE_CHOICES,
    )


async def _matching(
    outbox: Outbox,
    status: DeliveryStatus,
    *,
    template: str,
    cutoff: float | None,
    before: str | None,
) -> list[MessageRecord]:
    """Up to one page and one more of ``status`` messages matching the filters, newest
    first, reading at most :data:`MAX_SCANNED` rows."""
    matched: list[MessageRecord] = []
    scanned = 0
    while scanned < MAX_SCANNED:
        batch = await outbox.list_messages(status=status, limit=BATCH, before=before)
        scanned += len(batch)
        for record in batch:
            if cutoff is not None and record.created_at < cutoff:
                return matched  # newest first: everything after is older still
            if not template or record.template == template:
                matched.append(record)
                if len(matched) > PAGE_SIZE:
                    return matched
        if len(batch) < BATCH:
            break
        before = batch[-1].id
    return matched


@console.get("/messages/<message_id>")
@hide
async def message_page(message_id: str) -> str:
    outbox: Outbox = current_app.extensions["notifier.outbox"]
    record = await outbox.get(message_id)
    if record is None:
        raise UnknownMessage(f"no message with id {message_id[:100]!r}", id=message_id[:100])
    return await render_template(
        "console/message.html",
        message=record,
        failed=any(delivery.status == "failed" for delivery in record.deliveries),
        retried=request.args.get("retried") == "1",
        error=None,
    )


@console.post("/messages/<message_id>/retry")
@hide
async def retry(message_id: str) -> Response:
    sending: Sending = current_app.extensions["notifier.sending"]
    try:
        record = await sending.retry(message_id)
    except NothingToRetry as error:
        outbox: Outbox = current_app.extensions["notifier.outbox"]
        current = await outbox.get(message_id)
        if current is None:
            raise NotFound() from None
        page = await render_template(
            "console/message.html", message=current, failed=False, retried=False, error=error.detail
        )
        return Response(page, status=409)
    return see_other(f"/console/messages/{record.id}?retried=1")
