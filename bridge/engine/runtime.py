"""The process that runs a decryptor (``decrypt``, the sensor's workers), tuned for it.

Two settings of the interpreter and of the C library, made once at the start
(:func:`tune_runtime`):

* The cyclic garbage collector's first generation runs every 100,000 allocations
  instead of 700.  A flood keeps hundreds of thousands of connections alive, and
  each collection walks the young objects of every one of them: with the default,
  half the time of a ClientHello flood went to it (``bench/bench_flood.py``:
  13,000 against 24,000 new connections per second through the engine).  The
  decryptor makes no reference cycles per connection, so little waits longer.
* glibc's allocator keeps blocks of up to 4 MiB on its heap instead of mapping
  each one afresh, and gives freed memory back to the system beyond 16 MiB
  instead of 128 KiB.  A capture file's 1 MiB chunks, the pcap writer's 1 MiB
  buffers and the lanes' chunks of many segments are such blocks: each one
  mapped anew cost a page fault per 4 KiB written, more than the copy itself
  (reading 216 MB of capture: 0.13 s, 0.036 s with the heap kept).  Peak memory
  is unchanged (``bench/bench_decrypt.py``); at most 16 MiB freed stays mapped.
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["tune_runtime"]

#: mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20


def tune_runtime() -> bool:
    """Both settings; True if the C library took the allocator's (glibc), False if
    it has no ``mallopt`` (another C library: its defaults stay)."""
    gc.set_threshold(100_000, 50, 100)
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
