"""The Jinja sandbox templates render in: value markers and render budgets.

**Value markers.** Every value a template prints with ``{{ ... }}`` is wrapped in markers
made of a Unicode noncharacter and a nonce chosen afresh for each render, and line
breaks inside the value are replaced by markers too. :mod:`notifier.compose` reads them
to tell the template's own structure (header lines, the blank line, commas between
addresses) from request data, which is how header injection and added recipients are
refused without guessing. Request data cannot forge a marker: it does not know the
nonce, and a noncharacter that is not part of this render's markers is refused. The
output of a macro, a call block or a ``{% set %}`` block already carries markers; when
it is printed, those inner markers are taken off and the whole output is marked as one
value, so it prints like any other value. After the render, the nonce markers become
the fixed single-character markers (:data:`VALUE_START` ...) that compose reads.

**Render budgets.** A template is code written by operators, and request data decides
how much work it does. Each render gets a time budget and an output-size budget
(``limits.render_timeout``, ``limits.max_rendered_chars``), checked cooperatively: at
every printed value and output chunk, every 64 iterations of every ``{% for %}`` loop,
every call and every intercepted operator. Operations that would allocate a huge result
in one step (``'x' * 10**9``, ``10**10**9``, a format width of a million, padding
methods and filters asked for a million characters, ``~`` joins) are refused before
they run. The budgets stop mistakes and request data that makes a template do
unbounded work; they do not make a deliberately hostile template safe, so templates
are reviewed like code.

A render may also run with a *slice*: a little CPU time after which it raises
:class:`SliceExhausted` instead of failing, so that the caller can run it again off the
event loop (see :mod:`notifier.renderer`). The slice counts the thread's CPU time, not
the wall clock: on a busy machine a quick render that the system paused for a moment is
not mistaken for a slow one.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import BuiltinMethodType, MethodType
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup

from notifier.errors import RenderBudgetExceeded, TemplateError

__all__ = [
    "CR_MARK",
    "LF_MARK",
    "VALUE_END",
    "VALUE_START",
    "RenderBudget",
    "RenderState",
    "SliceExhausted",
    "TemplateSandbox",
    "rendering",
    "strip_marks",
    "unmark_active",
]

VALUE_START = "\ufdd0"
VALUE_END = "\ufdd1"
CR_MARK = "\ufdd2"
LF_MARK = "\ufdd3"
_NONCHARACTER = re.compile("[\ufdd0-\ufdef]")

#: Loop iterations between two budget checks.
_CHECK_EVERY = 64
#: A format width or precision of a million characters or more is refused outright.
_HUGE_PERCENT_WIDTH = re.compile(r"%[-+ #0]*(?:\d{7,}|\d*\.\d{7,})")
_HUGE_BRACE_WIDTH = re.compile(r"\{[^{}]*:[^{}]*\d{7,}")
#: Filters and ``str`` methods whose integer arguments say how long the result is.
_SIZING_FILTERS = frozenset({"center", "indent", "truncate", "wordwrap", "batch", "slice"})
_SIZING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
#: Most decimal digits ``**`` may produce.
_MAX_POWER_DIGITS = 10_000


def strip_marks(text: str) -> str:
    """Remove fixed value markers and restore the line breaks they stood for."""
    # str.replace, not str.translate with a mapping: several times faster here.
    text = text.replace(VALUE_START, "").replace(VALUE_END, "")
    if CR_MARK in text or LF_MARK in text:
        text = text.replace(CR_MARK, "\r").replace(LF_MARK, "\n")
    return text


class SliceExhausted(Exception):
    """A render ran past its slice: run it again where it may take longer."""


class RenderBudget:
    """How long one render may take and how much text it may produce."""

    __slots__ = ("max_output", "seconds")

    def __init__(self, *, seconds: float, max_output: int) -> None:
        self.seconds = seconds
        self.max_output = max_output


class RenderState:
    """One render in progress: its markers and what is left of its budget."""

    __slots__ = ("cr", "deadline", "end", "lf", "max_output", "output", "slice_end", "start")

    def __init__(self, budget: RenderBudget, *, slice_seconds: float | None) -> None:
        nonce = os.urandom(6).hex()
        self.start = VALUE_START + nonce
        self.end = VALUE_END + nonce
        self.cr = CR_MARK + nonce
        self.lf = LF_MARK + nonce
        now = time.perf_counter()
        self.deadline = now + budget.seconds
        #: In this thread's CPU time (time.thread_time), or None without a slice.
        self.slice_end = time.thread_time() + slice_seconds if slice_seconds else None
        self.max_output = budget.max_output
        self.output = 0

    def check(self) -> None:
        """Raise when the time budget (or the slice) is used up."""
        if self.slice_end is not None and time.thread_time() > self.slice_end:
            raise SliceExhausted
        if time.perf_counter() > self.deadline:
            raise RenderBudgetExceeded(
                "the template did not finish within limits.render_timeout", budget="time"
            )

    def refuse_size(self, size: int, what: str) -> None:
        """Refuse an operation that would produce ``size`` characters, when too many."""
        if size > self.max_output:
            raise RenderBudgetExceeded(
                f"{what} would produce {size} characters; a render may produce at most"
                f" {self.max_output} (limits.max_rendered_chars)",
                budget="output",
            )

    def add_output(self, size: int) -> None:
        self.output += size
        if self.output > self.max_output:
            raise RenderBudgetExceeded(
                f"the template produced more than {self.max_output} characters"
                " (limits.max_rendered_chars)",
                budget="output",
            )

    def mark(self, text: str) -> str:
        """``text`` as one marked value (see the module doc)."""
        if not text.isascii() and _NONCHARACTER.search(text) is not None:
            text = self.unmark(text)
            if _NONCHARACTER.search(text) is not None:
                raise TemplateError(
                    "a value contains a Unicode noncharacter (U+FDD0..U+FDEF), which"
                    " request data may not hold",
                    title="Invalid value in template output",
                )
        if "\n" in text or "\r" in text:
            text = text.replace("\r", self.cr).replace("\n", self.lf)
        return self.start + text + self.end

    def unmark(self, text: str) -> str:
        """Take this render's markers off ``text``, restoring the line breaks."""
        text = text.replace(self.start, "").replace(self.end, "")
        if CR_MARK in text or LF_MARK in text:
            text = text.replace(self.cr, "\r").replace(self.lf, "\n")
        return text

    def fixed_marks(self, text: str) -> str:
        """``text`` with this render's markers turned into the fixed ones compose reads."""
        text = text.replace(self.start, VALUE_START).replace(self.end, VALUE_END)
        if CR_MARK in text or LF_MARK in text:
            text = text.replace(self.cr, CR_MARK).replace(self.lf, LF_MARK)
        return text


