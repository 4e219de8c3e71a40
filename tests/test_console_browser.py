"""The operator console in a real headless Chromium (Debian's, installed by ``make test``),
against a real ``notifier serve`` process delivering to a real capture server.

Set ``NOTIFIER_TEST_SCREENSHOTS=docs/console`` to refresh the screenshots of
docs/console.md from this run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import ServeProcess
from tests.test_capture_inbox_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "browser-admin-token-0123456789"
#: Read when pytest loads this file (each test's environment is cleared of NOTIFIER_*).
SCREENSHOTS = os.environ.get("NOTIFIER_TEST_SCREENSHOTS")
HOSTILE = "<img src=x onerror=\"document.title='ran'\">"
HOSTILE_RECIPIENT = '"<img src=x onerror=document.title=1>"@example.com'
DESKTOP = {"width": 1100, "height": 800}
PHONE = {"width": 390, "height": 800}
TALL = {"width": 1100, "height": 1700}


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _status(api: httpx.Client, location: str) -> str:
    status: str = api.get(location).json()["status"]
    return status


@pytest.fixture
def console_server(tmp_path: Path, settings_data: dict[str, Any], smtp_capture: Any) -> Any:
    # The first attempt for this address is refused for good (550), the next accepted:
    # with one attempt allowed the message fails, and a retry delivers it.
    smtp_capture.faults.add("retry-me@example.com", "fail-550", times=1)
    settings_data["smtp"] = {"host": smtp_capture.host, "port": smtp_capture.port, "timeout": 5}
    settings_data["delivery"] = {"max_attempts": 1, "backoff_initial": 0.05, "backoff_max": 0.2}
    settings_data["auth"] = {"tokens": [{"name": "ops", "token": ADMIN_TOKEN, "scopes": ["admin"]}]}
    settings_file = tmp_path / "console-settings.yml"
    settings_file.write_text(json.dumps(settings_data), encoding="utf-8")
    with ServeProcess.start(settings_file) as served:
        yield served


def test_operator_signs_in_previews_follows_edits_retries_and_signs_out(
    console_server: ServeProcess,
    templates_dir: Path,
    burger_order: dict[str, Any],
    tmp_path: Path,
) -> None:
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    base = console_server.url
    api = httpx.Client(
        base_url=base, timeout=10.0, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    failing = api.post(
        "/v1/send/burger_receipt", json=dict(burger_order, to="retry-me@example.com")
    )
    hostile = api.post(
        "/v1/send/burger_receipt", json=dict(burger_order, to=HOSTILE_RECIPIENT, subject=HOSTILE)
    )
    assert (failing.status_code, hostile.status_code) == (202, 202)
    failing_id = failing.json()["id"]
    _wait_until(lambda: _status(api, failing.headers["Location"]) == "failed", "a failure")
    api.close()
    shots = tmp_path / "screenshots"
    shots.mkdir()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport=DESKTOP,
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            # Anything the page's own policy blocks (an inline script or style of ours)
            # and any script error would show here.
            complaints: list[str] = []
            page.on(
                "console",
                lambda message: (
                    complaints.append(message.text)
                    if message.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda error: complaints.append(str(error)))

            # Closed without a session: the sign-in form.
            page.goto(f"{base}/console")
            page.wait_for_url("**/console/sign-in")
            page.screenshot(path=str(shots / "sign-in.png"))
            page.fill("#token", ADMIN_TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/console")
            names = page.locator("#templates a.template").all_inner_texts()
            assert names == ["burger_receipt", "order_shipped"]
            assert "de" in page.locator("#templates").inner_text()
            page.screenshot(path=str(shots / "templates.png"), full_page=True)
            cookie = next(c for c in browser.cookies() if c["name"] == "notifier_console")
            assert cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"
            assert ADMIN_TOKEN not in page.url

            # The burger receipt with its example data.
            page.click("text=burger_receipt")
            page.wait_for_url("**/console/templates/burger_receipt")
            text = page.locator("#text")
            for item in ("Cheeseburger (4.5 Euros)", "Fries (2.0 Euros)", "Root Beer (3.0 Euros)"):
                page.wait_for_function(
                    "item => document.getElementById('text').textContent.includes(item)",
                    arg=item,
                )
            assert "Subject" in page.locator("#headers").inner_text()
            assert page.locator("#html-part").is_hidden()  # a text-only template
            assert "bob@example.com" in page.locator("#envelope").inner_text()
            page.screenshot(path=str(shots / "preview.png"), full_page=True)

            # Drop a variable: the API's 422, explained.
            context = dict(burger_order)
            del context["items"]
            page.fill("#context", json.dumps(context, indent=2))
            page.click("#render")
            problem = page.locator("#problem")
            problem.wait_for(state="visible")
            assert page.locator("#problem-title").inner_text() == "Missing template variable"
            assert "(422)" in page.locator("#problem-status").inner_text()
            assert "'items'" in page.locator("#problem-detail").inner_text()
            assert '"variable": "items"' in page.locator("#problem-json").inner_text()
            page.screenshot(path=str(shots / "preview-problem.png"), full_page=True)

            # Hostile context: the subject shows as text, and nothing runs.
            page.fill("#context", json.dumps(dict(burger_order, subject=HOSTILE)))
            page.click("#render")
            page.locator("#result").wait_for(state="visible")
            page.wait_for_function(
                "() => document.getElementById('headers').textContent.includes('onerror')"
            )
            assert page.locator("main img").count() == 0
            assert page.title() == "burger_receipt · notifier console"

            # Back to the example; then an edit on disk shows without reloading the page.
            page.click("#reset")
            text.wait_for(state="visible")
            page.wait_for_function(
                "() => document.getElementById('text').textContent.includes('Cheeseburger')"
            )
            page.evaluate("window.notReloaded = true")
            template = templates_dir / "burger_receipt.j2"
            template.write_text(
                template.read_text(encoding="utf-8") + "\nEdited on disk, seen live.\n",
                encoding="utf-8",
            )
            page.wait_for_function(
                "() => document.getElementById('text').textContent.includes('seen live')"
            )
            assert page.evaluate("window.notReloaded") is True

            # A template with an HTML part: shown in the sandboxed frame.
            page.goto(f"{base}/console/templates/order_shipped")
            page.locator("#html-part").wait_for(state="visible")
            frame = page.frame_locator("iframe#html")
            frame.get_by_text("Hello Bob Smith").wait_for()
            assert page.locator("iframe#html").get_attribute("sandbox") == ""
            frame.locator("strong", has_text="A-10042").wait_for()
            # The shop's logo, an inline image (cid:), is shown from the message's own part.
            logo = frame.locator("img").first
            assert (logo.get_attribute("src") or "").startswith("data:image/png;base64,")
            assert logo.evaluate("image => image.complete && image.naturalWidth > 0")
            # Not full_page: Chromium does not paint the frame's separate process into
            # the stitched full-page capture. A tall viewport shows the frame instead.
            page.set_viewport_size(TALL)
            frame.get_by_text("Hello Bob Smith").wait_for()
            page.screenshot(path=str(shots / "preview-html.png"))
            page.set_viewport_size(DESKTOP)

            # The failed message: its SMTP answer, then a retry that delivers it.
            page.goto(f"{base}/console/messages?status=failed&since=all")
            page.click(f"a.message >> text={failing_id}")
            page.wait_for_url(f"**/console/messages/{failing_id}")
            deliveries = page.locator("#deliveries").inner_text()
            assert "550" in deliveries
            assert "retry-me@example.com" in deliveries
            page.screenshot(path=str(shots / "message-failed.png"), full_page=True)
            page.click("#retry")
            page.wait_for_url(f"**/console/messages/{failing_id}?retried=1")
            assert "queued again" in page.locator("#retried").inner_text()

            def delivered() -> bool:
                page.reload()
                return page.locator("#status").inner_text() == "delivered"

            _wait_until(delivered, "the retried message to be delivered")
            assert page.locator("#retry").count() == 0

            # Every message, the hostile one among them: its recipient is text.
            page.goto(f"{base}/console/messages?since=all")
            assert page.locator("#messages tr.status-delivered").count() >= 1
            assert "<img src=x" in page.locator("#messages").inner_text()
            assert page.locator("main img").count() == 0
            assert page.title() == "Messages · notifier console"
            page.screenshot(path=str(shots / "messages.png"), full_page=True)
            page.set_viewport_size(PHONE)
            page.screenshot(path=str(shots / "messages-phone.png"), full_page=True)
            # No sideways scrolling at phone width.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.set_viewport_size(DESKTOP)

            # Sign out: the console is closed again.
            page.click("#sign-out")
            page.wait_for_url("**/console/sign-in")
            page.goto(f"{base}/console/messages")
            page.wait_for_url("**/console/sign-in")
            assert complaints == []
        finally:
            browser.close()

    shots_taken = sorted(shots.iterdir())
    assert len(shots_taken) == 8
    for shot in shots_taken:
        assert shot.stat().st_size > 1000
        if SCREENSHOTS:
            shutil.copy(shot, Path(SCREENSHOTS) / shot.name)
    log = console_server.log_text()
    assert ADMIN_TOKEN not in log
    assert "/console/sign-in" in log
    assert "operator console at /console (sign in with an admin token)" in log
