"""Render + compose cost of the burger receipt, as ratios measured in one run.

Usage: ``.venv/bin/python bench/render_bench.py [--rounds N]`` (or ``make bench``).

Each round times every candidate once (best of a few short batches), in rotating
order, so slow moments of the machine hit all of them alike; the report gives each
candidate's median time and its median ratio to the bare cached Jinja render.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

import jinja2

from notifier import compose
from notifier.compose import ADDRESS_HEADERS as ADDRESSES
from notifier.compose import compose_message
from notifier.sandbox import strip_marks
from notifier.settings import Settings
from notifier.templates import TemplateStore

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
TARGET_RATIO = 4.0


def candidates() -> dict[str, Callable[[], object]]:
    context = json.loads((TEMPLATES / "burger_receipt.example.json").read_text())
    dated = {**context, "date": "Sat, 21 Nov 2026 12:00:00 +0000"}

    # The baseline is a plain text render, as the templates are plain text: no autoescape.
    bare_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES))  # noqa: S701
    bare_template = bare_env.get_template("burger_receipt.j2")

    def bare_render() -> object:
        return bare_template.render(dated)

    def reread_and_compile() -> object:
        # What toy versions do: read the file and compile it on every request.
        source = (TEMPLATES / "burger_receipt.j2").read_text()
        return jinja2.Template(source).render(dated)

    settings = Settings.from_mapping({"templates": {"dir": str(TEMPLATES)}})
    store = TemplateStore(settings.templates.dir)

    def notifier_render_compose() -> object:
        rendered = store.render("burger_receipt", context)
        return compose_message(rendered, message_id_domain="localhost").data

    # The same compose, but with the email package writing the bytes instead of the
    # fast path: the comparison that justifies having a fast path at all.
    def notifier_render_compose_email_package() -> object:
        rendered = store.render("burger_receipt", context)
        head, body_marked = compose._split_header_block(rendered.text)
        headers = compose._parse_header_lines(head)
        addresses = {h.key: compose._parse_addresses(h) for h in headers if h.key in ADDRESSES}
        body = strip_marks(body_marked)
        return compose._email_serialise(headers, addresses, body, "plain", {}, None)

    return {
        "bare cached Jinja render": bare_render,
        "notifier render + compose": notifier_render_compose,
        "same, email package serialiser": notifier_render_compose_email_package,
        "re-read + compile per request": reread_and_compile,
    }


def best_per_call(func: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(func, number=number, repeat=3)) / number


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    funcs = candidates()
    names = list(funcs)
    baseline = names[0]
    numbers = {name: max(50, int(0.02 / best_per_call(func, 20))) for name, func in funcs.items()}
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        measured = {name: best_per_call(funcs[name], numbers[name]) for name in order}
        for name in names:
            times[name].append(measured[name])
            ratios[name].append(measured[name] / measured[baseline])
    print(f"{'candidate':34} {'median µs':>10} {'x bare':>8}")
    for name in names:
        print(
            f"{name:34} {statistics.median(times[name]) * 1e6:10.1f} "
            f"{statistics.median(ratios[name]):8.2f}"
        )
    ratio = statistics.median(ratios["notifier render + compose"])
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"target: render + compose <= {TARGET_RATIO:.0f}x bare render: {verdict} ({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
