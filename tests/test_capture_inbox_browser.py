"""The inbox page in a real headless Chromium (Debian's, installed by ``make test``)."""

from __future__ import annotations

import shutil
import smtplib
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.capture_helpers import burger_receipt

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: What this machine needs for a headless Chromium: no sandbox (root), no GPU, and no
#: traffic leaving the loopback interface.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

HOSTILE_SUBJECT = '<img src=x onerror="document.title=1">Order & co'


def hostile_html_message() -> bytes:
    message = EmailMessage()
    message["From"] = "shopping@example-shop.com"
    message["To"] = "bob@example.com"
    message["Subject"] = HOSTILE_SUBJECT
    message.set_content("plain part")
    message.add_alternative(
        "<p id='shown'>Cheeseburger &amp; <b>Fries</b></p>"
        "<script>document.body.insertAdjacentHTML('beforeend', '<p id=ran>ran</p>')</script>",
        subtype="html",
    )
    return message.as_bytes()


def test_inbox_lists_the_burger_receipt_and_shows_its_body(smtp_capture_factory, tmp_path: Path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    server = smtp_capture_factory(http_port=0)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.sendmail("shopping@example-shop.com", ["bob@example.com"], burger_receipt())
        client.sendmail("shopping@example-shop.com", ["bob@example.com"], hostile_html_message())
    burger, hostile = server.wait_for(2)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)

            page.goto(f"{server.http_url}/")
            subjects = page.locator("#messages a.subject")
            assert subjects.all_inner_texts() == [HOSTILE_SUBJECT, "Your Burger order"]
            page.screenshot(path=str(tmp_path / "inbox.png"), full_page=True)

            page.get_by_role("link", name="Your Burger order").click()
            page.wait_for_url(f"**/messages/{burger.id}")
            assert page.locator("#subject").inner_text() == "Your Burger order"
            body = page.locator("#text").inner_text()
            for item in ("Cheeseburger (4.5 Euros)", "Fries (2.0 Euros)", "Root Beer (3.0 Euros)"):
                assert item in body
            assert "bob@example.com" in page.locator("#envelope").inner_text()
            page.screenshot(path=str(tmp_path / "burger-receipt.png"), full_page=True)

            page.goto(f"{server.http_url}/messages/{hostile.id}")
            # Escaped: the subject is text, not an element, and no script ran.
            assert page.locator("#subject").inner_text() == HOSTILE_SUBJECT
            assert page.locator("img").count() == 0
            assert page.title().startswith("<img")
            iframe = page.locator("iframe#html")
            assert iframe.get_attribute("sandbox") == ""
            html_body = page.frame_locator("iframe#html")
            assert html_body.locator("#shown b").inner_text() == "Fries"
            assert html_body.locator("#ran").count() == 0
            page.screenshot(path=str(tmp_path / "html-message.png"), full_page=True)
        finally:
            browser.close()

    for name in ("inbox.png", "burger-receipt.png", "html-message.png"):
        assert (tmp_path / name).stat().st_size > 1000
