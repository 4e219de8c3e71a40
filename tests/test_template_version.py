"""Template versions: ``GET /v1/messages/<id>`` shows the first 12 hex digits of a SHA-256
over the template files that rendered the message; an edit (picked up by hot reload)
changes the version of later messages only. And the outbox migrations that add the
column to databases made by earlier versions of notifier."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from notifier.outbox import NewMessage
from notifier.outbox.postgres import PostgresOutbox
from notifier.outbox.sqlite import _MIGRATIONS as SQLITE_MIGRATIONS
from notifier.outbox.sqlite import SqliteOutbox
from notifier.templates import TemplateStore
from tests.conftest import MakeClient, finished, wait_for_status


def expected_version(templates_dir: Path, *files: str) -> str:
    """The version as docs/templates.md defines it: ``sha256sum FILES | sha256sum``."""
    lines = "".join(
        f"{hashlib.sha256((templates_dir / name).read_bytes()).hexdigest()}  {name}\n"
        for name in files
    )
    return hashlib.sha256(lines.encode()).hexdigest()[:12]


def edit(path: Path, text: str) -> None:
    """Write ``text`` and make sure the file's mtime moves, even within one clock tick."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


async def send(client: Any, name: str, context: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"/v1/send/{name}", json=context)
    assert response.status_code == 202, await response.get_data(as_text=True)
    return await wait_for_status(client, response.headers["Location"], finished)


@pytest.fixture(params=["sqlite", "postgres"])
def version_settings(
    request: pytest.FixtureRequest, delivery_settings: dict[str, Any]
) -> dict[str, Any]:
    if request.param == "postgres":
        delivery_settings["outbox"] = {"url": request.getfixturevalue("postgres_url")}
    return delivery_settings


async def test_version_before_and_after_an_edit_with_hot_reload(
    serving: MakeClient,
    version_settings: dict[str, Any],
    templates_dir: Path,
    burger_order: dict[str, Any],
) -> None:
    client = await serving(version_settings)
    first = await send(client, "burger_receipt", burger_order)
    before = expected_version(templates_dir, "burger_receipt.j2")
    assert first["template_version"] == before
    assert first["status"] == "delivered"

    path = templates_dir / "burger_receipt.j2"
    edit(path, path.read_text().replace("Thank you", "Many thanks"))
    second = await send(client, "burger_receipt", burger_order)
    after = expected_version(templates_dir, "burger_receipt.j2")
    assert after != before
    assert second["template_version"] == after

    # The earlier message keeps the version it was rendered with.
    again = await (await client.get(f"/v1/messages/{first['id']}")).get_json()
    assert again["template_version"] == before


async def test_version_covers_the_locale_variant_and_html_part_used(
    serving: MakeClient, delivery_settings: dict[str, Any], templates_dir: Path
) -> None:
    import json

    order = json.loads((templates_dir / "order_shipped.example.json").read_text())
    client = await serving(delivery_settings)
    english = await send(client, "order_shipped", order)
    assert english["template_version"] == expected_version(
        templates_dir, "order_shipped.j2", "order_shipped.html.j2"
    )
    edit(
        templates_dir / "order_shipped.de.j2", "From: a@example.com\nTo: {{ customer_email }}\n\nx"
    )
    german = await send(client, "order_shipped", {**order, "locale": "de-AT"})
    assert german["template_version"] == expected_version(templates_dir, "order_shipped.de.j2")

    # Editing the HTML part alone changes the version too.
    html = templates_dir / "order_shipped.html.j2"
    edit(html, html.read_text() + "\n<p>PS</p>\n")
    edited = await send(client, "order_shipped", order)
    assert edited["template_version"] == expected_version(
        templates_dir, "order_shipped.j2", "order_shipped.html.j2"
    )
    assert edited["template_version"] != english["template_version"]


