"""The PostgreSQL server the tests use, found or started, and isolated places in it.

Where the server comes from, first match wins:

1. ``NOTIFIER_TEST_POSTGRES_URL``: a ``postgresql://`` URL of a server and a database on
   which the tests may create databases. A URL that is set but does not answer is an
   error, never passed over: whoever set it wants that server, and a silent fallback
   would test something else.
2. A server on 127.0.0.1:5432 that lets the user ``postgres``, or else the current OS
   user, log in and create databases.
3. A throwaway cluster of this module's own, from Debian's ``postgresql`` binaries
   (``/usr/lib/postgresql/<version>/bin``, newest first), in a temporary folder and on a
   free loopback port, removed again when the tests end.

When none of them works, :class:`PostgresUnavailable` says what was tried and how to fix
it. The tests never skip for want of PostgreSQL.

Each test run gets a database of its own (:func:`fresh_database`) and each test a schema of
its own in it (:func:`fresh_schema`), handed out as a URL whose ``options`` parameter sets
``search_path`` to the schema, so code under test needs nothing but the URL.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

__all__ = [
    "DEBIAN_BIN_GLOB",
    "LOCAL_PORT",
    "URL_VARIABLE",
    "PostgresUnavailable",
    "Server",
    "ThrowawayCluster",
    "debian_bin_dirs",
    "find_server",
    "fresh_database",
    "fresh_schema",
    "with_database",
    "with_search_path",
]

URL_VARIABLE = "NOTIFIER_TEST_POSTGRES_URL"
LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 5432
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
CONNECT_TIMEOUT = 5  # seconds; libpq's own minimum is 2
SERVER_START_TIMEOUT = 60  # seconds for pg_ctl to see the server accept connections
SCHEMA_DROP_LOCK_TIMEOUT = "5s"


# Settings for a cluster that lives for one test run: durability buys nothing there.
THROWAWAY_SETTINGS = {
    "listen_addresses": f"'{LOCAL_HOST}'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be reached or started for the tests."""


def how_to_fix(variable: str = URL_VARIABLE) -> str:
    """How to get a server: said at the end of every failure to find or start one."""
    return (
        f"Set {variable}=postgresql://USER@HOST:PORT/DBNAME (a role that may create"
        " databases), or install Debian's postgresql package ('sudo apt-get install"
        " postgresql'; make test and .ci/run install it when they run as root) so that the"
        " tests can start a throwaway cluster of their own."
    )


def find_server(
    environ: Mapping[str, str],
    *,
    variable: str = URL_VARIABLE,
    local_port: int = LOCAL_PORT,
    bin_dirs: Iterable[Path] | None = None,
) -> Server:
    """The server the tests use, in the order the module docstring gives.

    ``environ`` is read for ``variable`` only (default :data:`URL_VARIABLE`; the
    benchmarks in bench/ pass their own). ``bin_dirs`` overrides where the PostgreSQL
    binaries for a throwaway cluster are looked for (default: :func:`debian_bin_dirs`).
    The caller stops the returned server (a throwaway cluster is removed then; a server
    found running is left alone).
    """
    explicit = environ.get(variable, "")
    if explicit:
        if urlsplit(explicit).scheme not in ("postgresql", "postgres"):
            raise PostgresUnavailable(
                f"{variable} must be a postgresql:// URL, not {redacted(explicit)!r}."
            )
        problem = login_problem(explicit)
        if problem is not None:
            raise PostgresUnavailable(
                f"{variable}={redacted(explicit)} cannot be used: {problem}. Only the"
                " server that this variable names is used, or none: fix the URL, or unset"
                f" it to use {LOCAL_HOST}:{LOCAL_PORT} or a throwaway cluster."
            )
        return Server(url=explicit, origin=f"{variable} ({redacted(explicit)})")

    tried: list[str] = [f"{variable}: not set"]
    if port_answers(LOCAL_HOST, local_port):
        for user in dict.fromkeys(["postgres", getpass.getuser()]):
            url = f"postgresql://{quote(user, safe='')}@{LOCAL_HOST}:{local_port}/postgres"
            problem = login_problem(url)
            if problem is None:
                return Server(url=url, origin=f"the server on {LOCAL_HOST}:{local_port} as {user}")
            tried.append(f"{LOCAL_HOST}:{local_port} as {user}: {problem}")
    else:
        tried.append(f"{LOCAL_HOST}:{local_port}: nothing answers")

    dirs = list(debian_bin_dirs() if bin_dirs is None else bin_dirs)
    if not dirs:
        tried.append(f"a throwaway cluster: no initdb in {DEBIAN_BIN_GLOB}")
    for bin_dir in dirs:
        try:
            cluster = ThrowawayCluster.start(bin_dir)
        except PostgresUnavailable as exc:
            tried.append(f"a throwaway cluster from {bin_dir}: {exc}")
            continue
        return Server(
            url=cluster.url,
            origin=f"a throwaway cluster from {bin_dir} on {LOCAL_HOST}:{cluster.port}",
            cluster=cluster,
        )
    raise PostgresUnavailable(
        "No PostgreSQL server for the tests. Tried, in order:\n"
        + "".join(f"  - {attempt}\n" for attempt in tried)
        + how_to_fix(variable)
    )


