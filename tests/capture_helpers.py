"""Shared bits of the capture server tests: sample messages and a raw SMTP client."""

from __future__ import annotations

import socket

__all__ = ["RawSMTPClient", "burger_receipt"]


def burger_receipt(*, to: str = "bob@example.com", subject: str = "Your Burger order") -> bytes:
    """The burger receipt as RFC 5322 bytes (CRLF line ends), built here, not rendered."""
    lines = [
        "Date: Thu, 21 Nov 2024 12:00:00 +0000",
        "From: shopping@example-shop.com",
        f"To: {to}",
        f"Subject: {subject}",
        "Message-ID: <burger-1@example-shop.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        "Hello Bob,",
        "",
        "We have received your payment!",
        "",
        "Below is the list of items we will deliver for lunch:",
        "",
        "- Cheeseburger (4.5 Euros)",
        "- Fries (2.0 Euros)",
        "- Root Beer (3.0 Euros)",
        "",
        "Thank you for your business!",
        "",
        "--",
        "My Fictional Burger Place",
        "",
    ]
    return "\r\n".join(lines).encode()


class RawSMTPClient:
    """A line-level SMTP client for what polite clients never send (bare LF, hang-ups)."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        """Read one (possibly multi-line) reply; returns its lines joined by newlines."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return "\n".join(lines)

    def command(self, line: bytes | str) -> str:
        """Send one command line (CRLF added) and read its reply."""
        if isinstance(line, str):
            line = line.encode()
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send_raw(self, data: bytes) -> None:
        """Send bytes exactly as given."""
        self.sock.sendall(data)

    def close(self) -> None:
        """Close the connection without QUIT."""
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawSMTPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
