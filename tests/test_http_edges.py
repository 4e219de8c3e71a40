"""Requests that never reach the app's views, against a real ``notifier serve`` process
over raw sockets: hypercorn's own refusals are problem+json like every other error, and
no odd path makes the service redirect to whatever host the request names."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.servers import ServeProcess

PROBLEM = "application/problem+json"


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == PROBLEM, self.headers
        document: dict[str, Any] = json.loads(self.body)
        assert {"type", "title", "status", "detail"} <= document.keys()
        assert document["status"] == self.status
        assert all(isinstance(document[key], str) for key in ("type", "title", "detail"))
        return document


def exchange(server: ServeProcess, request: bytes) -> RawResponse:
    """Send ``request`` as it is and read the answer until the server closes."""
    address = urlsplit(server.url)
    assert address.hostname is not None
    assert address.port is not None
    received = bytearray()
    with socket.create_connection((address.hostname, address.port), timeout=10) as connection:
        connection.sendall(request)
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # a refused request's unread bytes may turn the close into a reset
    head, separator, body = bytes(received).partition(b"\r\n\r\n")
    assert separator, f"no complete response: {bytes(received)!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"])
    return RawResponse(status=int(status_line.split()[1]), headers=headers, body=body)


def test_oversized_request_headers_are_a_431_problem(serve: ServeProcess) -> None:
    # hypercorn allows 16 KiB of request head; the rest of this one never needs sending.
    response = exchange(
        serve, b"GET /healthz HTTP/1.1\r\nHost: notifier.test\r\nX-Padding: " + b"a" * 20_000
    )

    assert response.status == 431
    problem = response.problem()
    assert problem["title"] == "Request Header Fields Too Large"
    assert response.headers["connection"] == "close"


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage-request-line"),
        pytest.param(b"GET /healthz HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(
            b"POST /v1/render/burger_receipt HTTP/1.1\r\nHost: notifier.test\r\n"
            b"Content-Type: application/json\r\nContent-Length: ten\r\n\r\n{}",
            id="invalid-content-length",
        ),
        pytest.param(
            b"POST /v1/render/burger_receipt HTTP/1.1\r\nHost: notifier.test\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n"
            b"\r\n{}",
            id="conflicting-content-lengths",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: notifier.test\r\nBad Header: x\r\n\r\n",
            id="space-in-header-name",
        ),
    ],
)
def test_malformed_http_is_a_400_problem(serve: ServeProcess, request_bytes: bytes) -> None:
    response = exchange(serve, request_bytes)

    assert response.status == 400
    problem = response.problem()
    assert problem["title"] == "Bad Request"
    assert "HTTP/1.1" in problem["detail"]


def test_unsupported_transfer_coding_is_a_501_problem(serve: ServeProcess) -> None:
    response = exchange(
        serve,
        b"POST /v1/render/burger_receipt HTTP/1.1\r\nHost: notifier.test\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n",
    )

    assert response.status == 501
    problem = response.problem()
    assert problem["title"] == "Not Implemented"
    assert "chunked" in problem["detail"]


@pytest.mark.parametrize("path", ["/v1//templates", "/v1/messages//x", "/healthz//"])
def test_doubled_slashes_are_a_404_problem_not_a_redirect_to_the_host_header(
    serve: ServeProcess, path: str
) -> None:
    response = exchange(
        serve, f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode()
    )

    assert response.status == 404
    assert "location" not in response.headers
    assert response.problem()["title"] == "Not Found"


def test_a_trailing_slash_is_answered_not_redirected(serve: ServeProcess) -> None:
    response = exchange(
        serve, b"GET /v1/templates/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    )

    assert response.status == 200
    assert "location" not in response.headers
    assert "templates" in json.loads(response.body)


@pytest.fixture
def serve_two_workers(settings_file: Path) -> Iterator[ServeProcess]:
    process = ServeProcess.start(settings_file, "--workers", "2")
    try:
        yield process
    finally:
        process.stop()


def test_every_worker_answers_malformed_http_with_a_problem(
    serve_two_workers: ServeProcess,
) -> None:
    # Workers are spawned processes: each must set up the problem answers itself.
    for _ in range(4):
        response = exchange(serve_two_workers, b"GARBAGE\r\n\r\n")
        assert response.status == 400
        response.problem()
