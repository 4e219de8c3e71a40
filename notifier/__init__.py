"""notifier: render RFC 5322 email from Jinja templates and fan it out to subscribers.

Importing this package has no side effects: no files, sockets or databases are opened
until :func:`notifier.app.create_app` builds an app and it starts serving.
"""

from notifier.errors import NotifierError, PermanentFailure, TransientFailure

__all__ = ["NotifierError", "PermanentFailure", "TransientFailure", "__version__"]

__version__ = "0.1.0"
