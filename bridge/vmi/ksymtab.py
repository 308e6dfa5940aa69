"""Exported kernel symbols from the guest kernel's own ``__ksymtab``, no System.map.

An exported symbol has a ``struct kernel_symbol`` in ``__ksymtab`` (or
``__ksymtab_gpl``): three ``int`` fields, each relative to its own address
(x86-64's PREL32 relocations, every kernel since 4.19):
``value_offset`` (the symbol), ``name_offset`` (its name in
``__ksymtab_strings``), ``namespace_offset``.  The tables sit in the kernel
image's read-only data, a little before the strings.

So: find ``NAME\\0`` among identifier strings in the image; for each such
string, find the 4-byte-aligned word within :data:`WINDOW` before it whose value
plus its own address is the string's address (one XOR of the window against the
expected words, as big integers: no per-word Python loop); check that the
neighbouring entries name identifiers too; the entry's first word gives the
symbol's address.  Pure over bytes, given the image's physical bytes and its
virtual-minus-physical delta.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections.abc import Iterator

#: How far before its name string a symbol's entry may be (the tables of a
#: kernel with ~40,000 exports, CRCs included, are about 1 MiB).
WINDOW = 2 << 20
_ENTRY = 12
#: Bounds on the work a guest can cause: name strings tried, matches checked per window.
MAX_STRINGS = 256
MAX_MATCHES = 64
_IDENTIFIER_CONTEXT = re.compile(rb"[A-Za-z0-9_.\0]*")
_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_.]{0,127}\0")
_WORD = struct.Struct("<i")


def _expected_words(remainder: int) -> bytes:
    """Word j of the :data:`WINDOW` bytes before the word boundary below a string
    ``remainder`` bytes past it must hold ``WINDOW + remainder - 4 * j`` to point
    at the string (a shorter window: the tail of these words)."""
    first = WINDOW + remainder
    return array("i", range(first, first - WINDOW, -4)).tobytes()


_EXPECTED: list[bytes] = []


def _aligned_equal_words(data: bytes, expected: bytes) -> Iterator[int]:
    """Offsets (multiples of 4) where ``data`` and ``expected`` hold the same word."""
    difference = (int.from_bytes(data, "little") ^ int.from_bytes(expected, "little")).to_bytes(len(data), "little")
    index = difference.find(b"\0\0\0\0")
    while index >= 0:
        if index % 4 == 0:
            yield index
            index = difference.find(b"\0\0\0\0", index + 4)
        else:
            index = difference.find(b"\0\0\0\0", (index | 3) + 1)


def _name_strings(image: bytes, name: bytes) -> Iterator[int]:
    """Offsets of ``name\\0`` that sit among identifiers (``__ksymtab_strings`` is
    nothing else; a suffix of a longer name counts: the linker merges them)."""
    needle = name + b"\0"
    index = image.find(needle)
    while index >= 0:
        context = image[max(0, index - 48): index + 48]
        if _IDENTIFIER_CONTEXT.fullmatch(context):
            yield index
        index = image.find(needle, index + 1)


def _names_identifier(image: bytes, name_field: int) -> bool:
    """Does the PREL32 word at ``name_field`` point at an identifier in ``image``?"""
    if not 0 <= name_field <= len(image) - 4:
        return False
    target = name_field + _WORD.unpack_from(image, name_field)[0]
    return 0 <= target < len(image) and _IDENTIFIER.match(image, target) is not None


def exported_symbol(image: bytes, image_physical: int, image_delta: int, name: str) -> int | None:
    """The virtual address of the exported symbol ``name``, from ``image``: the
    kernel image's bytes starting at physical address ``image_physical``
    (virtual = physical + ``image_delta``).  None when it is not found."""
    if not _EXPECTED:
        _EXPECTED.extend(_expected_words(remainder) for remainder in range(4))
    for tried, string in enumerate(_name_strings(image, name.encode())):
        if tried >= MAX_STRINGS:
            return None
        end = string & ~3
        start = max(0, end - WINDOW)
        region = image[start:end]
        expected = _EXPECTED[string & 3]
        matches = _aligned_equal_words(region, expected[len(expected) - len(region):])
        for checked, offset in enumerate(matches):
            if checked >= MAX_MATCHES:
                break
            name_field = start + offset
            entry = name_field - 4
            if entry < 0:
                continue
            # the entries before and after name identifiers too (or the table ends there)
            neighbours = [_names_identifier(image, name_field + delta) for delta in (-_ENTRY, _ENTRY)]
            if not any(neighbours):
                continue
            value_offset = _WORD.unpack_from(image, entry)[0]
            if value_offset == 0:
                continue
            return entry + value_offset + image_physical + image_delta
    return None
