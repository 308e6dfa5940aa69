"""A guest file's contents from the guest kernel's page cache.

A process maps only the pages of its executable it has touched (and the
fault-around around them): the parts of a Go binary's pclntab that name
functions are never touched by a server that does not panic, so they are not in
its page tables.  The kernel's page cache holds more: every page of the file
read since it was opened (``exec`` reads ahead; a file in an initramfs or on
tmpfs is *all* in it).  So a mapped file is read the way the kernel finds its
pages: ``file->f_mapping`` (an ``address_space``) → ``i_pages`` (an XArray of
folios by page index) → each folio's ``struct page *`` → its page frame number
(``(page - vmemmap_base) / sizeof(struct page)``; ``vmemmap_base`` is exported)
→ guest physical memory.  Struct offsets from the guest kernel's BTF.

XArray encoding (``include/linux/xarray.h``): an internal entry has its low bits
``10``; above 4096 it is a node (``entry - 2``), below 1024 a *sibling* (a slot
of a multi-page folio: ``entry >> 2`` is the folio's own slot); an entry with
bit 0 set is a value (a shadow of an evicted page: not resident).  A node of
``shift`` S covers ``64 << S`` indices; a folio entry in it covers ``1 << S``.

Everything is bounded: the file's size (:data:`MAX_FILE`), the tree's depth and
node count; a page frame outside the guest's RAM is not read.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import GuestAccessError
from bridge.vmi.btf import Btf, BtfError
from bridge.vmi.linux import GuestOsError, LinuxGuest

PAGE = 4096
#: Files larger than this are not read (a Go service binary is tens of MiB at most).
MAX_FILE = 512 << 20
_MAX_NODES = 1 << 16


@dataclass(frozen=True, slots=True)
class _Offsets:
    f_mapping: int
    f_inode: int
    i_size: int
    i_pages: int  # address_space.i_pages.xa_head
    node_shift: int
    node_slots: int
    slots: int
    page_size: int  # sizeof(struct page)
    mm_exe_file: int


@dataclass(frozen=True, slots=True)
class FileImage:
    """What the page cache holds of one file: its bytes (zeros where a page is not
    resident), how many pages are resident of how many, and its inode (identity)."""

    data: bytes
    resident: int
    pages: int
    inode: int
    resident_pages: frozenset[int]

    @property
    def complete(self) -> bool:
        return self.resident == self.pages


class PageCache:
    def __init__(self, guest: LinuxGuest, btf: Btf) -> None:
        self.guest = guest
        try:
            self.offsets = _Offsets(
                f_mapping=btf.offset("file", "f_mapping"),
                f_inode=btf.offset("file", "f_inode"),
                i_size=btf.offset("inode", "i_size"),
                i_pages=btf.offset("address_space", "i_pages") + btf.offset("xarray", "xa_head"),
                node_shift=btf.offset("xa_node", "shift"),
                node_slots=btf.offset("xa_node", "slots"),
                slots=btf.array_length("xa_node", "slots"),
                page_size=btf.size("page"),
                mm_exe_file=btf.offset("mm_struct", "exe_file"),
            )
        except BtfError as exc:
            raise GuestOsError(f"the guest kernel's BTF lacks the page cache's structures: {exc}") from None
        symbol = guest.exported_symbol("vmemmap_base")
        if symbol is None:
            raise GuestOsError("the guest kernel exports no vmemmap_base: its page frames cannot be placed")
        self.vmemmap = guest.pointer(symbol)

    def exe_file(self, mm: int) -> int:
        """The ``struct file *`` of a process's executable (0: none)."""
        return self.guest.pointer(mm + self.offsets.mm_exe_file)

    def _pfn(self, page: int) -> int | None:
        delta = page - self.vmemmap
        if delta < 0 or delta % self.offsets.page_size:
            return None
        pfn = delta // self.offsets.page_size
        physical = pfn * PAGE
        return pfn if any(first <= physical < end for first, end in self.guest.ranges) else None

    def page_frames(self, file: int, limit: int) -> dict[int, int]:
        """Page index → page frame number of the file's resident pages below ``limit``."""
        o = self.offsets
        mapping = self.guest.pointer(file + o.f_mapping)
        head = self.guest.pointer(mapping + o.i_pages)
        frames: dict[int, int] = {}

        def leaf(entry: int, first: int, count: int) -> None:
            pfn = self._pfn(entry)
            if pfn is None:
                return
            for index in range(first, min(first + count, limit)):
                frames[index] = pfn + index - first

        if head & 3 == 0 and head:
            leaf(head, 0, 1)  # a single page at index 0
            return frames
        pending, nodes = [(head, 0)], 0
        while pending:
            entry, base = pending.pop()
            if entry & 3 != 2 or entry <= 4096:
                continue
            nodes += 1
            if nodes > _MAX_NODES:
                raise GuestOsError("the page cache's tree is larger than any file we read (corrupt?)")
            node = entry - 2
            shift = self.guest.read(node + o.node_shift, 1)[0]
            if shift > 60 or shift % 6:
                raise GuestOsError(f"page cache node with shift {shift} (corrupt?)")
            raw = self.guest.read(node + o.node_slots, o.slots * 8)
            slots = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
            for slot, value in enumerate(slots):
                first = base + (slot << shift)
                if not value or value & 1 or first >= limit:
                    continue  # empty, or a value entry (an evicted page's shadow)
                if value & 3 == 2:
                    if value > 4096:
                        if shift:
                            pending.append((value, first))
                    elif value < 1024 and (value >> 2) < slot:  # a sibling: part of the folio in an earlier slot
                        owner = slots[value >> 2]
                        if owner and owner & 3 == 0:
                            pfn = self._pfn(owner)
                            if pfn is not None:
                                start = base + ((value >> 2) << shift)
                                for index in range(first, min(first + (1 << shift), limit)):
                                    frames[index] = pfn + index - start
                    continue
                leaf(value, first, 1 << shift)
        return frames

    def read_file(self, file: int) -> FileImage:
        """The file's bytes as far as the page cache holds them."""
        o = self.offsets
        inode = self.guest.pointer(file + o.f_inode)
        size = int.from_bytes(self.guest.read(inode + o.i_size, 8), "little", signed=True)
        if not 0 < size <= MAX_FILE:
            raise GuestOsError(f"a guest file of {size} bytes is not read")
        pages = (size + PAGE - 1) // PAGE
        frames = self.page_frames(file, pages)
        data = bytearray(pages * PAGE)
        for index, pfn in frames.items():
            try:
                data[index * PAGE : (index + 1) * PAGE] = self.guest.memory.read(pfn * PAGE, PAGE)
            except GuestAccessError:
                continue
        return FileImage(bytes(data[:size]), len(frames), pages, inode, frozenset(frames))
