"""``bridge.cli``: a command's module is imported with the cyclic collector off, and
what the import made is frozen, so no later collection walks it again."""

from __future__ import annotations

import subprocess
import sys


def _in_fresh_interpreter(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_import_is_frozen_and_collector_restored() -> None:
    out = _in_fresh_interpreter(
        "import gc, sys\n"
        "from bridge.cli import _import_command\n"
        "collections = []\n"
        "gc.callbacks.append(lambda phase, info: collections.append(info) if phase == 'start' else None)\n"
        "_import_command('bridge.cli.decrypt')\n"
        "assert 'bridge.engine.engine' in sys.modules\n"
        "print(gc.isenabled(), gc.get_freeze_count(), len(collections))\n"
    )
    enabled, frozen, collections = out.split()
    assert enabled == "True"
    # the engine's modules, classes and functions: thousands of objects, never walked again
    assert int(frozen) > 5000
    assert int(collections) == 0


def test_collector_left_off_when_it_was_off() -> None:
    out = _in_fresh_interpreter(
        "import gc\n"
        "from bridge.cli import build_parser\n"
        "gc.disable()\n"
        "build_parser('keys')\n"
        "print(gc.isenabled())\n"
    )
    assert out.split() == ["False"]

