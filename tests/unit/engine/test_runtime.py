"""bridge.engine.runtime: the decryptor's process tuned (in a process of its own:
the settings are the whole process's)."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import ctypes, gc, sys
from bridge.engine.runtime import tune_runtime

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2

def mappings():  # blocks the allocator mapped apart from its heap
    return mallinfo2().hblks

if sys.argv[1] == "tuned":
    assert tune_runtime() is True  # glibc
    assert gc.get_threshold() == (100_000, 50, 100)
blocks = []
before = mappings()
for _ in range(8):  # 1 MiB blocks, as a capture file's chunks: mapped each, or from the heap
    blocks.append(bytes(1 << 20))
print(mappings() - before)
"""


def _new_mappings(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(result.stdout)


def test_large_blocks_come_from_the_heap_once_tuned() -> None:
    assert _new_mappings("default") == 8  # glibc maps each block of 1 MiB afresh
    assert _new_mappings("tuned") == 0
