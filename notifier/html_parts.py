"""What HTML parts get beyond autoescaping: CSS inlining, safe URLs and inline images.

* **CSS inlining.** Gmail and Outlook drop a ``<style>`` block, so after an ``.html.j2``
  part renders, css-inline copies its rules into ``style=""`` attributes. ``@media`` and
  other at-rules, which no attribute can hold, stay in a ``<style>`` element for the
  clients that read one. Stylesheets are never loaded (``load_remote_stylesheets``
  off): a ``<link>`` stays in the HTML for the mail client, and notifier fetches nothing.
  css-inline's own attributes say what happens to one element: ``data-css-inline="keep"``
  on a ``<style>`` keeps it as written as well, ``data-css-inline="ignore"`` on an
  element gives it no styles. A template holding the comment
  ``{# notifier: no-css-inline #}`` is not touched at all.
* **safe_url.** The filter ``{{ url | safe_url }}`` passes absolute ``http``, ``https``,
  ``mailto`` and ``tel`` URLs and turns anything else (``javascript:``, ``data:``,
  relative URLs, obfuscated schemes) into ``about:blank``.
* **Inline images.** ``{{ inline_image('logo.png') }}`` in an HTML part gives a ``cid:``
  URL for the file ``templates/assets/logo.png`` and records it; compose sends it as a
  multipart/related part with that Content-ID. Only image files inside the assets folder
  can be named, whatever the request data says.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from markupsafe import Markup

from notifier.errors import RenderBudgetExceeded, TemplateError
from notifier.sandbox import RenderState, SliceExhausted, unmark_active

__all__ = [
    "ASSETS_FOLDER",
    "IMAGE_TYPES",
    "LOOP_CSS_INLINE_CHARS",
    "NO_CSS_INLINE",
    "SAFE_URL_SCHEMES",
    "UNSAFE_URL_REPLACEMENT",
    "InlineImage",
    "TemplateAssets",
    "inline_css",
    "safe_url",
    "wants_css_inlining",
]

# -- safe_url ----------------------------------------------------------------------------

#: The URL schemes :func:`safe_url` lets through.
SAFE_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel"})
#: What :func:`safe_url` gives for any other URL: a page that does nothing, valid in both
#: ``href`` and ``src``.
UNSAFE_URL_REPLACEMENT = "about:blank"
# Browsers (the WHATWG URL parser) strip leading and trailing C0 controls and spaces and
# drop every tab and line break inside a URL before they read its scheme, which is how
# "  java\tscript:" still runs. The filter does the same before it reads the scheme.
_C0_AND_SPACE = "".join(chr(code) for code in range(0x21))
_TAB_OR_LINE_BREAK = re.compile("[\t\n\r]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def safe_url(value: Any) -> str:
    """Jinja filter ``{{ url | safe_url }}``: ``url`` when it is an absolute URL with a
    scheme in :data:`SAFE_URL_SCHEMES`, else :data:`UNSAFE_URL_REPLACEMENT`.

    An allow-list, read the way a browser reads the URL, so that no spelling of another
    scheme gets through: ``jAvAsCrIpT:`` (case), ``" javascript:"`` (leading spaces or
    control characters), ``java\\tscript:`` (tabs, line breaks), ``javascript&#58;``
    (an entity where the colon should be: no colon, no scheme, not let through).
    Relative URLs are refused too: a mail has no base URL to resolve them against.
    The result is plain text, so autoescaping still escapes it for the attribute.
    """
    if isinstance(value, Markup):
        text = value.unescape()  # what the browser will see once it decodes entities
    else:
        text = value if isinstance(value, str) else str(value)
    # A value printed earlier (a {% set %} block) still carries this render's markers.
    text = _TAB_OR_LINE_BREAK.sub("", unmark_active(text).strip(_C0_AND_SPACE))
    scheme = _SCHEME.match(text)
    if scheme is None or scheme[1].lower() not in SAFE_URL_SCHEMES:
        return UNSAFE_URL_REPLACEMENT
    if _CONTROL.search(text) is not None:
        return UNSAFE_URL_REPLACEMENT
    return text


# -- CSS inlining ------------------------------------------------------------------------

#: The comment that keeps css-inline away from a whole ``.html.j2`` template.
NO_CSS_INLINE = re.compile(r"\{#-?\s*notifier:\s*no-css-inline\s*-?#\}")
#: HTML parts up to this many characters are inlined on the event loop: css-inline parses
#: and writes the whole document whatever it holds, at 0.3 to 0.5 microseconds a
#: character (measured: 1.5 s for a 4.9 MB table, 1.7 s for a denser 3.6 MB one; 0.5 ms
#: for a 1 KB part), holding the GIL all the while. A longer part makes the render move
#: to a render process (docs/templates.md, "CSS inlining").
LOOP_CSS_INLINE_CHARS = 16 * 1024

_STYLE_ELEMENT = re.compile(r"<style[\s>]", re.IGNORECASE)
# One inliner for the process, built once: its options never change. No stylesheet is
# ever loaded (a <link> stays in the HTML, untouched, for the mail client to use), and
# at-rules no attribute can hold (@media, @font-face) stay in a <style> element.
_INLINER = css_inline.CSSInliner(
    load_remote_stylesheets=False,
    keep_link_tags=True,
    keep_at_rules=True,
)


def wants_css_inlining(html: str) -> bool:
    """Whether ``html`` has a ``<style>`` element, which is all css-inline acts on.

    Without one, the HTML is left exactly as rendered: css-inline would only parse and
    rewrite the whole document for nothing.
    """
    return _STYLE_ELEMENT.search(html) is not None


def inline_css(html: str, state: RenderState) -> str:
    """``html`` with its ``<style>`` rules copied into ``style`` attributes, within the
    render's budget.

    On the event loop (a render with a slice), an HTML part longer than
    :data:`LOOP_CSS_INLINE_CHARS` raises :class:`SliceExhausted` so that the render runs
    again in a render process. css-inline cannot be interrupted, so the time budget is
    checked once it returns; the characters it adds count against the output budget.
    """
    if state.slice_end is not None and len(html) > LOOP_CSS_INLINE_CHARS:
        raise SliceExhausted
    try:
        inlined: str = _INLINER.inline(html)
    except (css_inline.InlineError, ValueError) as exc:
        raise TemplateError(
            f"CSS inlining failed: {exc}"[:500], title="CSS inlining failed"
        ) from None
    if time.perf_counter() > state.deadline:
        raise RenderBudgetExceeded(
            "the template and its CSS inlining did not finish within limits.render_timeout",
            budget="time",
        )
    if len(inlined) > len(html):
        state.add_output(len(inlined) - len(html))
    return inlined


# -- inline images -----------------------------------------------------------------------

#: The folder, inside the templates directory, that ``inline_image`` reads from.
ASSETS_FOLDER = "assets"
#: File name extensions ``inline_image`` accepts, and the content type each is sent as.
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
# A relative path of plain names: no "..", no hidden files, no absolute path, no
# backslash, no NUL. Symbolic links are resolved and must stay inside the folder too.
_ASSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)*")
_MAX_ASSET_NAME = 255


@dataclass(frozen=True, slots=True)
class InlineImage:
    """One image an HTML part shows by ``cid:`` reference: sent as a part of a
    multipart/related with ``Content-ID: <content_id>``."""

    #: The file name in ``Content-Disposition: inline`` (the asset's last component).
    filename: str
    #: ``image/png``, ``image/jpeg``, ... (see :data:`IMAGE_TYPES`).
    content_type: str
    #: ``<hex>@<message_id_domain>``, without angle brackets: the HTML says ``cid:`` + this.
    content_id: str
    data: bytes


class _Collecting:
    """While an HTML part renders: the images it asked for, by asset name."""

    __slots__ = ("_assets", "images")

    def __init__(self, assets: TemplateAssets) -> None:
        self._assets = assets
        self.images: dict[str, InlineImage] = {}

    def __enter__(self) -> dict[str, InlineImage]:
        self._assets._local.images = self.images
        return self.images

    def __exit__(self, *exc_info: object) -> None:
        self._assets._local.images = None


class TemplateAssets:
    """The image files of ``<templates>/assets``, read on use and cached against their
    modification time, so an edited logo shows in the next message."""

    def __init__(self, directory: Path, *, content_id_domain: str) -> None:
        self.directory = directory
        self.content_id_domain = content_id_domain
        #: Real path -> ((mtime_ns, size, inode), bytes).
        self._cache: dict[str, tuple[tuple[int, int, int], bytes]] = {}
        self._local = threading.local()

    def collecting(self) -> _Collecting:
        """``with assets.collecting() as images:`` around the render of an HTML part."""
        return _Collecting(self)

    def inline_image(self, name: Any) -> str:
        """Jinja global ``{{ inline_image('logo.png') }}``: the ``cid:`` URL of
        ``assets/logo.png``; the image goes out with the message. Naming the same asset
        twice gives the same URL. A bad or missing asset is a 422 (TemplateError)."""
        images: dict[str, InlineImage] | None = getattr(self._local, "images", None)
        if images is None:
            raise TemplateError(
                "inline_image() works in .html.j2 parts only", title="Inline image unavailable"
            )
        text = unmark_active(name if isinstance(name, str) else str(name))
        image = images.get(text)
        if image is None:
            content_type, data = self._read(text)
            image = InlineImage(
                filename=text.rpartition("/")[2],
                content_type=content_type,
                content_id=f"{os.urandom(12).hex()}@{self.content_id_domain}",
                data=data,
            )
            images[text] = image
        return "cid:" + image.content_id

    def _read(self, name: str) -> tuple[str, bytes]:
        shown = repr(name[:80])
        if len(name) > _MAX_ASSET_NAME or _ASSET_NAME.fullmatch(name) is None:
            raise _unavailable(
                f"inline_image({shown}): an asset is named by a relative path of plain file"
                f" names inside {ASSETS_FOLDER}/",
                name,
            )
        content_type = IMAGE_TYPES.get(os.path.splitext(name)[1].lower())
        if content_type is None:
            raise _unavailable(
                f"inline_image({shown}): not an image file name (one of"
                f" {', '.join(sorted(IMAGE_TYPES))})",
                name,
            )
        root = os.path.realpath(self.directory)
        path = os.path.realpath(os.path.join(root, name))
        if not path.startswith(root + os.sep):
            raise _unavailable(
                f"inline_image({shown}): the file is a link to outside {ASSETS_FOLDER}/", name
            )
        try:
            status = os.stat(path)
        except OSError:
            raise _unavailable(
                f"inline_image({shown}): {ASSETS_FOLDER}/{name} does not exist", name
            ) from None
        if not stat.S_ISREG(status.st_mode):
            raise _unavailable(f"inline_image({shown}): not a regular file", name)
        stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return content_type, cached[1]
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise _unavailable(
                f"inline_image({shown}): {ASSETS_FOLDER}/{name} cannot be read: {exc.strerror}",
                name,
            ) from None
        self._cache[path] = (stamp, data)
        return content_type, data


def _unavailable(detail: str, name: str) -> TemplateError:
    return TemplateError(detail, title="Inline image unavailable", asset=name[:200])
