"""``python -m bridge.cli``: the ``tls-bridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
