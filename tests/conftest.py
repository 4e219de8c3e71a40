"""Fixtures shared by the service's tests: a fresh app per test over a copy of the
project's templates, a real ``notifier serve`` process for end-to-end tests, and a real
PostgreSQL database and schema (see tests/postgres.py for where the server comes from)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as QuartClient

from notifier.app import create_app
from notifier.settings import Settings
from tests import postgres
from tests.servers import ServeProcess

MakeClient = Callable[..., Awaitable[QuartClient]]


class Clock:
    """A clock a test moves by hand (epoch seconds), to pass where code takes ``clock``."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


ROOT = Path(__file__).resolve().parent.parent

# Read once, when pytest loads this file: _no_outside_settings below takes every NOTIFIER_*
# variable out of each test's environment, and the server is looked for during a test.
POSTGRES_ENVIRONMENT = {
    name: os.environ[name] for name in [postgres.URL_VARIABLE] if os.environ.get(name)
}
POSTGRES_ORIGIN = pytest.StashKey[str]()


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own settings; the developer's NOTIFIER_* variables stay out."""
    import os

    for variable in list(os.environ):
        if variable.startswith("NOTIFIER_"):
            monkeypatch.delenv(variable)


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    """A private copy of the project's templates, free to edit in a test."""
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


@pytest.fixture
def settings_data(tmp_path: Path, templates_dir: Path) -> dict[str, Any]:
    return {
        "templates": {"dir": str(templates_dir)},
        "outbox": {"path": str(tmp_path / "var" / "outbox.sqlite3")},
        "message_id_domain": "notifier.test",
        "limits": {"max_body_bytes": 64 * 1024, "allowed_senders": ["*"]},
    }


@pytest.fixture
def settings(settings_data: dict[str, Any]) -> Settings:
    return Settings.from_mapping(settings_data)


@pytest.fixture
def app(settings: Settings) -> Quart:
    return create_app(settings)


@pytest.fixture
def client(app: Quart) -> QuartClient:
    return app.test_client()


@pytest.fixture
def burger_order() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (ROOT / "templates" / "burger_receipt.example.json").read_text(encoding="utf-8")
    )
    return data


@pytest.fixture
def settings_file(tmp_path: Path, settings_data: dict[str, Any]) -> Path:
    path = tmp_path / "settings.yml"
    path.write_text(json.dumps(settings_data), encoding="utf-8")  # JSON is valid YAML
    return path


@pytest.fixture
def serve(settings_file: Path) -> Iterator[ServeProcess]:
    """A real ``notifier serve`` process on a free loopback port."""
    process = ServeProcess.start(settings_file)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def delivery_settings(settings_data: dict[str, Any], smtp_capture: Any) -> dict[str, Any]:
    """Settings pointing smtp at the capture server, with quick retries."""
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port, "timeout": 5}
    settings_data["delivery"] = {
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "max_attempts": 3,
        "subscriber_timeout": 5,
    }
    return settings_data


@pytest.fixture
async def serving(smtp_capture_factory: Any) -> AsyncIterator[MakeClient]:
    """Start apps with their serving lifecycle (outbox, dispatcher) for a test:
    ``await serving(settings, subscribers=[...], clock=..., rng=...)``.

    Depends on the capture factory so that apps stop (closing their SMTP connections)
    before the capture servers do.
    """
    started: list[Any] = []

    async def start(settings: dict[str, Any], **collaborators: Any) -> QuartClient:
        app = create_app(Settings.from_mapping(settings), **collaborators)
        test_app = app.test_app()
        await test_app.startup()
        started.append(test_app)
        client: QuartClient = test_app.test_client()
        return client

    yield start
    for test_app in started:
        await test_app.shutdown()


async def wait_for_status(
    client: QuartClient, location: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = await (await client.get(location)).get_json()
        if done(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"status never reached the expected state: {body}")
        await asyncio.sleep(0.02)


def finished(body: dict[str, Any]) -> bool:
    return body["status"] in ("delivered", "failed")


@pytest.fixture(scope="session")
def postgres_server(pytestconfig: pytest.Config) -> Iterator[postgres.Server]:
    """The PostgreSQL server of this test run: NOTIFIER_TEST_POSTGRES_URL, else the one on
    127.0.0.1:5432, else a throwaway cluster, stopped and removed when the run ends. Fails
    (every test that needs it errors, saying why) when there is none."""
    with postgres.find_server(POSTGRES_ENVIRONMENT) as server:
        pytestconfig.stash[POSTGRES_ORIGIN] = server.origin
        yield server


@pytest.fixture(scope="session")
def postgres_database_url(postgres_server: postgres.Server) -> Iterator[str]:
    """URL of a database made for this test run alone, dropped when the run ends."""
    with postgres.fresh_database(postgres_server.url) as url:
        yield url


@pytest.fixture
def postgres_url(postgres_database_url: str) -> Iterator[str]:
    """URL of an empty schema made for this test alone in the run's database, dropped
    after the test. The URL's ``options`` set ``search_path`` to the schema, so every
    connection made from it creates and finds its tables there."""
    with postgres.fresh_schema(postgres_database_url) as url:
        yield url


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    origin = config.stash.get(POSTGRES_ORIGIN, None)
    if origin is not None:
        terminalreporter.write_line(f"PostgreSQL for the tests: {origin}")
