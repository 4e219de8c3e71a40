"""``python -m notifier`` is the ``notifier`` command."""

import sys

from notifier.cli import main

sys.exit(main())
