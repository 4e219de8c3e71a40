"""``notifier capture``: the capture server as a command, until SIGTERM or Ctrl-C.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from notifier.capture.errors import InvalidFault
from notifier.capture.faults import FaultRules, parse_rule_spec
from notifier.capture.server import CaptureServer, bind_socket
from notifier.capture.smtp import DEFAULT_MAX_MESSAGE_SIZE
from notifier.capture.store import MessageStore

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``capture`` options to a parser (``notifier capture`` or ``-m``)."""
    parser.add_argument("--smtp-host", default="127.0.0.1", help="SMTP address to listen on")
    parser.add_argument(
        "--smtp-port", type=int, default=1025, help="SMTP port (0 picks a free one)"
    )
    parser.add_argument("--http-host", default="127.0.0.1", help="inbox/API address")
    parser.add_argument(
        "--http-port", type=int, default=8025, help="inbox/API port (0 picks a free one)"
    )
    parser.add_argument("--dir", default="var/capture", help="where captured .eml files are kept")
    parser.add_argument(
        "--max-message-size",
        type=int,
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help="larger messages get 552 and are not stored",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="PATTERN=ACTION[*TIMES]",
        help="inject a fault for recipients matching a glob, e.g. '*@flaky.test=fail-451*2' "
        "(actions: fail-NNN, fail-data-NNN, drop-data, delay-SECONDS); repeatable",
    )
    parser.add_argument(
        "--no-address-faults",
        dest="address_faults",
        action="store_false",
        help="ignore fault tags in recipient addresses (fail-451@..., bob+delay-2@...)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then stop cleanly; returns the exit code."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # aiosmtpd logs every SMTP command at INFO; one line per captured message is enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    faults = FaultRules()
    try:
        for spec in args.fault:
            pattern, action, times = parse_rule_spec(spec)
            faults.add(pattern, action, times=times)
    except InvalidFault as error:
        print(f"notifier capture: {error}", file=sys.stderr)
        return 2
    try:
        store = MessageStore(args.dir)
        smtp_socket = bind_socket(args.smtp_host, args.smtp_port)
        http_socket = bind_socket(args.http_host, args.http_port)
    except OSError as error:
        print(f"notifier capture: {error}", file=sys.stderr)
        return 1
    server = CaptureServer(
        store,
        smtp_socket=smtp_socket,
        http_socket=http_socket,
        faults=faults,
        address_faults=args.address_faults,
        max_message_size=args.max_message_size,
    )
    try:
        asyncio.run(_serve_until_signalled(server))
    finally:
        smtp_socket.close()
        http_socket.close()
    return 0


async def _serve_until_signalled(server: CaptureServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    await server.start()
    smtp_host, smtp_port = server.smtp_address
    # One parseable line: scripts and tests that pass port 0 read the real ports here.
    print(
        f"notifier capture: SMTP on {smtp_host}:{smtp_port}, "
        f"inbox on {server.http_url}/, storing in {server.store.directory} "
        f"({len(server.store)} message(s) kept)",
        flush=True,
    )
    await stop.wait()
    log.info("stopping: waiting for messages being stored")
    await server.stop()
