"""The notifier command: render, check, migrate, and start-up errors, as real processes."""

from __future__ import annotations

import email
import json
import subprocess
import sys
from email import policy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def notifier(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "notifier", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_render_prints_the_message(settings_file: Path) -> None:
    result = notifier(
        "render",
        "--settings",
        str(settings_file),
        "burger_receipt",
        str(ROOT / "templates" / "burger_receipt.example.json"),
    )
    assert result.returncode == 0, result.stderr
    message = email.message_from_bytes(result.stdout, policy=policy.default)
    assert message["Subject"] == "Your Burger order"
    assert b"\r\n" in result.stdout


def test_render_without_data_uses_the_example(settings_file: Path) -> None:
    result = notifier("render", "--settings", str(settings_file), "order_shipped")
    assert result.returncode == 0, result.stderr
    assert b"multipart/alternative" in result.stdout


def test_render_reads_stdin(settings_file: Path) -> None:
    data = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
    data["name"] = "Stdin"
    result = notifier(
        "render",
        "--settings",
        str(settings_file),
        "burger_receipt",
        "-",
        stdin=json.dumps(data).encode(),
    )
    assert result.returncode == 0, result.stderr
    assert b"Hello Stdin," in result.stdout


def test_render_failure_is_one_clear_line_and_exit_1(settings_file: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"to": "bob@example.com"}')
    result = notifier("render", "--settings", str(settings_file), "burger_receipt", str(data))
    assert result.returncode == 1
    assert result.stdout == b""
    error = result.stderr.decode()
    assert "'from'" in error or "'subject'" in error or "'name'" in error
    assert "Traceback" not in error
    assert error.count("\n") == 1


def test_render_unknown_template_exit_1(settings_file: Path) -> None:
    result = notifier("render", "--settings", str(settings_file), "../settings")
    assert result.returncode == 1
    assert b"no template" in result.stderr


def test_check_passes_on_the_project_templates(settings_file: Path) -> None:
    result = notifier("check", "--settings", str(settings_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"burger_receipt" in result.stdout
    assert b"ok    burger_receipt.de: ok" in result.stdout
    assert b"3 passed, 0 failed" in result.stdout


def test_check_reports_every_broken_template(settings_file: Path, templates_dir: Path) -> None:
    (templates_dir / "syntax.j2").write_text("Subject: {{ x\n\nbody")
    (templates_dir / "missing.j2").write_text("From: a@example.com\nTo: {{ to }}\n\n{{ gone }}")
    (templates_dir / "missing.example.json").write_text('{"to": "b@example.com"}')
    result = notifier("check", "--settings", str(settings_file))
    assert result.returncode == 1
    report = result.stdout.decode()
    assert "FAIL  syntax: syntax.j2 line" in report
    assert "FAIL  missing: the template uses 'gone'" in report
    assert "ok    burger_receipt" in report
    assert "3 passed, 2 failed" in report


def test_check_with_templates_option(tmp_path: Path) -> None:
    (tmp_path / "only.j2").write_text("From: a@example.com\nTo: b@example.com\n\nhi")
    result = notifier("check", "--templates", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"compiles (no example data" in result.stdout


def test_bad_settings_stop_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text("smtp: {port: many}\n")
    result = notifier("serve", "--settings", str(tmp_path / "s.yml"), "--port", "0")
    assert result.returncode == 2
    error = result.stderr.decode()
    assert "smtp.port" in error
    assert "Traceback" not in error
    assert error.count("\n") == 1


def test_unknown_subscriber_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text("subscribers: [smtp, nosuch.module:send]\n")
    result = notifier("serve", "--settings", str(tmp_path / "s.yml"), "--port", "0")
    assert result.returncode == 2
    error = result.stderr.decode()
    assert "nosuch.module" in error
    assert "Traceback" not in error
    assert error.count("\n") == 1


def test_migrate_creates_the_sqlite_schema(settings_file: Path, tmp_path: Path) -> None:
    result = notifier("migrate", "--settings", str(settings_file))
    assert result.returncode == 0, result.stderr
    assert b"SQLite outbox" in result.stdout
    assert b"schema version 5" in result.stdout
    assert (tmp_path / "var" / "outbox.sqlite3").is_file()


def test_migrate_creates_the_postgres_schema_and_is_idempotent(
    tmp_path: Path, settings_data: dict[str, Any], postgres_url: str
) -> None:
    settings_data["outbox"] = {"url": postgres_url}
    path = tmp_path / "pg.yml"
    path.write_text(json.dumps(settings_data))
    for _ in range(2):
        result = notifier("migrate", "--settings", str(path))
        assert result.returncode == 0, result.stderr
        assert b"PostgreSQL outbox 127.0.0.1:5432/notifier_test_" in result.stdout
        assert b"schema version 2" in result.stdout
        assert b"password" not in result.stdout


def test_migrate_without_a_database_fails_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "down.yml"
    path.write_text(json.dumps({"outbox": {"url": "postgresql://u:secret@127.0.0.1:1/db"}}))
    result = notifier("migrate", "--settings", str(path))
    assert result.returncode == 2
    assert b"outbox is unavailable" in result.stderr
    assert b"secret" not in result.stderr
    assert b"Traceback" not in result.stderr
