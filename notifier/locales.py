"""Locales: the context member ``locale``, its fallback chain, and Babel's filters.

A request picks a locale with the context member ``locale``, a BCP 47 language tag
(``de-CH``). It selects the template file (``<name>.de-CH.j2``, else ``<name>.de.j2``,
else ``<name>.j2``; see :mod:`notifier.templates`) and the locale the filters
``format_currency``, ``format_decimal``, ``format_percent``, ``format_date`` and
``format_datetime`` format in: always the requested locale, even when the file chosen is
a more general one (a ``de-CH`` request rendered by ``<name>.de.j2`` writes Swiss
numbers). Without ``locale`` the filters format in ``en``.

A tag is refused (422, :class:`InvalidLocale`) unless it is well-formed (a 2 or 3 letter
language, then up to six subtags of 1 to 8 letters or digits, joined by hyphens, 35
characters at most) and Babel knows its language. Babel loads a locale's data from disk
the first time it is used, so parsed locales are cached.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

import jinja2
from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers

from notifier.errors import InvalidLocale, TemplateError
from notifier.sandbox import RenderState

__all__ = [
    "DEFAULT_LOCALE",
    "FILTERS",
    "MAX_LOCALE_CHARS",
    "RequestedLocale",
    "formatting",
    "requested_locale",
    "tag_of_suffix",
]

#: The context member that picks a locale.
LOCALE_MEMBER = "locale"
#: The longest tag accepted: RFC 5646 (section 4.4.1) asks implementations to support 35.
MAX_LOCALE_CHARS = 35
#: What the filters format in when a request names no locale.
DEFAULT_LOCALE = "en"

_WELL_FORMED = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8}){0,6}")
#: Longest string the number and date filters parse: far more than any real value.
_MAX_VALUE_CHARS = 64
#: Numbers beyond 10**100 are refused: Babel would print every digit.
_MAX_EXPONENT = 100
_MAX_PATTERN_CHARS = 100


@dataclass(frozen=True, slots=True)
class RequestedLocale:
    """A valid ``locale`` of a request."""

    #: The tag in its canonical case (``de-CH``), as the API shows it.
    tag: str
    #: The tags to look for template files under, most specific first: ``de-ch``,
    #: ``de`` (lower case: file names match whatever their case).
    chain: tuple[str, ...]
    #: What the filters format in: the most specific tag of the chain Babel knows.
    babel: Locale


def _canonical_tag(tag: str) -> str:
    """``tag`` with each subtag in the case BCP 47 recommends (``zh-Hant-TW``)."""
    language, *rest = tag.split("-")
    subtags = [language.lower()]
    for subtag in rest:
        if (len(subtag) == 2 and subtag.isalpha()) or (len(subtag) == 3 and subtag.isdigit()):
            subtags.append(subtag.upper())  # a region
        elif len(subtag) == 4 and subtag.isalpha():
            subtags.append(subtag.title())  # a script
        else:
            subtags.append(subtag.lower())
    return "-".join(subtags)


def tag_of_suffix(suffix: str) -> str | None:
    """The canonical tag a file name's locale part stands for (``de-ch`` and ``de_CH``
    both stand for ``de-CH``), or None when it is not a well-formed tag."""
    suffix = suffix.replace("_", "-")
    if len(suffix) > MAX_LOCALE_CHARS or _WELL_FORMED.fullmatch(suffix) is None:
        return None
    return _canonical_tag(suffix)


def requested_locale(value: Any) -> RequestedLocale | None:
    """The locale the context member ``locale`` asks for; None when it is absent or null.

    Raises :class:`InvalidLocale` (422) for anything else than a valid tag.
    """
    if value is None:
        return None
    if type(value) is not str:
        raise InvalidLocale(
            f"the context member 'locale' must be a string (a BCP 47 language tag such"
            f" as 'de-CH'), not {_json_type(value)}",
            member=LOCALE_MEMBER,
        )
    found = _parse(value) if len(value) <= MAX_LOCALE_CHARS else None
    if found is None:
        shown = value if len(value) <= MAX_LOCALE_CHARS else value[:MAX_LOCALE_CHARS] + "..."
        raise InvalidLocale(
            f"the context member 'locale' ({shown!r}) is not a BCP 47 language tag of a"
            f" known language, such as 'de' or 'de-CH' (at most {MAX_LOCALE_CHARS}"
            " characters, subtags joined by hyphens)",
            member=LOCALE_MEMBER,
        )
    return found


@functools.lru_cache(maxsize=1024)
def _parse(value: str) -> RequestedLocale | None:
    # Cached, invalid tags too: loading a locale's data from disk takes milliseconds,
    # and even a refused tag costs Babel a look at the file system.
    if _WELL_FORMED.fullmatch(value) is None:
        return None
    tag = _canonical_tag(value)
    subtags = tag.split("-")
    chain = tuple("-".join(subtags[:count]).lower() for count in range(len(subtags), 0, -1))
    for candidate in chain:
        babel_locale = _babel_locale(candidate)
        if babel_locale is not None:
            return RequestedLocale(tag=tag, chain=chain, babel=babel_locale)
    return None


@functools.lru_cache(maxsize=256)
def _babel_locale(tag: str) -> Locale | None:
    try:
        return Locale.parse(tag, sep="-")
    except (ValueError, TypeError, UnknownLocaleError):
        return None


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "an array"}
    return names.get(type(value), "an object")


# -- the filters ----------------------------------------------------------------------


class _Formatting(threading.local):
    #: What the render in progress in this thread formats in, and its markers.
    locale: Locale | None = None
    state: RenderState | None = None


_formatting = _Formatting()


class formatting:  # lower case: it reads like the function it stands in for
    """Make the filters format in ``locale`` (None: ``en``) in this thread until the
    ``with`` block ends; ``state`` is the render's (its markers are taken off values)."""

    __slots__ = ("_locale", "_previous", "_state")

    def __init__(self, locale: RequestedLocale | None, state: RenderState) -> None:
        self._locale = locale.babel if locale is not None else None
        self._state = state
        self._previous: tuple[Locale | None, RenderState | None] = (None, None)

    def __enter__(self) -> None:
        self._previous = (_formatting.locale, _formatting.state)
        _formatting.locale = self._locale
        _formatting.state = self._state

    def __exit__(self, *exc_info: object) -> None:
        _formatting.locale, _formatting.state = self._previous


