"""notifier: render RFC 5322 email from Jinja templates and fan it out to subscribers.

What subscriber authors use is exported here; everything else lives in modules whose
docstrings say whether they are internal::

    from notifier import OutboundMessage, PermanentFailure

    async def to_crm(sender, *, message: OutboundMessage, **kwargs) -> None:
        ...  # return: delivered; raise PermanentFailure: failed; raise anything: retried

Name it in settings (``subscribers: [smtp, "mypkg.hooks:to_crm"]``), or connect a
receiver to :data:`message_ready` directly. Importing this package has no side effects:
no files, sockets or databases are opened until :func:`notifier.app.create_app` builds an
app and it starts serving.
"""

from notifier.errors import (
    DeliveryFailure,
    NotifierError,
    PartialDelivery,
    PermanentFailure,
    TransientFailure,
)
from notifier.signals import OutboundMessage, message_ready

__all__ = [
    "DeliveryFailure",
    "NotifierError",
    "OutboundMessage",
    "PartialDelivery",
    "PermanentFailure",
    "TransientFailure",
    "__version__",
    "message_ready",
]

__version__ = "0.1.0"