class _RenderLocal(threading.local):
    #: The render in progress in this thread, if any.
    state: RenderState | None = None


_local = _RenderLocal()


def _active() -> RenderState | None:
    return _local.state


class rendering:  # lower case: it reads like the function it stands in for
    """Make renders in this thread use ``budget`` (and, optionally, a slice) until the
    ``with`` block ends. A class, not ``contextlib.contextmanager``: it runs on every
    request, and this costs a fifth as much."""

    __slots__ = ("_previous", "_state")

    def __init__(self, budget: RenderBudget, *, slice_seconds: float | None = None) -> None:
        self._state = RenderState(budget, slice_seconds=slice_seconds)
        self._previous: RenderState | None = None

    def __enter__(self) -> RenderState:
        self._previous = _local.state
        _local.state = self._state
        return self._state

    def __exit__(self, *exc_info: object) -> None:
        _local.state = self._previous


def unmark_active(text: str) -> str:
    """``text`` without the markers of the render in progress in this thread, for filters
    that read values printed earlier (a ``{% set %}`` block); unchanged outside a render."""
    state = _local.state
    return text if state is None else state.unmark(text)


def _state() -> RenderState:
    state = _local.state
    if state is None:
        raise TemplateError("a template was rendered outside notifier.sandbox.rendering()")
    return state


@jinja2.pass_context
def _mark_value(context: jinja2.runtime.Context, value: Any) -> Any:
    """Jinja ``finalize`` hook: mark each printed value (see the module doc).

    Takes the context so that Jinja never runs it at compile time (there is no render,
    and no nonce, then). A JSON array prints as its elements, each marked on its own,
    joined by ", ": in an address header each element is then one address.
    """
    # No time check here: a template prints few values unless it loops or calls, and
    # loops and calls check the time themselves.
    state = _local.state or _state()
    if type(value) is list or type(value) is tuple:
        return ", ".join(state.mark(str(item)) for item in value)
    if isinstance(value, Markup):
        # Already-safe HTML must stay Markup or autoescaping would escape it twice; the
        # markers are noncharacters, and the text was Markup already.
        return Markup(state.mark(str(value)))  # noqa: S704
    return state.mark(value if type(value) is str else str(value))