def _locale() -> Locale:
    return _formatting.locale or _default_locale()


@functools.cache
def _default_locale() -> Locale:
    return Locale.parse(DEFAULT_LOCALE)


def _refused(filter_name: str, value: Any, expected: str) -> TemplateError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:80] + "..."
    return TemplateError(
        f"{filter_name}: {shown} is not {expected}",
        title="Value cannot be formatted",
        filter=filter_name,
    )


def _text(value: str) -> str:
    # A value printed into a {% set %} block carries this render's markers; the filters
    # read the text it stands for.
    state = _formatting.state
    return (state.unmark(value) if state is not None else value).strip()


def _number(filter_name: str, value: Any) -> int | float | Decimal:
    number: int | float | Decimal
    if type(value) is bool:
        raise _refused(filter_name, value, "a number")
    if isinstance(value, int | float | Decimal):
        number = value
    elif isinstance(value, str):
        text = _text(value)
        if len(text) > _MAX_VALUE_CHARS:
            raise _refused(filter_name, value, "a number")
        try:
            number = Decimal(text)
        except (InvalidOperation, ValueError):
            raise _refused(filter_name, value, "a number") from None
    else:
        raise _refused(filter_name, value, "a number")
    if isinstance(number, Decimal):
        huge = not number.is_finite() or (number != 0 and abs(number.adjusted()) > _MAX_EXPONENT)
    elif isinstance(number, float):
        huge = not math.isfinite(number) or abs(number) >= 10.0**_MAX_EXPONENT
    else:
        huge = abs(number) >= 10**_MAX_EXPONENT
    if huge:
        raise _refused(filter_name, value, f"a finite number below 10**{_MAX_EXPONENT}")
    return number


def _datetime(filter_name: str, value: Any, *, date_only: bool) -> date | datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return value if date_only else datetime.combine(value, time())
    expected = "an ISO 8601 date" if date_only else "an ISO 8601 date and time"
    if not isinstance(value, str):
        raise _refused(filter_name, value, expected)
    text = _text(value)
    if len(text) > _MAX_VALUE_CHARS:
        raise _refused(filter_name, value, expected)
    try:
        if date_only and len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text)
    except ValueError:
        raise _refused(filter_name, value, expected) from None


