"""The Jinja environment: template discovery, sandboxed rendering and hot reload.

A template ``<name>`` is the file ``<name>.j2`` in the templates directory: an RFC 5322
header block, a blank line, then the plain-text body. ``<name>.html.j2`` (optional) is an
HTML body rendered with autoescaping; ``<name>.example.json`` (optional) holds sample data.

Rendering happens in :class:`notifier.sandbox.TemplateSandbox`, which marks every
printed value so that :mod:`notifier.compose` can tell request data from the template's
own text, and holds each render to a time and output budget.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
from jinja2.exceptions import SecurityError

from notifier.errors import MissingVariable, RenderBudgetExceeded, TemplateError, UnknownTemplate
from notifier.html_parts import (
    ASSETS_FOLDER,
    NO_CSS_INLINE,
    InlineImage,
    TemplateAssets,
    inline_css,
    safe_url,
    wants_css_inlining,
)
from notifier.sandbox import (
    CR_MARK,
    LF_MARK,
    VALUE_END,
    VALUE_START,
    RenderBudget,
    SliceExhausted,
    TemplateSandbox,
    rendering,
    strip_marks,
)

__all__ = [
    "CR_MARK",
    "LF_MARK",
    "NAME_PATTERN",
    "VALUE_END",
    "VALUE_START",
    "InlineImage",
    "RenderBudget",
    "RenderedTemplate",
    "TemplateInfo",
    "TemplateStore",
    "strip_marks",
]

#: Valid template names (pinned): no dots, slashes or backslashes.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_NONCHARACTER = re.compile("[\ufdd0-\ufdef]")

TEXT_SUFFIX = ".j2"
HTML_SUFFIX = ".html.j2"
EXAMPLE_SUFFIX = ".example.json"

#: The budget of a render when none is configured (the ``limits`` defaults).
DEFAULT_BUDGET = RenderBudget(seconds=2.0, max_output=4 * 1024 * 1024)


def _mailbox(addr_spec: Any, display_name: Any = "") -> str:
    """Jinja filter ``{{ email | mailbox(name) }}``: one RFC 5322 mailbox, the display name
    quoted when it is more than plain words (``Smith, Bob`` or ``Bob <b>`` say). Safer
    than writing ``{{ name }} <{{ email }}>``, which such names break (and is refused).
    Non-ASCII names stay as they are here; the serialiser encodes them (RFC 2047)."""
    name, spec = str(display_name).strip(" \t"), str(addr_spec).strip(" \t")
    if not name:
        return spec
    if _PLAIN_PHRASE.fullmatch(name) is None:
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{spec}>"


_PLAIN_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


class _TemplateLoader(jinja2.FileSystemLoader):
    """Loads template files, refusing any that holds the characters value markers use,
    and notes which opt out of CSS inlining (:data:`notifier.html_parts.NO_CSS_INLINE`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Template file names whose source holds the no-css-inline comment, as of their
        #: latest load (Jinja loads a file again when it changes).
        self.without_css_inlining: set[str] = set()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if _NONCHARACTER.search(source) is not None:
            raise TemplateError(
                f"{template} contains a Unicode noncharacter (U+FDD0..U+FDEF); notifier"
                " uses them internally",
                template=template,
            )
        if NO_CSS_INLINE.search(source) is None:
            self.without_css_inlining.discard(template)
        else:
            self.without_css_inlining.add(template)
        return source, filename, uptodate


class _MissingVariableUndefined(jinja2.StrictUndefined):
    """StrictUndefined that raises :class:`MissingVariable` naming the variable."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> NoReturn:
        if self._undefined_exception is not jinja2.UndefinedError:
            # The sandbox reports unsafe attribute access through Undefined too.
            super()._fail_with_undefined_error(*args, **kwargs)
        name = str(self._undefined_name)
        if self._undefined_obj is jinja2.utils.missing:
            detail = f"the template uses {name!r} but the request does not provide it"
        else:
            owner = type(self._undefined_obj).__name__
            detail = f"the template uses {name!r} of a {owner} value that has no such key"
        raise MissingVariable(detail, variable=name)


# StrictUndefined binds its dunder methods to the base class's function at class creation,
# so overriding the method alone would not reach str(), iteration, comparison and so on.
for _attribute, _value in list(vars(jinja2.Undefined).items()) + list(
    vars(jinja2.StrictUndefined).items()
):
    if _value is jinja2.Undefined._fail_with_undefined_error:
        setattr(
            _MissingVariableUndefined,
            _attribute,
            _MissingVariableUndefined._fail_with_undefined_error,
        )


@dataclass(frozen=True, slots=True)
class RenderedTemplate:
    """The output of one render: ``text`` still carries value markers, ``html`` does not
    (its CSS is inlined already); ``inline_images`` are the images ``html`` shows by
    ``cid:`` URL, in the order it first named them."""

    name: str
    text: str
    html: str | None
    inline_images: tuple[InlineImage, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """What ``GET /v1/templates`` and ``notifier check`` report about one template."""

    name: str
    has_html: bool
    has_example: bool
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "html": self.has_html,
            "example": self.has_example,
            "valid": self.error is None,
            "error": self.error,
        }


class TemplateStore:
    """One sandboxed Jinja environment over a templates directory.

    Compiled templates are cached; with ``auto_reload`` Jinja compares each cached
    template's file modification time on use, so an edited file is recompiled on the next
    render without a restart, and a broken edit only affects renders of that template.
    """

    def __init__(
        self,
        directory: Path,
        *,
        clock: Callable[[], datetime] | None = None,
        budget: RenderBudget = DEFAULT_BUDGET,
        content_id_domain: str = "localhost",
    ) -> None:
        self.directory = directory
        self.budget = budget
        self._clock = clock or (lambda: datetime.now(UTC))
        self._directory_text = os.fspath(directory)
        self._recent: dict[str, tuple[jinja2.Template, int]] = {}
        self._listing_stamp = -1
        self._html_names: set[str] = set()
        self._date_second = -1
        self._date_text = ""
        self._loader = _TemplateLoader(directory, encoding="utf-8")
        #: The images of ``<directory>/assets`` that HTML parts show (``inline_image``).
        self.assets = TemplateAssets(directory / ASSETS_FOLDER, content_id_domain=content_id_domain)
        self.environment = TemplateSandbox(
            loader=self._loader,
            undefined=_MissingVariableUndefined,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html.j2",), default_for_string=False, default=False
            ),
            auto_reload=True,
            keep_trailing_newline=False,
        )
        self.environment.filters["mailbox"] = _mailbox
        self.environment.filters["safe_url"] = safe_url
        self.environment.globals["inline_image"] = self.assets.inline_image

    # -- discovery -----------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the templates on disk now, sorted."""
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return []
        found = []
        for entry in entries:
            stem = entry.name.removesuffix(TEXT_SUFFIX)
            if stem != entry.name and NAME_PATTERN.fullmatch(stem) and entry.is_file():
                found.append(stem)
        return sorted(found)

    def info(self, name: str) -> TemplateInfo:
        """Describe ``name``, compiling its files to report a syntax error if any."""
        error = None
        try:
            self._load(name, TEXT_SUFFIX)
            if self._path(name, HTML_SUFFIX).is_file():
                self._load(name, HTML_SUFFIX)
        except (TemplateError, UnknownTemplate) as exc:
            error = exc.detail
        return TemplateInfo(
            name=name,
            has_html=self._path(name, HTML_SUFFIX).is_file(),
            has_example=self._path(name, EXAMPLE_SUFFIX).is_file(),
            error=error,
        )

    def example(self, name: str) -> dict[str, Any] | None:
        """The sample data of ``name``, or None when it has no example file."""
        self._check_name(name)
        path = self._path(name, EXAMPLE_SUFFIX)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TemplateError(f"{path.name} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise TemplateError(f"{path.name} must hold a JSON object")
        return data

    # -- rendering -----------------------------------------------------------------

    def render(
        self, name: str, context: Mapping[str, Any], *, slice_seconds: float | None = None
    ) -> RenderedTemplate:
        """Render ``name`` with ``context`` within :attr:`budget`.

        Raises :class:`UnknownTemplate` (404) for a name that is not a template, and
        :class:`TemplateError` / :class:`MissingVariable` (422) for a broken template or
        a variable the context lacks, :class:`RenderBudgetExceeded` (422) when it runs
        out of time or output. With ``slice_seconds``, a render still running after that
        long raises :class:`SliceExhausted` instead (to be run again off the event loop).
        ``date`` defaults to the current time (RFC 5322). An HTML part's ``<style>`` is
        inlined (:func:`notifier.html_parts.inline_css`) as part of the render.
        """
        text_template = self._load(name, TEXT_SUFFIX)
        html_template = self._load(name, HTML_SUFFIX) if self._has_html(name) else None
        if "date" not in context:
            context = {**context, "date": self._current_date()}
        with rendering(self.budget, slice_seconds=slice_seconds) as state:
            text = state.fixed_marks(self._run(text_template, context))
            if html_template is None:
                return RenderedTemplate(name=name, text=text, html=None)
            with self.assets.collecting() as images:
                html = state.unmark(self._run(html_template, context))
            opted_out = html_template.name in self._loader.without_css_inlining
            if not opted_out and wants_css_inlining(html):
                html = inline_css(html, state)
        return RenderedTemplate(
            name=name, text=text, html=html, inline_images=tuple(images.values())
        )

    def _run(self, template: jinja2.Template, context: Mapping[str, Any]) -> str:
        try:
            return self.environment.render_text(template, context)
        except (MissingVariable, TemplateError, SliceExhausted):
            raise
        except (RecursionError, MemoryError) as exc:
            raise RenderBudgetExceeded(
                f"{template.name}: rendering failed: {type(exc).__name__}",
                budget="recursion" if isinstance(exc, RecursionError) else "memory",
            ) from None
        except SecurityError as exc:
            raise TemplateError(
                f"{template.name}: the sandbox refused an unsafe operation: {exc}",
                title="Template refused by the sandbox",
            ) from None
        except Exception as exc:
            # A template is operator-written code; its runtime errors are template errors
            # (422), reported by type and message only, never with a traceback.
            raise TemplateError(
                f"{template.name}: rendering failed: {type(exc).__name__}: {exc}"
            ) from None

    def _load(self, name: str, suffix: str) -> jinja2.Template:
        self._check_name(name)
        filename = name + suffix
        # Jinja's own cache would do, but its lookup (a lock, an LRU reorder, a float
        # mtime check) costs more than a stat and a dict lookup on this hot path; Jinja
        # still compiles, caches and reloads the template (and anything it includes).
        try:
            stamp = os.stat(f"{self._directory_text}/{filename}").st_mtime_ns
        except OSError:
            stamp = None
        cached = self._recent.get(filename)
        if cached is not None and stamp is not None and cached[1] == stamp:
            return cached[0]
        try:
            template = self.environment.get_template(filename)
        except jinja2.TemplateNotFound:
            raise UnknownTemplate(f"no template named {name!r}", template=name) from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{name}{suffix} line {exc.lineno}: {exc.message}",
                title="Template syntax error",
                template=name,
                line=exc.lineno,
            ) from None
        except UnicodeDecodeError:
            raise TemplateError(f"{name}{suffix} is not valid UTF-8", template=name) from None
        except TemplateError:
            raise
        except Exception as exc:
            # Jinja evaluates constant expressions while compiling, so a template can fail
            # to compile in ways that are not syntax errors (an int too long to print,
            # say). That is this template's error; every other template still works.
            raise TemplateError(
                f"{name}{suffix} cannot be compiled: {type(exc).__name__}: {exc}"[:500],
                title="Template cannot be compiled",
                template=name,
            ) from None
        if stamp is not None:
            self._recent[filename] = (template, stamp)
        return template

    def _has_html(self, name: str) -> bool:
        # Asking the file system for <name>.html.j2 on every render costs more than the
        # render itself; the directory's mtime changes whenever a file is added, removed
        # or replaced by rename, so the listing is cached against it.
        try:
            stamp = os.stat(self._directory_text).st_mtime_ns
        except OSError:
            return False
        if stamp != self._listing_stamp:
            try:
                self._html_names = {
                    entry.name.removesuffix(HTML_SUFFIX)
                    for entry in os.scandir(self.directory)
                    if entry.name.endswith(HTML_SUFFIX)
                }
            except OSError:
                return False
            self._listing_stamp = stamp
        return name in self._html_names

    def _current_date(self) -> str:
        # Formatting a date costs a few microseconds; one string per second is enough.
        now = self._clock()
        second = int(now.timestamp())
        if second != self._date_second:
            self._date_text = format_datetime(now.replace(microsecond=0))
            self._date_second = second
        return self._date_text

    def _check_name(self, name: str) -> None:
        if NAME_PATTERN.fullmatch(name) is None:
            # Dots, slashes, backslashes and encoded traversal never name a template.
            raise UnknownTemplate("no template has this name", template=name[:200])

    def _path(self, name: str, suffix: str) -> Path:
        return self.directory / (name + suffix)
