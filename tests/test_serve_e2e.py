"""End to end through a real `notifier serve` process: render, hot reload, the
Dockerfile's command."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

from tests.servers import ServeProcess

ROOT = Path(__file__).resolve().parent.parent


def test_serve_renders_the_burger_receipt(serve: ServeProcess) -> None:
    order = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
    with serve.client() as http:
        response = http.post("/v1/render/burger_receipt", json=order)
        assert response.status_code == 200
        assert response.headers["content-type"] == "message/rfc822"
        assert b"Subject: Your Burger order\r\n" in response.content
        assert http.get("/healthz").status_code == 200
        missing = http.post("/v1/render/burger_receipt", json={})
        assert missing.status_code == 422
        assert missing.headers["content-type"] == "application/problem+json"


def test_edited_template_changes_the_next_render(serve: ServeProcess, templates_dir: Path) -> None:
    order = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
    path = templates_dir / "burger_receipt.j2"
    with serve.client() as http:
        assert (
            b"Thank you for your business!"
            in http.post("/v1/render/burger_receipt", json=order).content
        )
        before = path.stat().st_mtime_ns
        path.write_text(path.read_text().replace("Thank you for your business!", "See you soon!"))
        if path.stat().st_mtime_ns == before:  # same clock tick: move the mtime on
            import os

            os.utime(path, ns=(before + 1_000_000, before + 1_000_000))
        after = http.post("/v1/render/burger_receipt", json=order)
        assert after.status_code == 200
        assert b"See you soon!" in after.content
        assert b"Thank you for your business!" not in after.content


def test_serve_exits_cleanly_on_sigterm(serve: ServeProcess) -> None:
    with serve.client() as http:
        assert http.get("/healthz").status_code == 200
    assert serve.stop() == 0


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_runs_notifier_serve_as_non_root_with_a_healthcheck() -> None:
    text = _dockerfile()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages
    assert all(image.endswith("-slim") for image in stages)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    cmd = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert cmd is not None
    assert json.loads(cmd.group(1)) == ["notifier", "serve", "--host", "0.0.0.0", "--port", "8000"]
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE | re.DOTALL)
    assert healthcheck is not None
    assert "http://127.0.0.1:8000/healthz" in healthcheck.group(1)
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for name in shlex.split(source):
            assert (ROOT / name).exists(), f"Dockerfile copies {name}, which is missing"


def test_dockerfile_command_starts_the_service(settings_file: Path) -> None:
    """No Docker engine runs here: start the image's command itself (on a free loopback
    port instead of 0.0.0.0:8000) and ask its health check's path."""
    cmd = re.search(r"^CMD (\[.*\])$", _dockerfile(), re.MULTILINE)
    assert cmd is not None
    args = json.loads(cmd.group(1))
    assert args[:2] == ["notifier", "serve"]
    extra = [arg for arg in args[2:] if arg not in ("--host", "0.0.0.0", "--port", "8000")]
    process = ServeProcess.start(settings_file, *extra)
    try:
        with process.client() as http:
            deadline = time.monotonic() + 10
            status = http.get("/healthz").status_code
            while status != 200 and time.monotonic() < deadline:
                status = http.get("/healthz").status_code
            assert status == 200
    finally:
        assert process.stop() == 0


def test_send_through_a_real_server_reaches_the_capture_server(
    tmp_path: Path, settings_data: dict[str, Any], smtp_capture: Any
) -> None:
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port}
    settings_file = tmp_path / "send-settings.yml"
    settings_file.write_text(json.dumps(settings_data))
    order = json.loads((ROOT / "templates" / "burger_receipt.example.json").read_text())
    process = ServeProcess.start(settings_file)
    try:
        with process.client() as http:
            response = http.post("/v1/send/burger_receipt", json=order)
            assert response.status_code == 202
            accepted = response.json()
            (captured,) = smtp_capture.wait_for(1, timeout=10)
            assert captured.envelope_to == ("bob@example.com",)
            assert f"Message-ID: {accepted['message_id']}".encode() in captured.data
            deadline = time.monotonic() + 10
            status = http.get(response.headers["Location"]).json()
            while status["status"] != "delivered" and time.monotonic() < deadline:
                status = http.get(response.headers["Location"]).json()
            assert status["status"] == "delivered"
            assert status["subscribers"]["smtp"]["attempts"] == 1
    finally:
        assert process.stop() == 0
