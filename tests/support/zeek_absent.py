"""pytest plugin for the suite's own test of a machine without Zeek.

``python -m pytest -p tests.support.zeek_absent ...`` runs as if no Zeek were
installed and no ``../shared/zeek`` were beside the checkout (``CI`` is still
read from the environment).  Used by tests/test_zeek_real.py only.
"""

from __future__ import annotations

from pathlib import Path

from bridge import demo_zeek
from tests.support import zeek

demo_zeek.find_zeek = lambda: None
zeek.find = lambda: None
zeek.SHARED_ZEEK = Path("/nonexistent/shared/zeek")
