"""Where a connection object starts around a client random found in memory, with no
hook: the heap block's malloc headers and the library's SSL_METHOD pointer (a
synthetic heap laid out as glibc's malloc and OpenSSL 3.0 leave it)."""

from __future__ import annotations

import os

from bridge.harvest.learn import object_starts

HEAP = 0x5600_0000_0000
LIBRARY = (0x7F00_0000_0000, 0x7F00_0010_0000)
RANDOM_AT = 0x160  # OpenSSL 3.0's s3.client_random


def _in_library(address: int) -> bool:
    return LIBRARY[0] <= address < LIBRARY[1]


def _heap(object_at: int, *, size: int = 0x1DD0, flags: int = 1, method: int = LIBRARY[0] + 0x27120,
          next_flags: int = 1) -> bytearray:
    """Pages of heap with one SSL object (its chunk of ``size``) at ``object_at``."""
    heap = bytearray(os.urandom(0x6000))
    heap[object_at - 8 : object_at] = (size | flags).to_bytes(8, "little")
    heap[object_at : object_at + 32] = (0x0304).to_bytes(8, "little") + method.to_bytes(8, "little") + bytes(16)
    heap[object_at - 8 + size : object_at + size] = (0x290 | next_flags).to_bytes(8, "little")
    return heap


def _reader(heap: bytes, *, missing_below: int = 0):  # type: ignore[no-untyped-def]
    def read_upto(address: int, size: int) -> bytes:
        offset = address - HEAP
        if offset < missing_below or offset >= len(heap):
            return b""
        return bytes(heap[offset : offset + size])

    return read_upto


def test_the_object_around_a_random_found_in_memory():
    heap = _heap(0x2010)
    hit = HEAP + 0x2010 + RANDOM_AT
    assert HEAP + 0x2010 in object_starts(_reader(heap), hit, _in_library)
    # the page before the object's is not there (never touched): found from its own page
    assert object_starts(_reader(heap, missing_below=0x2000), hit, _in_library)[0] == HEAP + 0x2010


def test_no_object_where_a_header_does_not_hold():
    hit = HEAP + 0x2010 + RANDOM_AT
    for heap in (_heap(0x2010, flags=2),  # mmapped: not a heap block
                 _heap(0x2010, method=0x1234_5678),  # no pointer into the library
                 _heap(0x2010, next_flags=0),  # the next chunk says this one is free
                 _heap(0x2010, size=0x100)):  # a block that ends before the random
        assert HEAP + 0x2010 not in object_starts(_reader(heap), hit, _in_library)
    assert object_starts(_reader(b""), hit, _in_library) == []