def _pattern(filter_name: str, pattern: Any) -> Any:
    if pattern is not None and (not isinstance(pattern, str) or len(pattern) > _MAX_PATTERN_CHARS):
        raise _refused(filter_name, pattern, f"a format of at most {_MAX_PATTERN_CHARS} characters")
    return pattern


def _babel_call(filter_name: str, value: Any, call: Callable[[], str]) -> str:
    try:
        return call()
    except TemplateError:
        raise
    except Exception as exc:
        # A bad format pattern, currency code or time zone name: the template's (or the
        # request's) value, reported as a 422 like any other render error.
        raise TemplateError(
            f"{filter_name}: cannot format {str(value)[:80]!r}: {type(exc).__name__}: {exc}"[:300],
            title="Value cannot be formatted",
            filter=filter_name,
        ) from None


# pass_context: Jinja never runs such a filter at compile time, when there is no
# render and so no locale to format in.
@jinja2.pass_context
def format_currency(
    context: jinja2.runtime.Context, value: Any, currency: Any, format: Any = None
) -> str:
    """``{{ price | format_currency('EUR') }}``: ``4,50 €`` in ``de``, ``€4.50`` in ``en``."""
    number = _number("format_currency", value)
    if not isinstance(currency, str) or re.fullmatch(r"[A-Za-z]{3}", currency) is None:
        raise _refused("format_currency", currency, "a three-letter currency code")
    pattern = _pattern("format_currency", format)
    return _babel_call(
        "format_currency",
        value,
        lambda: babel_numbers.format_currency(
            number, currency.upper(), format=pattern, locale=_locale()
        ),
    )


@jinja2.pass_context
def format_decimal(context: jinja2.runtime.Context, value: Any, format: Any = None) -> str:
    """``{{ 1234.5 | format_decimal }}``: ``1.234,5`` in ``de``, ``1,234.5`` in ``en``."""
    number = _number("format_decimal", value)
    pattern = _pattern("format_decimal", format)
    return _babel_call(
        "format_decimal",
        value,
        lambda: babel_numbers.format_decimal(number, format=pattern, locale=_locale()),
    )


@jinja2.pass_context
def format_percent(context: jinja2.runtime.Context, value: Any, format: Any = None) -> str:
    """``{{ 0.25 | format_percent }}``: ``25 %`` in ``de``, ``25%`` in ``en``."""
    number = _number("format_percent", value)
    pattern = _pattern("format_percent", format)
    return _babel_call(
        "format_percent",
        value,
        lambda: babel_numbers.format_percent(number, format=pattern, locale=_locale()),
    )


@jinja2.pass_context
def format_date(context: jinja2.runtime.Context, value: Any, format: Any = "medium") -> str:
    """``{{ '2024-03-01' | format_date('long') }}``: ``1. März 2024`` in ``de``. Takes a
    date, a datetime or an ISO 8601 string; ``format`` is short, medium, long, full or
    a Babel pattern."""
    day = _datetime("format_date", value, date_only=True)
    pattern = _pattern("format_date", format)
    return _babel_call(
        "format_date",
        value,
        lambda: babel_dates.format_date(day, format=pattern, locale=_locale()),
    )


@jinja2.pass_context
def format_datetime(
    context: jinja2.runtime.Context, value: Any, format: Any = "medium", tzinfo: Any = None
) -> str:
    """``{{ '2024-03-01T12:30:00+01:00' | format_datetime }}``. Takes a datetime, a date or
    an ISO 8601 string; shown in its own UTC offset (naive: UTC) unless ``tzinfo`` names
    an IANA time zone (``'Europe/Zurich'``)."""
    moment = _datetime("format_datetime", value, date_only=False)
    pattern = _pattern("format_datetime", format)
    if tzinfo is not None and (not isinstance(tzinfo, str) or len(tzinfo) > _MAX_VALUE_CHARS):
        raise _refused("format_datetime", tzinfo, "an IANA time zone name")
    return _babel_call(
        "format_datetime",
        value,
        lambda: babel_dates.format_datetime(
            moment,
            format=pattern,
            tzinfo=babel_dates.get_timezone(tzinfo) if tzinfo is not None else None,
            locale=_locale(),
        ),
    )


#: The filters :class:`notifier.templates.TemplateStore` registers, by name.
FILTERS: dict[str, Callable[..., str]] = {
    "format_currency": format_currency,
    "format_decimal": format_decimal,
    "format_percent": format_percent,
    "format_date": format_date,
    "format_datetime": format_datetime,
}
