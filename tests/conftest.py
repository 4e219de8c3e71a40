"""Fixtures shared by the service's tests: a fresh app per test over a copy of the
project's templates, and a real ``notifier serve`` process for end-to-end tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart
from quart.typing import TestClientProtocol as QuartClient

from notifier.app import create_app
from notifier.settings import Settings
from tests.servers import ServeProcess

ROOT = Path(__file__).resolve().parent.parent


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
        "limits": {"max_body_bytes": 64 * 1024},
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
