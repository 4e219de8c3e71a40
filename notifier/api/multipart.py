"""Reading ``multipart/form-data`` requests: a ``context`` part and ``attachment`` parts.

Werkzeug's sans-IO :class:`~werkzeug.sansio.multipart.MultipartDecoder` splits the body
into parts; this module drives it itself rather than through ``request.files``, because
Quart's form parser is made for browsers' forms, not for a message that must go out
whole or not at all:

- it drops a malformed body silently (an empty form), and a body cut short before its
  closing boundary loses its last parts without a word: here both are a 400;
- it decodes a text part with ``errors="replace"``: the JSON of a ``context`` part would
  be altered instead of refused;
- it spools files over 500 KB to temporary files, and a file is read back into memory
  anyway to become part of the message;
- its limits (``MAX_FORM_PARTS``, ``MAX_FORM_MEMORY_SIZE``) answer 413 without saying
  which limit, and nothing bounds the header block of a part.

Here every part is counted and checked as it arrives, each limit answers with a problem
naming its setting, attachment bytes are hashed as they arrive (for idempotency) so that
nothing runs over the whole of a large file on the event loop, and the body is fed to the
decoder in slices of :data:`FEED_BYTES`, so that its buffer and each step stay small.

Limits: the whole body may be ``limits.max_body_bytes + limits.max_attachment_bytes``
plus room for the part headers (:func:`multipart_body_limit`; Quart's
``MAX_CONTENT_LENGTH`` is set per request by :func:`request_class`, so JSON requests keep
exactly ``limits.max_body_bytes``); the ``context`` part at most ``max_body_bytes``;
the attachments together ``max_attachment_bytes``, and at most ``max_attachments`` of them.

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from quart import Request, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    Preamble,
    State,
)

from notifier.compose import Attachment
from notifier.errors import (
    BadRequestBody,
    InvalidAttachment,
    InvalidMultipart,
    NotifierError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from notifier.settings import LimitsSettings

__all__ = [
    "FEED_BYTES",
    "MAX_PART_HEADER_BYTES",
    "Form",
    "is_form",
    "multipart_body_limit",
    "read_form",
    "request_class",
]

#: Bytes handed to the decoder at a time: it copies its buffer, and searches it for the
#: boundary, once per step.
FEED_BYTES = 64 * 1024
#: Longest header block of one part (and longest preamble before the first part).
MAX_PART_HEADER_BYTES = 8 * 1024
#: Room in the whole body for each part's headers and boundary, and for the whole body's.
PART_OVERHEAD_BYTES = 2 * 1024
BODY_OVERHEAD_BYTES = 64 * 1024

#: Paths whose views read a ``multipart/form-data`` body.
MESSAGE_PATHS = ("/v1/send/", "/v1/render/")

# RFC 2046 5.1.1: 1 to 70 characters; the last may not be a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_CONTEXT_TYPES = frozenset({"", "application/json", "text/plain"})
# RFC 7578 4.7: senders do not encode parts; refuse an encoding rather than attach the
# encoded text as if it were the file.
_IDENTITY_ENCODINGS = frozenset({"", "binary", "8bit", "7bit"})


def is_form(content_type: str) -> bool:
    """Whether a ``Content-Type`` header value is ``multipart/form-data`` (the same test
    as ``request.mimetype == "multipart/form-data"``, without parsing the parameters)."""
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "multipart/form-data"


def multipart_body_limit(limits: LimitsSettings) -> int:
    """The largest ``multipart/form-data`` body accepted, in bytes."""
    return (
        limits.max_body_bytes
        + limits.max_attachment_bytes
        + (limits.max_attachments + 1) * PART_OVERHEAD_BYTES
        + BODY_OVERHEAD_BYTES
    )


def request_class(limits: LimitsSettings) -> type[Request]:
    """Quart's request class, with the body limit chosen per request: a
    ``multipart/form-data`` body to a send or render route may reach
    :func:`multipart_body_limit`; every other keeps ``MAX_CONTENT_LENGTH``.

    Quart takes the limit when it builds the request, before any view runs, and checks it
    as the body streams in (a ``Content-Length`` over it is refused before reading).
    """
    multipart_limit = multipart_body_limit(limits)

    class NotifierRequest(Request):
        def __init__(
            self,
            method: str,
            scheme: str,
            path: str,
            query_string: bytes,
            headers: Headers,
            root_path: str,
            http_version: str,
            scope: Any,
            *,
            max_content_length: int | None = None,
            body_timeout: int | None = None,
            send_push_promise: Any,
        ) -> None:
            if (
                max_content_length is not None
                and path.startswith(MESSAGE_PATHS)
                and is_form(headers.get("Content-Type", ""))
            ):
                max_content_length = max(max_content_length, multipart_limit)
            super().__init__(
                method,
                scheme,
                path,
                query_string,
                headers,
                root_path,
                http_version,
                scope,
                max_content_length=max_content_length,
                body_timeout=body_timeout,
                send_push_promise=send_push_promise,
            )

    return NotifierRequest


@dataclass(frozen=True, slots=True)
class Form:
    """A read ``multipart/form-data`` request: the ``context`` part's bytes (JSON, not
    yet parsed) and the attachments, in the order they came."""

    context: bytes
    attachments: list[Attachment]


async def read_form(limits: LimitsSettings) -> Form:
    """Read the current request's ``multipart/form-data`` body.

    Raises :class:`InvalidMultipart` (400) for a body that cannot be read,
    :class:`BadRequestBody` (400) without a ``context`` part, :class:`UnsupportedMediaType`
    (415) for a ``context`` part that is not JSON or text, :class:`InvalidAttachment` (422)
    and :class:`PayloadTooLarge` (413). A body that has not arrived whole within Quart's
    ``BODY_TIMEOUT`` (60 seconds), as for JSON bodies, is a 408.
    """
    boundary = request.mimetype_params.get("boundary", "")
    if _BOUNDARY.fullmatch(boundary) is None:
        raise InvalidMultipart(
            "multipart/form-data needs a boundary parameter of 1 to 70 characters (RFC 2046)"
        )
    reader = _FormReader(boundary.encode("ascii"), limits)
    try:
        async with asyncio.timeout(request.body_timeout):
            async for chunk in request.body:
                for start in range(0, len(chunk), FEED_BYTES):
                    if start:
                        # A chunk can be the whole body (the client was faster than this
                        # loop): let other requests run between slices.
                        await asyncio.sleep(0)
                    reader.feed(chunk[start : start + FEED_BYTES])
    except TimeoutError:
        raise RequestTimeout() from None
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"a multipart/form-data body may be at most {multipart_body_limit(limits)} bytes"
            " (limits.max_body_bytes and limits.max_attachment_bytes, and room for the part"
            " headers)",
            limit="limits.max_attachment_bytes",
        ) from None
    return reader.finish()


@dataclass(slots=True)
class _Part:
    name: str
    filename: str | None = None
    content_type: str = ""
    size: int = 0
    chunks: list[bytes] = field(default_factory=list)
    digest: Any = None  # hashlib's sha256 object, for attachments


class _FormReader:
    """Feeds a body to the decoder and checks each part as it comes."""

    def __init__(self, boundary: bytes, limits: LimitsSettings) -> None:
        self._decoder = MultipartDecoder(boundary)
        self._limits = limits
        self._part: _Part | None = None
        self._context: bytes | None = None
        self._attachments: list[Attachment] = []
        self._attachment_bytes = 0

    def feed(self, data: bytes) -> None:
        self._decoder.receive_data(data)
        self._read_events()
        state = self._decoder.state
        if state in (State.PREAMBLE, State.PART) and (
            len(self._decoder.buffer) > MAX_PART_HEADER_BYTES
        ):
            where = "the preamble" if state is State.PREAMBLE else "a part's header block"
            raise InvalidMultipart(
                f"{where} is longer than {MAX_PART_HEADER_BYTES} bytes (is the boundary right?)"
            )

    def finish(self) -> Form:
        self._decoder.receive_data(None)
        self._read_events()
        if self._context is None:
            raise BadRequestBody(
                "the multipart/form-data request has no part named context (the JSON object)"
            )
        return Form(self._context, self._attachments)

    def _read_events(self) -> None:
        try:
            event = self._decoder.next_event()
            while not isinstance(event, NeedData | Epilogue):
                if isinstance(event, Data):
                    self._data(event)
                elif isinstance(event, Field | File):
                    self._start(event)
                elif isinstance(event, Preamble) and len(event.data) > MAX_PART_HEADER_BYTES:
                    raise InvalidMultipart(
                        f"the preamble is longer than {MAX_PART_HEADER_BYTES} bytes (is the"
                        " boundary right?)"
                    )
                event = self._decoder.next_event()
        except NotifierError:
            raise  # some are ValueErrors too
        except ValueError as exc:  # UnicodeDecodeError (part headers not UTF-8) included
            if self._decoder.complete:
                raise InvalidMultipart(
                    "the multipart/form-data body ends before its closing boundary"
                ) from None
            raise InvalidMultipart(f"the multipart/form-data body is malformed: {exc}") from None

    def _start(self, event: Field | File) -> None:
        if self._part is not None:
            raise AssertionError("a part started before the previous one ended")
        header_bytes = sum(len(key) + len(value) + 4 for key, value in event.headers.items())
        if header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidMultipart(
                f"a part's header block is longer than {MAX_PART_HEADER_BYTES} bytes"
            )
        name = event.name
        encoding = event.headers.get("Content-Transfer-Encoding", "").strip().lower()
        if encoding not in _IDENTITY_ENCODINGS:
            raise InvalidMultipart(
                f"a part has Content-Transfer-Encoding {encoding[:40]!r}; send the bytes as"
                " they are (RFC 7578 4.7)"
            )
        content_type = event.headers.get("Content-Type", "")
        if name == "context":
            if self._context is not None:
                raise InvalidMultipart("the request has more than one part named context")
            media_type = parse_options_header(content_type)[0].lower()
            if media_type not in _CONTEXT_TYPES and not media_type.endswith("+json"):
                raise UnsupportedMediaType(
                    f"the context part must be application/json (or text/plain), not"
                    f" {media_type[:80]}"
                )
            self._part = _Part(name)
        elif name == "attachment":
            if not isinstance(event, File):
                raise InvalidAttachment(
                    "an attachment part needs a file name (filename= in its Content-Disposition)",
                    index=len(self._attachments),
                )
            if len(self._attachments) >= self._limits.max_attachments:
                raise PayloadTooLarge(
                    f"the request attaches more than {self._limits.max_attachments} files"
                    " (limits.max_attachments)",
                    limit="limits.max_attachments",
                )
            self._part = _Part(name, event.filename, content_type, digest=hashlib.sha256())
        elif not name:
            raise InvalidMultipart(
                "a part has no name; name it context or attachment (Content-Disposition:"
                ' form-data; name="...")'
            )
        else:
            raise InvalidMultipart(
                f"unknown part {name[:40]!r}: the parts are context and attachment",
                part=name[:40],
            )

    def _data(self, event: Data) -> None:
        part = self._part
        if part is None:
            raise AssertionError("data outside a part")
        size = len(event.data)
        part.size += size
        if part.digest is None:
            if part.size > self._limits.max_body_bytes:
                raise PayloadTooLarge(
                    f"the context part is larger than {self._limits.max_body_bytes} bytes"
                    " (limits.max_body_bytes)",
                    limit="limits.max_body_bytes",
                )
        else:
            self._attachment_bytes += size
            if self._attachment_bytes > self._limits.max_attachment_bytes:
                raise PayloadTooLarge(
                    f"the attachments are larger than {self._limits.max_attachment_bytes}"
                    " bytes together (limits.max_attachment_bytes)",
                    limit="limits.max_attachment_bytes",
                )
            part.digest.update(event.data)
        if size:
            part.chunks.append(event.data)
        if event.more_data:
            return
        self._part = None
        content = b"".join(part.chunks)
        if part.digest is None:
            self._context = content
            return
        assert part.filename is not None
        try:
            attachment = Attachment(
                part.filename, part.content_type, content, sha256=part.digest.digest()
            )
        except InvalidAttachment as exc:
            exc.extra["index"] = len(self._attachments)
            raise
        self._attachments.append(attachment)
