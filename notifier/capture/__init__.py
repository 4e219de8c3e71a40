"""Local SMTP capture server: see every email notifier sends, without a relay.

- :class:`BackgroundCaptureServer`: a server in a thread, for tests and scripts (the
  ``smtp_capture`` pytest fixture is one);
- :class:`CaptureServer`: the same on the running event loop (``notifier capture``);
- :class:`MessageStore` / :class:`CapturedMessage`: the durable ``.eml`` store;
- :class:`FaultRules`: make the server answer like a bad relay for chosen recipients.

Importing this package opens nothing.
"""

from notifier.capture.errors import InvalidFault, UnknownFault, WaitTimeout
from notifier.capture.faults import FaultRule, FaultRules
from notifier.capture.server import BackgroundCaptureServer, CaptureServer, bind_socket
from notifier.capture.smtp import DEFAULT_MAX_MESSAGE_SIZE
from notifier.capture.store import CapturedMessage, MessageStore
from notifier.errors import UnknownMessage

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "BackgroundCaptureServer",
    "CaptureServer",
    "CapturedMessage",
    "FaultRule",
    "FaultRules",
    "InvalidFault",
    "MessageStore",
    "UnknownFault",
    "UnknownMessage",
    "WaitTimeout",
    "bind_socket",
]
