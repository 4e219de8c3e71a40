"""Fault injection: make the capture server behave like a bad relay for chosen recipients.

One vocabulary of actions serves every way of asking for a fault:

``fail-NNN``
    Answer ``RCPT TO`` for the recipient with SMTP code ``NNN`` (4xx transient, 5xx
    permanent). The other recipients of the message are unaffected.
``fail-data-NNN``
    Accept the recipients, then answer the end of ``DATA`` with ``NNN``; nothing is stored.
``drop-data``
    Read the whole message, then close the connection without replying; nothing is stored.
``delay-S``
    Wait ``S`` seconds (decimals allowed) before answering the end of ``DATA``, then accept.

Ask for one either with an address tag, the local part or one of its ``+`` segments:
``fail-451@example.com``, ``bob+delay-2@example.com`` (always on, unless the server is
built with ``address_faults=False``), or with a rule in a :class:`FaultRules` list:
a case-insensitive glob pattern on the recipient address, an action, and optionally how
many times it fires (``times=2``: the first two matching attempts fail, later ones pass).

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from notifier.capture.errors import InvalidFault, UnknownFault

__all__ = ["Fault", "FaultRule", "FaultRules", "parse_action", "parse_rule_spec"]

Stage = Literal["rcpt", "data"]
Kind = Literal["reply", "disconnect", "delay"]

_ACTION = re.compile(
    r"(?P<reply>fail-(?P<data>data-)?(?P<code>[45]\d\d))"
    r"|(?P<disconnect>drop-data)"
    r"|(?P<delay>delay-(?P<seconds>\d+(?:\.\d+)?))"
)
#: An upper bound so that a typo cannot hang a test run for hours.
MAX_DELAY_SECONDS = 600.0


@dataclass(frozen=True)
class Fault:
    """What the server does instead of accepting: a parsed action."""

    action: str
    kind: Kind
    stage: Stage
    code: int | None = None
    delay: float = 0.0

    def reply(self, address: str) -> str:
        """The SMTP reply line for a ``reply`` fault."""
        assert self.code is not None
        enhanced = f"{self.code // 100}.0.0"
        return f"{self.code} {enhanced} Injected failure ({self.action}) for <{address}>"


def parse_action(action: str) -> Fault:
    """Parse ``fail-451``, ``fail-data-554``, ``drop-data`` or ``delay-1.5``."""
    match = _ACTION.fullmatch(action.strip().lower())
    if match is None:
        raise InvalidFault(
            f"unknown fault action {action!r}: use fail-NNN, fail-data-NNN, drop-data "
            "or delay-SECONDS",
            action=action,
        )
    if match["reply"]:
        stage: Stage = "data" if match["data"] else "rcpt"
        return Fault(match[0], "reply", stage, code=int(match["code"]))
    if match["disconnect"]:
        return Fault(match[0], "disconnect", "data")
    seconds = float(match["seconds"])
    if seconds > MAX_DELAY_SECONDS:
        raise InvalidFault(f"delay {seconds:g}s is over the {MAX_DELAY_SECONDS:g}s limit")
    return Fault(match[0], "delay", "data", delay=seconds)


def fault_from_address(address: str) -> Fault | None:
    """The fault an address asks for with its local part or a ``+`` tag, if any."""
    local_part = address.rpartition("@")[0] or address
    for segment in reversed(local_part.split("+")):
        if _ACTION.fullmatch(segment.lower()):
            return parse_action(segment)
    return None


@dataclass
class FaultRule:
    """A fault for every recipient matching ``pattern``, ``remaining`` more times."""

    id: int
    pattern: str
    fault: Fault
    #: How many more times it fires; None means for ever.
    remaining: int | None

    def matches(self, address: str) -> bool:
        """Whether the (case-insensitive) glob pattern matches this address."""
        return fnmatch.fnmatchcase(address.lower(), self.pattern.lower())

    def as_json(self) -> dict[str, Any]:
        """The rule as the HTTP API shows it."""
        return {
            "id": self.id,
            "pattern": self.pattern,
            "action": self.fault.action,
            "times": self.remaining,
        }


class FaultRules:
    """An ordered, thread-safe list of fault rules; the first live match fires."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def add(self, pattern: str, action: str, *, times: int | None = None) -> FaultRule:
        """Inject ``action`` for recipients matching the glob ``pattern``.

        ``times`` limits how many attempts it affects (then the server accepts again);
        None keeps it for ever.
        """
        if not pattern:
            raise InvalidFault("a fault pattern must not be empty")
        if times is not None and times < 1:
            raise InvalidFault(f"times must be at least 1, not {times}")
        rule = FaultRule(next(self._ids), pattern, parse_action(action), times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> None:
        """Drop one rule; raises :class:`UnknownFault`."""
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.id == rule_id:
                    del self._rules[index]
                    return
        raise UnknownFault(f"no fault rule has id {rule_id}")

    def clear(self) -> None:
        """Drop every rule."""
        with self._lock:
            self._rules.clear()

    def __iter__(self) -> Iterator[FaultRule]:
        with self._lock:
            return iter(list(self._rules))

    def __len__(self) -> int:
        with self._lock:
            return len(self._rules)

    def take(self, address: str, stage: Stage) -> Fault | None:
        """Fire the first live rule for ``address`` at ``stage``, counting it down."""
        with self._lock:
            for rule in self._rules:
                if rule.fault.stage == stage and rule.matches(address):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining == 0:
                            self._rules.remove(rule)
                    return rule.fault
        return None


def parse_rule_spec(spec: str) -> tuple[str, str, int | None]:
    """Parse the command line form ``PATTERN=ACTION[*TIMES]`` into its parts."""
    pattern, separator, rest = spec.rpartition("=")
    if not separator or not pattern:
        raise InvalidFault(f"fault {spec!r} is not PATTERN=ACTION[*TIMES]")
    action, _, times_text = rest.partition("*")
    parse_action(action)
    try:
        times = int(times_text) if times_text else None
    except ValueError:
        raise InvalidFault(f"fault {spec!r}: TIMES must be a whole number") from None
    return pattern, action, times
