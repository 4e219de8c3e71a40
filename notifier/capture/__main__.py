"""``python -m notifier.capture``: the same as ``notifier capture``."""

from __future__ import annotations

import argparse

from notifier.capture.cli import add_arguments, run


def main() -> int:
    """Parse the ``capture`` options and serve."""
    parser = argparse.ArgumentParser(
        prog="notifier capture", description="Local SMTP capture server with an inbox page."
    )
    add_arguments(parser)
    return run(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
