"""The Jinja environment: template discovery, sandboxed rendering and hot reload.

A template ``<name>`` is the file ``<name>.j2`` in the templates directory: an RFC 5322
header block, a blank line, then the plain-text body. ``<name>.html.j2`` (optional) is an
HTML body rendered with autoescaping; ``<name>.example.json`` (optional) holds sample data.

Locale variants: ``<name>.<tag>.j2`` (and its optional ``<name>.<tag>.html.j2``) renders
a request whose context member ``locale`` is ``<tag>`` or a more specific tag: ``de-CH``
looks for ``<name>.de-CH.j2``, then ``<name>.de.j2``, then takes ``<name>.j2``. The HTML
part comes with the text file chosen (never English HTML with German text). The locale
part of a file name matches whatever its case, with ``-`` or ``_``.

Each rendered message carries its template version: 12 hex digits of a SHA-256 over the
files used (see :meth:`TemplateStore.render`), computed when a file is (re)loaded.

Rendering happens in :class:`notifier.sandbox.TemplateSandbox`, which marks every
printed value so that :mod:`notifier.compose` can tell request data from the template's
own text, and holds each render to a time and output budget.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.meta
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
from notifier.locales import FILTERS, RequestedLocale, formatting, requested_locale, tag_of_suffix
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
#: Templates a template includes, imports or extends that its version covers, at most.
MAX_INCLUDED_FILES = 64


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
    """Loads template files, refusing any that holds the characters value markers use.

    Remembers, for each file it loaded last, the SHA-256 of its text and the templates it
    names in ``include``, ``import`` and ``extends`` (the template version is made of
    them), and notes which files opt out of CSS inlining
    (:data:`notifier.html_parts.NO_CSS_INLINE`).
    """

    def __init__(self, directory: Path, *, encoding: str) -> None:
        super().__init__(directory, encoding=encoding)
        #: Template file name -> (SHA-256 of its text, the templates it references).
        self.loaded: dict[str, tuple[str, tuple[str, ...]]] = {}
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
        try:
            referenced = tuple(
                name
                for name in jinja2.meta.find_referenced_templates(environment.parse(source))
                if name is not None  # a name computed at render time cannot be known here
            )
        except Exception:
            referenced = ()  # compiling it reports the error
        digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
        self.loaded[template] = (digest, referenced)
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
    #: 12 hex digits of the SHA-256 over the template files used ("" when not known).
    version: str = ""
    #: The request's locale (canonical BCP 47 tag), or None when it named none.
    locale: str | None = None
    inline_images: tuple[InlineImage, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """What ``GET /v1/templates`` and ``notifier check`` report about one template."""

    name: str
    has_html: bool
    has_example: bool
    error: str | None
    #: The tags of its locale variants (``<name>.<tag>.j2``), sorted.
    locales: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "html": self.has_html,
            "example": self.has_example,
            "locales": list(self.locales),
            "valid": self.error is None,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity
class _Loaded:
    """A compiled template file and what its version is made of."""

    template: jinja2.Template
    #: The file's modification time when it was loaded.
    stamp: int
    #: ``<sha256>  <file name>\n``, as ``sha256sum`` writes it.
    line: str
    #: (file name, line, modification time) of each template it includes, imports or
    #: extends, directly or through another.
    includes: tuple[tuple[str, str, int], ...]


@dataclass(slots=True)
class _Variant:
    """One locale variant of a template: its files on disk."""

    tag: str
    text: str | None = None
    html: str | None = None


#: (text file, HTML file or None, the variant's tag or None for the base files).
_Files = tuple[str, str | None, str | None]


@dataclass(slots=True)
class _Listing:
    """What the templates directory held when its modification time was ``stamp``."""

    stamp: int = -1
    #: Names with a ``<name>.j2``, and those with a ``<name>.html.j2``.
    names: set[str] = field(default_factory=set)
    html_names: set[str] = field(default_factory=set)
    #: Name -> lower-case tag -> variant.
    variants: dict[str, dict[str, _Variant]] = field(default_factory=dict)
    #: (name, requested tag) -> the files that render it, found with this listing.
    resolved: dict[tuple[str, str], _Files] = field(default_factory=dict)


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
        self._recent: dict[str, _Loaded] = {}
        self._listing = _Listing()
        #: (text file, HTML file) as loaded -> their version.
        self._versions: dict[tuple[_Loaded, _Loaded | None], str] = {}
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
        self.environment.filters.update(FILTERS)
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
        """Describe ``name``, compiling its files (its locale variants' too) to report the
        first error if any."""
        locales = self.locales(name)
        error = None
        for locale in (None, *locales):
            error = self.compile_error(name, locale)
            if error is not None:
                break
        return TemplateInfo(
            name=name,
            has_html=self._path(name, HTML_SUFFIX).is_file(),
            has_example=self._path(name, EXAMPLE_SUFFIX).is_file(),
            error=error,
            locales=locales,
        )

    def locales(self, name: str) -> tuple[str, ...]:
        """The tags of the locale variants of ``name`` on disk (``<name>.<tag>.j2``)."""
        variants = self._current_listing().variants.get(name, {})
        return tuple(sorted(v.tag for v in variants.values() if v.text is not None))

    def compile_error(self, name: str, locale: str | None = None) -> str | None:
        """Why the files of ``name`` (of its variant for ``locale``, a tag it has) do not
        compile, or None when they do."""
        try:
            text_file, html_file, _ = self._files(name, locale.lower() if locale else None)
            self._load(name, text_file)
            if html_file is not None:
                self._load(name, html_file)
        except (TemplateError, UnknownTemplate) as exc:
            return exc.detail
        return None

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

        The context member ``locale`` picks the files (see the module doc) and the locale
        the Babel filters format in; an invalid one is :class:`InvalidLocale` (422). The
        result's ``version`` is the first 12 hex digits of the SHA-256 over the lines
        ``sha256sum`` writes for the files used: the text file, the HTML file if any, then
        every template they include, import or extend (by name, sorted).
        """
        listing = self._current_listing()
        requested = None
        if "locale" in context:
            if name not in listing.names:
                self._load(name, name + TEXT_SUFFIX)  # an unknown template is a 404 first
            requested = requested_locale(context["locale"])
        text_file, html_file, _ = self._files(name, requested, listing)
        text_loaded = self._load(name, text_file)
        html_loaded = self._load(name, html_file) if html_file is not None else None
        if "date" not in context:
            context = {**context, "date": self._current_date()}
        images: dict[str, InlineImage] = {}
        with (
            rendering(self.budget, slice_seconds=slice_seconds) as state,
            formatting(requested, state),
        ):
            text = state.fixed_marks(self._run(text_loaded.template, context))
            html = None
            if html_loaded is not None:
                with self.assets.collecting() as images:
                    html = state.unmark(self._run(html_loaded.template, context))
                opted_out = html_loaded.template.name in self._loader.without_css_inlining
                if not opted_out and wants_css_inlining(html):
                    html = inline_css(html, state)
        return RenderedTemplate(
            name=name,
            text=text,
            html=html,
            version=self._version(text_loaded, html_loaded),
            locale=requested.tag if requested is not None else None,
            inline_images=tuple(images.values()),
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

    def _load(self, name: str, filename: str) -> _Loaded:
        self._check_name(name)
        # Jinja's own cache would do, but its lookup (a lock, an LRU reorder, a float
        # mtime check) costs more than a stat and a dict lookup on this hot path; Jinja
        # still compiles, caches and reloads the template (and anything it includes).
        try:
            stamp = os.stat(f"{self._directory_text}/{filename}").st_mtime_ns
        except OSError:
            stamp = None
        cached = self._recent.get(filename)
        if (
            cached is not None
            and stamp is not None
            and cached.stamp == stamp
            and (not cached.includes or self._includes_unchanged(cached))
        ):
            return cached
        try:
            template = self.environment.get_template(filename)
        except jinja2.TemplateNotFound:
            raise UnknownTemplate(f"no template named {name!r}", template=name) from None
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"{filename} line {exc.lineno}: {exc.message}",
                title="Template syntax error",
                template=name,
                line=exc.lineno,
            ) from None
        except UnicodeDecodeError:
            raise TemplateError(f"{filename} is not valid UTF-8", template=name) from None
        except TemplateError:
            raise
        except Exception as exc:
            # Jinja evaluates constant expressions while compiling, so a template can fail
            # to compile in ways that are not syntax errors (an int too long to print,
            # say). That is this template's error; every other template still works.
            raise TemplateError(
                f"{filename} cannot be compiled: {type(exc).__name__}: {exc}"[:500],
                title="Template cannot be compiled",
                template=name,
            ) from None
        digest, _ = self._loader.loaded.get(filename, ("", ()))
        loaded = _Loaded(
            template=template,
            stamp=stamp if stamp is not None else -1,
            line=f"{digest}  {filename}\n",
            includes=self._includes(filename),
        )
        if stamp is not None:
            self._recent[filename] = loaded
        return loaded

    def _includes(self, filename: str) -> tuple[tuple[str, str, int], ...]:
        """The templates ``filename`` includes, imports or extends, directly or not, as
        far as their names are written in the templates (at load time, not per render)."""
        found: dict[str, tuple[str, str, int]] = {}
        pending = list(self._loader.loaded.get(filename, ("", ()))[1])
        while pending and len(found) < MAX_INCLUDED_FILES:
            included = pending.pop()
            if included in found or included == filename:
                continue
            stamp: int | None
            try:
                # Stat first: an edit between the two is then seen by the next render.
                stamp = os.stat(f"{self._directory_text}/{included}").st_mtime_ns
                self.environment.get_template(included)  # loads (or reloads) it
            except Exception:
                stamp = None  # a missing or broken include fails the render itself
            if stamp is None:
                continue
            digest, referenced = self._loader.loaded.get(included, ("", ()))
            found[included] = (included, f"{digest}  {included}\n", stamp)
            pending.extend(referenced)
        return tuple(sorted(found.values()))

    def _includes_unchanged(self, loaded: _Loaded) -> bool:
        for included, _, stamp in loaded.includes:
            try:
                if os.stat(f"{self._directory_text}/{included}").st_mtime_ns != stamp:
                    return False
            except OSError:
                return False
        return True

    def _version(self, text: _Loaded, html: _Loaded | None) -> str:
        version = self._versions.get((text, html))
        if version is None:
            lines = text.line + (html.line if html is not None else "")
            includes = {entry[0]: entry[1] for entry in text.includes}
            if html is not None:
                includes.update((entry[0], entry[1]) for entry in html.includes)
            lines += "".join(includes[included] for included in sorted(includes))
            version = hashlib.sha256(lines.encode("utf-8")).hexdigest()[:12]
            if len(self._versions) >= 1024:
                self._versions.clear()  # old loads of edited files
            self._versions[(text, html)] = version
        return version

    def _files(
        self, name: str, requested: RequestedLocale | str | None, listing: _Listing | None = None
    ) -> _Files:
        """The files that render ``name`` for ``requested`` (a locale, or a lower-case tag
        the template has a variant for, or None)."""
        if listing is None:
            listing = self._current_listing()
        if requested is None or name not in listing.names:
            # No locale, or no such template (loading <name>.j2 then reports it).
            html = name + HTML_SUFFIX if name in listing.html_names else None
            return name + TEXT_SUFFIX, html, None
        key = (name, requested if isinstance(requested, str) else requested.tag)
        files = listing.resolved.get(key)
        if files is None:
            chain = (requested,) if isinstance(requested, str) else requested.chain
            variants = listing.variants.get(name, {})
            base_html = name + HTML_SUFFIX if name in listing.html_names else None
            files = (name + TEXT_SUFFIX, base_html, None)
            for tag in chain:
                variant = variants.get(tag)
                if variant is not None and variant.text is not None:
                    files = (variant.text, variant.html, variant.tag)
                    break
            if len(listing.resolved) >= 4096:
                listing.resolved.clear()  # requests may name any number of tags
            listing.resolved[key] = files
        return files

    def _current_listing(self) -> _Listing:
        # Asking the file system for <name>.html.j2 (or a locale's files) on every render
        # costs more than the render itself; the directory's mtime changes whenever a file
        # is added, removed or replaced by rename, so the listing is cached against it.
        try:
            stamp = os.stat(self._directory_text).st_mtime_ns
        except OSError:
            return _Listing()
        if stamp != self._listing.stamp:
            try:
                file_names = sorted(entry.name for entry in os.scandir(self.directory))
            except OSError:
                return _Listing()
            self._listing = _read_listing(stamp, file_names)
        return self._listing

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


def _read_listing(stamp: int, file_names: list[str]) -> _Listing:
    """Sort a directory's file names into templates, HTML parts and locale variants."""
    listing = _Listing(stamp=stamp)
    for file_name in file_names:
        stem = file_name.removesuffix(TEXT_SUFFIX)
        if stem == file_name:
            continue
        html = stem.endswith(".html")
        stem = stem.removesuffix(".html")
        name, dot, suffix = stem.partition(".")
        if NAME_PATTERN.fullmatch(name) is None:
            continue
        if not dot:
            (listing.html_names if html else listing.names).add(name)
            continue
        tag = tag_of_suffix(suffix)
        if tag is None:
            continue  # not a locale variant (nor anything else notifier reads)
        variant = listing.variants.setdefault(name, {}).setdefault(tag.lower(), _Variant(tag))
        # Two spellings of one tag (de-ch and de-CH): the first in sorted order wins.
        if html and variant.html is None:
            variant.html = file_name
        elif not html and variant.text is None:
            variant.text = file_name
    return listing
