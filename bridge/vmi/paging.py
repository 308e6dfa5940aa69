"""x86-64 address translation over guest physical memory: 4- and 5-level page
walks with 1 GiB and 2 MiB pages, from a page-table root (CR3, ``mm->pgd``).

Pure over a physical reader.  :class:`AddressSpace` reads guest virtual memory
(the :class:`~bridge.harvest.memory.MemoryReader` interface the harvester's
chain reader takes) and enumerates the mapped pages of a range without
translating page by page.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from bridge.errors import GuestAccessError

PAGE = 4096
_PRESENT = 1
_LARGE = 1 << 7
_ADDRESS = 0x000F_FFFF_FFFF_F000  # bits 12..51
_LEVEL_SHIFTS = {4: (39, 30, 21, 12), 5: (48, 39, 30, 21, 12)}


class PageFault(GuestAccessError):
    """A guest virtual address is not mapped (or its page is not present)."""


class PhysicalReader(Protocol):
    def read(self, physical: int, size: int) -> bytes: ...


def _entry(memory: PhysicalReader, table: int, index: int) -> int:
    return int.from_bytes(memory.read(table + index * 8, 8), "little")


def translate(memory: PhysicalReader, root: int, virtual: int, *, levels: int = 4) -> int:
    """The guest physical address of ``virtual`` under page-table root ``root``."""
    table = root & _ADDRESS
    shifts = _LEVEL_SHIFTS[levels]
    for depth, shift in enumerate(shifts):
        entry = _entry(memory, table, (virtual >> shift) & 0x1FF)
        if not entry & _PRESENT:
            raise PageFault(f"{virtual:#x} is not mapped")
        last = depth == len(shifts) - 1
        if last or (entry & _LARGE and shift in (30, 21)):
            page_mask = (1 << shift) - 1
            return (entry & _ADDRESS & ~page_mask) | (virtual & page_mask)
        table = entry & _ADDRESS
    raise PageFault(f"{virtual:#x}: malformed page tables")  # pragma: no cover


def mapped_pages(memory: PhysicalReader, root: int, start: int, end: int, *,
                 levels: int = 4) -> Iterator[tuple[int, int, int]]:
    """(virtual, physical, size) of the present pages in [start, end), in order;
    large pages come whole (clipped to the range)."""
    shifts = _LEVEL_SHIFTS[levels]
    canonical = (1 << (shifts[0] + 9)) - 1

    def walk(table: int, depth: int, base: int) -> Iterator[tuple[int, int, int]]:
        shift = shifts[depth]
        span = 1 << shift
        first = max(0, (start - base) >> shift) if start > base else 0
        last = min(511, (end - 1 - base) >> shift)
        if last < first:
            return
        raw = memory.read(table + first * 8, (last - first + 1) * 8)
        for index in range(first, last + 1):
            entry = int.from_bytes(raw[(index - first) * 8 : (index - first) * 8 + 8], "little")
            if not entry & _PRESENT:
                continue
            virtual = base + index * span
            if depth == len(shifts) - 1 or (entry & _LARGE and shift in (30, 21)):
                low, high = max(virtual, start), min(virtual + span, end)
                yield low, (entry & _ADDRESS & ~(span - 1)) + (low - virtual), high - low
            else:
                yield from walk(entry & _ADDRESS, depth + 1, virtual)

    top_bit = 1 << (shifts[0] + 8)
    base = 0
    if start & top_bit:  # the upper (kernel) half: sign-extended addresses
        base = ~canonical & 0xFFFF_FFFF_FFFF_FFFF
    yield from walk(root & _ADDRESS, 0, base)


class AddressSpace:
    """A guest process's (or the kernel's) virtual memory."""

    def __init__(self, memory: PhysicalReader, root: int, *, levels: int = 4) -> None:
        self.memory = memory
        self.root = root
        self.levels = levels
        self._last_page = -1
        self._last_physical = 0

    def physical(self, virtual: int) -> int:
        page = virtual & ~(PAGE - 1)
        if page != self._last_page:
            self._last_physical = translate(self.memory, self.root, page, levels=self.levels)
            self._last_page = page
        return self._last_physical + (virtual & (PAGE - 1))

    def read(self, virtual: int, size: int) -> bytes:
        parts = []
        position, end = virtual, virtual + size
        while position < end:
            step = min(end, (position | (PAGE - 1)) + 1) - position
            parts.append(self.memory.read(self.physical(position), step))
            position += step
        return b"".join(parts)

    def read_upto(self, virtual: int, size: int) -> bytes:
        """Up to ``size`` bytes: shorter where the mapping ends."""
        parts = []
        position, end = virtual, virtual + size
        while position < end:
            step = min(end, (position | (PAGE - 1)) + 1) - position
            try:
                parts.append(self.memory.read(self.physical(position), step))
            except GuestAccessError:
                break
            position += step
        return b"".join(parts)

    def read_pointer(self, virtual: int) -> int:
        return int.from_bytes(self.read(virtual, 8), "little")

    def read_string(self, virtual: int, limit: int = 256) -> str:
        data = self.read_upto(virtual, limit)
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def pages(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        return mapped_pages(self.memory, self.root, start, end, levels=self.levels)
