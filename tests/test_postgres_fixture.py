"""The tests' PostgreSQL (tests/postgres.py): each way of getting a server, and the
database and schema fixtures built on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests import postgres

ROOT = Path(__file__).resolve().parent.parent


def search_path(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW search_path").fetchone()
    assert row is not None
    return str(row[0])


def schemas_in(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        return {name for (name,) in conn.execute("SELECT nspname FROM pg_namespace")}


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port bound but not listening: connections to it are refused, and no
    other process can start listening on it while the test runs."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.fixture(scope="module")
def schemas_seen() -> list[str]:
    return []


def test_postgres_url_selects_a_fresh_schema_that_holds_what_the_test_creates(
    postgres_url: str, postgres_database_url: str
) -> None:
    schema = search_path(postgres_url)
    assert schema.startswith("test_")
    # The schema travels in the URL alone, as libpq's options parameter.
    assert urlsplit(postgres_url).query == f"options=-csearch_path%3D{schema}"
    assert urlsplit(postgres_url).path == urlsplit(postgres_database_url).path
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s",
            (schema,),
        ).fetchone() == (0,)
        conn.execute("CREATE TABLE greetings (id integer PRIMARY KEY, text text NOT NULL)")
        conn.execute("INSERT INTO greetings VALUES (1, 'hello'), (2, 'hallo')")
        conn.commit()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT text FROM greetings ORDER BY id").fetchall() == [
            ("hello",),
            ("hallo",),
        ]
        assert conn.execute(
            "SELECT schemaname FROM pg_tables WHERE tablename = 'greetings'"
        ).fetchall() == [(schema,)]


@pytest.mark.parametrize("turn", ["first", "second"])
def test_every_test_gets_a_new_schema_and_the_last_tests_schema_is_dropped(
    turn: str, postgres_url: str, postgres_database_url: str, schemas_seen: list[str]
) -> None:
    schema = search_path(postgres_url)
    existing = schemas_in(postgres_database_url)
    assert schema in existing
    assert schema not in schemas_seen
    assert not existing & set(schemas_seen), "an earlier test's schema outlived its test"
    schemas_seen.append(schema)


def test_the_run_has_a_database_of_its_own(
    postgres_server: postgres.Server, postgres_database_url: str
) -> None:
    with psycopg.connect(postgres_database_url) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    assert row[0].startswith("notifier_test_")
    assert row[0] != urlsplit(postgres_server.url).path.lstrip("/")


def test_schema_url_keeps_options_the_database_url_already_had(
    postgres_database_url: str,
) -> None:
    separator = "&" if "?" in postgres_database_url else "?"
    database_url = f"{postgres_database_url}{separator}options=-cstatement_timeout%3D4321"
    with postgres.fresh_schema(database_url) as url, psycopg.connect(url) as conn:
        settings = conn.execute(
            "SELECT current_setting('search_path'), current_setting('statement_timeout')"
        ).fetchone()
        assert settings == (search_path(url), "4321ms")
        assert settings[0].startswith("test_")


def test_throwaway_cluster_starts_serves_and_leaves_nothing_behind() -> None:
    # This is the path a new machine takes (nothing on 5432); it runs here too, so that a
    # machine with a server of its own still tests it.
    bin_dirs = postgres.debian_bin_dirs()
    if not bin_dirs:
        pytest.skip(
            f"no initdb under {postgres.DEBIAN_BIN_GLOB}, so the throwaway cluster is not"
            " tested here: install Debian's postgresql package to test it"
        )
    cluster = postgres.ThrowawayCluster.start(bin_dirs[0])
    try:
        assert cluster.port != postgres.LOCAL_PORT
        assert cluster.data_dir.is_dir()
        with psycopg.connect(cluster.url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT current_user, current_setting('listen_addresses'),"
                " current_setting('port')::int"
            ).fetchone()
        assert row == ("postgres", "127.0.0.1", cluster.port)
        with (
            postgres.fresh_database(cluster.url) as database_url,
            postgres.fresh_schema(database_url) as url,
        ):
            assert search_path(url).startswith("test_")
    finally:
        cluster.stop()
    assert not cluster.root.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.url, connect_timeout=2).close()


def test_url_from_the_environment_wins_over_every_other_server(
    postgres_server: postgres.Server,
) -> None:
    # The run's own server is some server that answers; named in the variable, it must be
    # taken as it is, with no cluster started and no look at 127.0.0.1:5432 first.
    with postgres.find_server({postgres.URL_VARIABLE: postgres_server.url}) as server:
        assert server.url == postgres_server.url
        assert server.cluster is None
        assert server.origin.startswith(postgres.URL_VARIABLE)
        with postgres.fresh_database(server.url) as database_url:
            assert urlsplit(database_url).netloc == urlsplit(postgres_server.url).netloc


def test_url_from_the_environment_that_does_not_answer_is_an_error_not_a_fallback(
    dead_port: int,
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{dead_port}/postgres"
    with pytest.raises(postgres.PostgresUnavailable) as raised:
        postgres.find_server({postgres.URL_VARIABLE: url})
    message = str(raised.value)
    assert f"{postgres.URL_VARIABLE}={url} cannot be used" in message
    assert "unset it" in message


def test_url_from_the_environment_must_be_a_postgresql_url() -> None:
    with pytest.raises(postgres.PostgresUnavailable, match="must be a postgresql:// URL"):
        postgres.find_server({postgres.URL_VARIABLE: "host=127.0.0.1 dbname=postgres"})


def test_password_in_the_url_stays_out_of_messages(dead_port: int) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{dead_port}/postgres"
    with pytest.raises(postgres.PostgresUnavailable) as raised:
        postgres.find_server({postgres.URL_VARIABLE: url})
    assert "s3cret" not in str(raised.value)
    assert "postgres:***@" in str(raised.value)


def test_no_server_and_no_binaries_is_an_error_that_says_what_was_tried_and_how_to_fix(
    dead_port: int, tmp_path: Path
) -> None:
    with pytest.raises(postgres.PostgresUnavailable) as raised:
        postgres.find_server({}, local_port=dead_port, bin_dirs=[])
    message = str(raised.value)
    assert f"{postgres.URL_VARIABLE}: not set" in message
    assert f"127.0.0.1:{dead_port}: nothing answers" in message
    assert "no initdb" in message
    assert "apt-get install postgresql" in message
    assert f"Set {postgres.URL_VARIABLE}=" in message


def test_the_test_run_honours_the_variable_that_each_test_has_removed(dead_port: int) -> None:
    # conftest.py reads NOTIFIER_TEST_POSTGRES_URL before its autouse fixture removes
    # NOTIFIER_* variables from each test: a run given a dead server must fail, not find
    # 127.0.0.1:5432 by itself.
    url = f"postgresql://postgres@127.0.0.1:{dead_port}/postgres"
    env = {**os.environ, postgres.URL_VARIABLE: url}
    selected = (
        __file__ + "::test_postgres_url_selects_a_fresh_schema_that_holds_what_the_test_creates"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", selected],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{postgres.URL_VARIABLE}={url} cannot be used" in result.stdout
    assert "1 error" in result.stdout
