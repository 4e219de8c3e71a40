"""The ``notifier`` command: serve, worker, migrate, capture, render, check.

Every command reads ``NOTIFIER_SETTINGS`` and the ``NOTIFIER_*`` overrides; ``--settings``
names the settings file explicitly. Errors are one readable line on stderr and a non-zero
exit code, never a traceback.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from notifier.dkim import load_signer
from notifier.errors import NotifierError
from notifier.logs import configure_logging
from notifier.renderer import Renderer
from notifier.settings import SETTINGS_ENV, Settings, load_settings
from notifier.subscribers import load_subscribers

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except NotifierError as exc:
        print(f"notifier {args.command}: {exc.detail}", file=sys.stderr)
        return 1 if args.command in ("render", "check") else 2
    return result


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="notifier", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the HTTP API with hypercorn")
    _add_settings_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser("worker", help="deliver from the outbox, without HTTP")
    _add_settings_option(worker)
    worker.set_defaults(handler=_worker)

    migrate = commands.add_parser("migrate", help="create or upgrade the outbox schema")
    _add_settings_option(migrate)
    migrate.set_defaults(handler=_migrate)

    capture = commands.add_parser("capture", help="run the local SMTP capture server")
    from notifier.capture import cli as capture_cli

    capture_cli.add_arguments(capture)
    capture.set_defaults(handler=capture_cli.run)

    render = commands.add_parser("render", help="render a template and print the message")
    _add_settings_option(render)
    render.add_argument("name", help="template name")
    render.add_argument(
        "data",
        nargs="?",
        help="JSON file with the context ('-' for stdin; default: the template's example)",
    )
    render.set_defaults(handler=_render)

    check = commands.add_parser("check", help="render every template with its example data")
    _add_settings_option(check)
    check.add_argument("--templates", type=Path, help="templates directory to check")
    check.set_defaults(handler=_check)
    return parser


def _add_settings_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", type=Path, help=f"settings file (default ${SETTINGS_ENV})")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.settings)


def _serve(args: argparse.Namespace) -> int:
    from hypercorn.run import run

    from notifier.server import build_config

    # Validate now so a bad setting, subscriber or DKIM key is one line here, not a
    # traceback in each worker.
    settings = _settings(args)
    load_subscribers(settings)
    load_signer(settings.dkim)
    configure_logging(settings.log)
    if args.settings is not None:
        # Workers build the app themselves (notifier.server.create_served_app).
        os.environ[SETTINGS_ENV] = str(args.settings.resolve())
    if args.workers < 1:
        print("notifier serve: --workers must be at least 1", file=sys.stderr)
        return 2
    return run(build_config(host=args.host, port=args.port, workers=args.workers))


def _worker(args: argparse.Namespace) -> int:
    from notifier.worker import run_worker

    settings = _settings(args)
    # A bad subscriber or DKIM key is one line here, not a traceback later.
    load_subscribers(settings)
    load_signer(settings.dkim)
    configure_logging(settings.log)
    return asyncio.run(run_worker(settings))


def _migrate(args: argparse.Namespace) -> int:
    from notifier.outbox import open_outbox

    settings = _settings(args)
    configure_logging(settings.log)

    async def migrate() -> str:
        outbox = open_outbox(settings.outbox)
        await outbox.open()  # migrates, under a lock where processes may race
        try:
            return await outbox.describe()
        finally:
            await outbox.close()

    print(f"notifier migrate: {asyncio.run(migrate())}")
    return 0


def _render(args: argparse.Namespace) -> int:
    renderer = Renderer.from_settings(_settings(args))
    context = _read_context(renderer, args.name, args.data)
    composed = renderer.render(args.name, context)
    sys.stdout.buffer.write(composed.data)
    sys.stdout.buffer.flush()
    return 0


def _read_context(renderer: Renderer, name: str, data: str | None) -> dict[str, Any]:
    if data is None:
        example = renderer.templates.example(name)
        if example is None:
            raise NotifierError(f"{name} has no example data; pass a JSON file")
        return example
    try:
        text = sys.stdin.read() if data == "-" else Path(data).read_text(encoding="utf-8")
        context = json.loads(text)
    except OSError as exc:
        raise NotifierError(f"cannot read {data}: {exc.strerror}") from None
    except ValueError as exc:
        raise NotifierError(f"{data} is not valid JSON: {exc}") from None
    if not isinstance(context, dict):
        raise NotifierError(f"{data} must hold a JSON object")
    return context


def _check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.templates is not None:
        settings = settings.model_copy(
            update={"templates": settings.templates.model_copy(update={"dir": args.templates})}
        )
    renderer = Renderer.from_settings(settings)
    names = renderer.templates.names()
    if not names:
        print(f"no templates in {settings.templates.dir}", file=sys.stderr)
        return 1
    checked = failures = 0
    for name in names:
        # Each locale variant on its own line, as <name>.<tag>: a broken German file
        # must not hide behind a working English one.
        for locale in (None, *renderer.templates.locales(name)):
            outcome = _check_one(renderer, name, locale)
            failed = not outcome.startswith(("ok", "compiles"))
            checked += 1
            failures += failed
            label = name if locale is None else f"{name}.{locale}"
            print(f"{'FAIL' if failed else 'ok  '}  {label}: {outcome}")
    print(f"{checked - failures} passed, {failures} failed")
    return 1 if failures else 0


def _check_one(renderer: Renderer, name: str, locale: str | None) -> str:
    """Compile the files of ``name`` (its variant for ``locale``) and render them with
    the example data, its ``locale`` set to the variant's tag (left out for the base
    files, so that they are the ones rendered)."""
    error = renderer.templates.compile_error(name, locale)
    if error is not None:
        return error
    try:
        example = renderer.templates.example(name)
        if example is None:
            return "compiles (no example data to render)"
        example = {key: value for key, value in example.items() if key != "locale"}
        if locale is not None:
            example["locale"] = locale
        composed = renderer.render(name, example)
    except NotifierError as exc:
        return exc.detail
    signer = renderer.dkim_signer
    key = None if signer is None else signer.key_for(composed.data)
    signed = "" if key is None else f", DKIM-signed d={key.domain} s={key.selector}"
    return f"ok ({len(composed.data)} bytes, {len(composed.recipients)} recipient(s){signed})"