@dataclass
class Server:
    """A PostgreSQL server the tests may create databases on.

    ``url`` connects to its maintenance database as a role that may create databases;
    ``origin`` says, for people, where the server came from.
    """

    url: str
    origin: str
    cluster: ThrowawayCluster | None = None

    def stop(self) -> None:
        """Stop and remove the server if the tests started it; else leave it running."""
        if self.cluster is not None:
            self.cluster.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def port_answers(host: str, port: int) -> bool:
    """Whether anything accepts TCP connections at ``host``:``port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def login_problem(url: str) -> str | None:
    """Why the tests cannot use the server at ``url``, or None when they can.

    They can when a connection succeeds and its role may create databases.
    """
    try:
        with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            row = conn.execute(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
    except psycopg.Error as exc:
        # libpq's messages span lines ("connection to server ... failed: ..."); one is enough.
        return " ".join(str(exc).split()) or type(exc).__name__
    if row is None or not row[0]:
        return "the role may not create databases (it needs CREATEDB)"
    return None


def redacted(url: str) -> str:
    """``url`` with any password replaced, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@contextlib.contextmanager
def fresh_database(server_url: str, *, prefix: str = "notifier_test") -> Iterator[str]:
    """Create an empty database on the server, yield its URL, then drop it.

    The database is named ``<prefix>_<random>``, so that one left behind by a killed run
    says whose it was. Connections still open at the end are ended first, so that a test
    that leaked one cannot keep the database alive.
    """
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server_url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
            if conn.info.server_version >= 130000:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            else:
                # Before PostgreSQL 13 DROP DATABASE has no FORCE: end the sessions by hand.
                # ALLOW_CONNECTIONS false first, so that none comes back in between.
                conn.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                        sql.Identifier(name)
                    )
                )
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def fresh_schema(database_url: str) -> Iterator[str]:
    """Create an empty schema in the database, yield a URL that selects it, then drop it.

    The URL's ``options`` parameter sets ``search_path`` to the schema alone, so tables
    that code creates without a schema name land there. Dropping it waits at most
    :data:`SCHEMA_DROP_LOCK_TIMEOUT` for locks: a test that still holds some (a connection
    left in a transaction) fails its teardown, naming the sessions, instead of hanging.
    """
    name = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(database_url, connect_timeout=CONNECT_TIMEOUT, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield with_search_path(database_url, name)
    finally:
        with psycopg.connect(
            database_url, connect_timeout=CONNECT_TIMEOUT, autocommit=True
        ) as conn:
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(SCHEMA_DROP_LOCK_TIMEOUT))
            )
            try:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
            except psycopg.errors.LockNotAvailable as exc:
                holders = conn.execute(
                    "SELECT DISTINCT a.pid, a.application_name, a.state, a.query"
                    " FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE n.nspname = %s AND l.pid <> pg_backend_pid()",
                    (name,),
                ).fetchall()
                raise AssertionError(
                    f"schema {name} could not be dropped: sessions the test left open still"
                    f" hold locks in it (pid, application, state, last query): {holders}"
                ) from exc


def with_database(url: str, dbname: str) -> str:
    """``url`` with its database replaced by ``dbname``."""
    parts = urlsplit(url)
    # A dbname query parameter would win over the path; the path is the one place for it.
    query = [(key, value) for key, value in query_pairs(parts.query) if key != "dbname"]
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe=""), query=encode_query(query)))


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``-csearch_path=<schema>`` added to its ``options`` parameter.

    libpq passes ``options`` to the server as command-line options for the session;
    ``-c name=value`` sets a setting, so every connection made from the URL (psycopg,
    psycopg-pool, psql) starts with the schema as its ``search_path``. Options the URL
    already carries are kept. In the URL the ``=`` is percent-encoded (``%3D``).
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        # Unquoted in search_path, and libpq splits options on spaces: keep names plain.
        raise ValueError(f"not a plain lower-case schema name: {schema!r}")
    parts = urlsplit(url)
    query = query_pairs(parts.query)
    options = [value for key, value in query if key == "options"]
    setting = f"-csearch_path={schema}"
    combined = " ".join([*options, setting])
    query = [(key, value) for key, value in query if key != "options"] + [("options", combined)]
    return urlunsplit(parts._replace(query=encode_query(query)))


def query_pairs(query: str) -> list[tuple[str, str]]:
    """A URL query split as libpq reads it: percent-decoding only, ``+`` stays ``+``."""
    pairs = []
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def encode_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{quote(key, safe='')}={quote(value, safe='')}" for key, value in pairs)


