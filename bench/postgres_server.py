"""The PostgreSQL server the benchmarks run against, and databases of their own on it.

The test suite's finder (``tests/postgres.py``) picks the server, so benchmarks and tests
look in the same places, first match wins: ``NOTIFIER_BENCH_POSTGRES_URL`` (a
``postgresql://`` URL of a role that may create databases; set but unusable is an
error), the server on 127.0.0.1:5432, or a throwaway cluster started from Debian's
``postgresql`` binaries and removed at the end. A benchmark works only in databases it
creates, named ``notifier_bench_<random>``, and drops them when it ends.

A throwaway cluster is made for tests and runs with ``fsync`` off: its commits never wait
for the disk, so its numbers do not compare with a durable server's. :func:`describe`
puts what the run had at the top of each report.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

# The benchmarks run as scripts, with bench/ first on sys.path; the finder is in the
# test suite's package at the top of the repository.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import postgres  # noqa: E402

__all__ = ["URL_VARIABLE", "database_name", "describe", "fresh_database", "server"]

URL_VARIABLE = "NOTIFIER_BENCH_POSTGRES_URL"


@contextlib.contextmanager
def server() -> Iterator[postgres.Server]:
    """The server, found or started; a throwaway cluster is removed at the end."""
    with postgres.find_server(os.environ, variable=URL_VARIABLE) as found:
        yield found


def fresh_database(found: postgres.Server) -> contextlib.AbstractContextManager[str]:
    """An empty database on ``found``, as a URL; dropped when the block ends."""
    return postgres.fresh_database(found.url, prefix="notifier_bench")


def database_name(url: str) -> str:
    """The database a URL from :func:`fresh_database` names."""
    return unquote(urlsplit(url).path.lstrip("/"))


def describe(found: postgres.Server) -> str:
    """One line: the server's version, where it came from, and how durable commits are."""
    with psycopg.connect(found.url, autocommit=True) as conn:
        version, fsync, synchronous = (
            conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit")
        )
    return (
        f"PostgreSQL {version.split()[0]}, {found.origin}; fsync {fsync},"
        f" synchronous_commit {synchronous}"
    )