def guarded_iter(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every ``{% for %}`` loop iterates over: the loop, with budget checks."""
    state = _state()
    for count, item in enumerate(iterable):
        if count % _CHECK_EVERY == 0:
            state.check()
        yield item


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles templates with budget checks in every loop and every ``~`` join."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            loop.iter = nodes.Call(
                nodes.ImportedName(f"{__name__}.guarded_iter"),
                [loop.iter],
                [],
                None,
                None,
                lineno=loop.iter.lineno,
            )
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # CodeGenerator.visit_Concat, with the parts measured before they are joined.
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"{join}(environment.measured_parts((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write(")))")


class TemplateSandbox(ImmutableSandboxedEnvironment):
    """The sandboxed environment every notifier template renders in."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_mark_value, **options)
        for name, function in list(self.filters.items()):
            if name in _SIZING_FILTERS or name == "format":
                self.filters[name] = _sized_filter(name, function)

    def render_text(self, template: jinja2.Template, context: Mapping[str, Any]) -> str:
        """Render within the active budget, counting the output as it is produced."""
        state = _state()
        limit = state.max_output - state.output
        size = 0
        parts: list[str] = []
        append = parts.append
        # Per chunk, so a loop that prints is stopped at the limit, not after it built
        # all its output. (Time is checked by the loops and calls themselves.)
        # root_render_func, as Template.render uses it: Template.generate would add a
        # generator layer per chunk, only to rewrite tracebacks nobody reads here.
        for chunk in template.root_render_func(template.new_context(dict(context))):
            size += len(chunk)
            if size > limit:
                state.add_output(size)
            append(chunk)
        state.add_output(size)
        return "".join(parts)

    def measured_parts(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        size = sum(len(part) for part in parts if isinstance(part, str))
        _state().refuse_size(size, "joining values with ~")
        return parts

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        state = _state()
        state.check()
        if operator == "*":
            sequence, count = (right, left) if isinstance(left, int) else (left, right)
            if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                state.refuse_size(len(sequence) * count, "repeating a value with *")
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                state.refuse_size(len(left) + len(right), "adding values with +")
        elif operator == "**":
            _refuse_huge_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _refuse_huge_width(left)
            values = right if isinstance(right, tuple) else (right,)
            _refuse_huge_ints(values, {}, state, "formatting with %")
        return super().call_binop(context, operator, left, right)

    def call(
        __self,  # Jinja's own spelling, so that no keyword argument of a call clashes
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        state = _state()
        state.check()
        if (
            isinstance(__obj, BuiltinMethodType | MethodType)
            and isinstance(getattr(__obj, "__self__", None), str)
            and __obj.__name__ in _SIZING_METHODS
        ):
            _refuse_huge_ints(args, kwargs, state, f"str.{__obj.__name__}()")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        template: str = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            state = _state()
            if _HUGE_BRACE_WIDTH.search(template) is not None:
                raise _huge_width()
            _refuse_huge_ints(args, kwargs, state, "str.format()")
            return wrapped(*args, **kwargs)

        return checked


def _sized_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter whose arguments size its result so that huge sizes are refused."""

    @functools.wraps(function)  # keeps Jinja's pass_context marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        state = _active()
        if state is None:
            # Jinja tries filters on constants while compiling; without a render there is
            # no budget to check against, and raising here makes it leave the call to
            # the render.
            raise TemplateError(f"the {name} filter runs at render time")
        if name == "format" and args and isinstance(args[0], str):
            _refuse_huge_width(args[0])
        _refuse_huge_ints(args[1:], kwargs, state, f"the {name} filter")
        return function(*args, **kwargs)

    return checked


def _refuse_huge_ints(
    args: Iterable[Any], kwargs: Mapping[str, Any], state: RenderState, what: str
) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            state.refuse_size(abs(value), what)


def _refuse_huge_width(template: str) -> None:
    if "%" in template and _HUGE_PERCENT_WIDTH.search(template) is not None:
        raise _huge_width()


def _huge_width() -> RenderBudgetExceeded:
    return RenderBudgetExceeded(
        "a format width or precision of a million characters or more", budget="output"
    )


def _refuse_huge_power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int)) or abs(base) < 2:
        return
    # The result has about exponent * log2(base) bits, 3.32 bits to a decimal digit.
    # Python prints no int of more than 4300 digits anyway (sys.int_info), and
    # computing a far larger one can take minutes.
    if exponent > 0 and exponent * math.log2(abs(base)) / 3.32 > _MAX_POWER_DIGITS:
        raise RenderBudgetExceeded(
            f"{base} ** {exponent} has more than {_MAX_POWER_DIGITS} digits", budget="output"
        )