def debian_bin_dirs() -> list[Path]:
    """Debian's PostgreSQL binary folders that hold an ``initdb``, newest version first."""
    found = [path.parent for path in Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/") + "/initdb")]
    return sorted(found, key=lambda path: version_key(path.parent.name), reverse=True)


def version_key(text: str) -> tuple[int, ...]:
    """``"15"`` -> (15,), ``"9.6"`` -> (9, 6); anything else sorts first."""
    if not re.fullmatch(r"\d+(\.\d+)*", text):
        return ()
    return tuple(int(part) for part in text.split("."))


@dataclass
class ThrowawayCluster:
    """A PostgreSQL cluster of its own in a temporary folder, served on a free loopback port.

    Authentication is ``trust`` for the superuser ``postgres``; the server accepts TCP on
    127.0.0.1 only and keeps its unix socket in the temporary folder, out of everyone's
    way. :meth:`stop` ends the server and removes the folder.
    """

    bin_dir: Path
    root: Path
    port: int
    # initdb and postgres refuse to run as root: then they run as this system user.
    run_as: pwd.struct_passwd | None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOCAL_HOST}:{self.port}/postgres"

    @classmethod
    def start(cls, bin_dir: Path, *, attempts: int = 3) -> ThrowawayCluster:
        """initdb a cluster and start its server; the caller must :meth:`stop` it.

        Raises :class:`PostgresUnavailable` with the tool's output when either step fails.
        """
        run_as = None
        if os.geteuid() == 0:
            try:
                run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root, and there is no 'postgres' system user to run initdb"
                    " as (Debian's postgresql package creates it)"
                ) from None
        cluster = cls(
            bin_dir=bin_dir,
            root=Path(tempfile.mkdtemp(prefix="notifier-pg-")),
            port=0,
            run_as=run_as,
        )
        try:
            cluster._initdb()
            # A free port is only known free until someone binds it; if another process
            # takes it between the check and the server's bind, try another one.
            for attempt in range(attempts):
                cluster.port = free_port()
                cluster.log_file.unlink(missing_ok=True)
                if cluster._start_server():
                    return cluster
                if attempt == attempts - 1 or "already in use" not in cluster._log_tail():
                    raise PostgresUnavailable(f"the server did not start:\n{cluster._log_tail()}")
        except BaseException:
            # pg_ctl may have given up waiting on a server that still came up.
            cluster.stop()
            raise
        raise AssertionError("unreachable: the loop returns or raises")

    def halt(self) -> None:
        """Shut the server down cleanly, keeping the cluster: :meth:`resume` starts it
        again on the same port (for tests of what notifier does while it is down)."""
        stopped = self._run(
            self.bin_dir / "pg_ctl", "stop", "-D", self.data_dir, "-m", "fast", "-w"
        )
        if stopped.returncode != 0:
            raise PostgresUnavailable(f"the server did not stop:\n{stopped.stderr}")

    def resume(self) -> None:
        """Start the server of a :meth:`halt`-ed cluster again."""
        if not self._start_server():
            raise PostgresUnavailable(f"the server did not start again:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop the server at once (no checkpoint) and remove the cluster's folder."""
        try:
            stopped = self._run(
                self.bin_dir / "pg_ctl", "stop", "-D", self.data_dir, "-m", "immediate", "-w"
            )
            if stopped.returncode != 0:
                self._kill_leftover_server()
        finally:
            if self.root.exists():
                shutil.rmtree(self.root)

    def _initdb(self) -> None:
        self.socket_dir.mkdir(mode=0o700)
        if self.run_as is not None:
            # initdb makes the data folder inside the root, and the server writes its log
            # and socket there: as the user they run as, they must own both folders.
            for folder in (self.root, self.socket_dir):
                os.chown(folder, self.run_as.pw_uid, self.run_as.pw_gid)
        result = self._run(
            self.bin_dir / "initdb",
            "-D",
            self.data_dir,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed:\n{result.stdout}{result.stderr}")
        settings = {**THROWAWAY_SETTINGS, "unix_socket_directories": f"'{self.socket_dir}'"}
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# notifier's throwaway test cluster\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _start_server(self) -> bool:
        result = self._run(
            self.bin_dir / "pg_ctl",
            "start",
            "-D",
            self.data_dir,
            "-l",
            self.log_file,
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            str(SERVER_START_TIMEOUT),
        )
        return result.returncode == 0

    def _run(self, *command: str | Path) -> subprocess.CompletedProcess[str]:
        args = [str(part) for part in command]
        # PGDATA, PGPORT and friends from the caller's shell must not steer the cluster.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        if self.run_as is None:
            return subprocess.run(
                args,
                cwd=self.root,
                env=env,
                capture_output=True,
                text=True,
                timeout=SERVER_START_TIMEOUT + 30,
                check=False,
            )
        return subprocess.run(
            args,
            cwd=self.root,
            env={**env, "HOME": self.run_as.pw_dir, "USER": self.run_as.pw_name},
            capture_output=True,
            text=True,
            timeout=SERVER_START_TIMEOUT + 30,
            check=False,
            user=self.run_as.pw_uid,
            group=self.run_as.pw_gid,
            extra_groups=[],
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(the server wrote no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _kill_leftover_server(self) -> None:
        # pg_ctl could not stop it (timed out, or found no server): end the postmaster that
        # this cluster started, if one still runs, so that no server outlives the tests.
        # The pid file may be stale, so the process must show this data folder first.
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if os.fsencode(self.data_dir) in command_line:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOCAL_HOST, 0))
        port: int = probe.getsockname()[1]
        return port