def test_version_covers_included_templates_and_follows_their_edits(tmp_path: Path) -> None:
    (tmp_path / "partials").mkdir()
    edit(tmp_path / "partials" / "footer.txt", "-- {% include 'partials/sign.txt' %}\n")
    edit(tmp_path / "partials" / "sign.txt", "The Shop\n")
    edit(
        tmp_path / "note.j2",
        "From: a@example.com\nTo: b@example.com\n\nHi\n{% include 'partials/footer.txt' %}",
    )
    store = TemplateStore(tmp_path)
    first = store.render("note", {})
    assert first.version == expected_version(
        tmp_path, "note.j2", "partials/footer.txt", "partials/sign.txt"
    )
    edit(tmp_path / "partials" / "sign.txt", "The Other Shop\n")
    second = store.render("note", {})
    assert "The Other Shop" in second.text
    assert second.version == expected_version(
        tmp_path, "note.j2", "partials/footer.txt", "partials/sign.txt"
    )
    assert second.version != first.version


def test_render_json_view_is_unchanged_and_version_is_on_the_rendered_template(
    templates_dir: Path, burger_order: dict[str, Any]
) -> None:
    store = TemplateStore(templates_dir)
    rendered = store.render("burger_receipt", {**burger_order, "locale": "de"})
    assert rendered.version == expected_version(templates_dir, "burger_receipt.de.j2")
    assert rendered.locale == "de"


# -- migrating databases made before template versions ------------------------------------

OLD_MESSAGE = NewMessage(
    template="burger_receipt",
    context_hash="0" * 64,
    message_id="<old@example.org>",
    sender="shop@example.com",
    recipients=["bob@example.com"],
    data=b"Subject: hi\r\n\r\nbody\r\n",
)


async def test_sqlite_outbox_of_the_previous_schema_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for script in SQLITE_MIGRATIONS[:4]:  # the schema before template versions
            for statement in script.split(";"):
                if statement.strip():
                    db.execute(statement)
        db.execute("PRAGMA user_version = 4")
        db.execute(
            "INSERT INTO messages (id, template, context_hash, message_id, sender, recipients,"
            " data, created_at) VALUES ('old', 'burger_receipt', '', '<old@example.org>',"
            " 'shop@example.com', '[\"bob@example.com\"]', x'00', 1.0)"
        )
    db.close()
    outbox = SqliteOutbox(path)
    await outbox.open()
    try:
        old = await outbox.get("old")
        assert old is not None
        assert old.template_version is None
        assert old.as_json()["template_version"] is None
        new = await outbox.add(
            replace(OLD_MESSAGE, template_version="0123456789ab"), subscribers=["smtp"]
        )
        stored = await outbox.get(new.id)
        assert stored is not None
        assert stored.template_version == "0123456789ab"
    finally:
        await outbox.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
    db.close()
    assert "template_version" in columns


async def test_postgres_outbox_of_the_previous_schema_gains_the_column(postgres_url: str) -> None:
    from notifier.outbox.postgres import _MIGRATIONS as POSTGRES_MIGRATIONS

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(POSTGRES_MIGRATIONS[0])  # the schema before template versions
        conn.execute("CREATE TABLE notifier_schema (version integer NOT NULL)")
        conn.execute("INSERT INTO notifier_schema VALUES (1)")
        conn.execute(
            "INSERT INTO notifier_messages (id, template, context_hash, message_id, sender,"
            " recipients, data, created_at) VALUES ('old', 'burger_receipt', '',"
            " '<old@example.org>', 'shop@example.com', '[\"bob@example.com\"]', '\\x00', 1.0)"
        )
    outbox = PostgresOutbox(postgres_url, pool_size=2)
    await outbox.open()
    try:
        old = await outbox.get("old")
        assert old is not None
        assert old.template_version is None
        new = await outbox.add(
            replace(OLD_MESSAGE, template_version="0123456789ab"), subscribers=["smtp"]
        )
        stored = await outbox.get(new.id)
        assert stored is not None
        assert stored.template_version == "0123456789ab"
        assert "schema version 2" in await outbox.describe()
    finally:
        await outbox.close()
