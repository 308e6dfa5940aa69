"""VMI building blocks over synthetic memory: RAM layout, page walks, BTF parsing, maple trees."""

from __future__ import annotations

import struct

import pytest

from bridge.vmi.btf import Btf, BtfError
from bridge.vmi.paging import AddressSpace, PageFault, mapped_pages, translate
from bridge.vmi.physmem import GIB, GuestMemoryError, RamLayout


class FlatMemory:
    """Guest physical memory as a bytearray."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, physical: int, size: int) -> bytes:
        if physical + size > len(self.data):
            raise GuestMemoryError("beyond RAM")
        return bytes(self.data[physical : physical + size])

    def put(self, physical: int, data: bytes) -> None:
        self.data[physical : physical + len(data)] = data

    def entry(self, table: int, index: int, value: int) -> None:
        self.put(table + index * 8, value.to_bytes(8, "little"))


P, W, LARGE = 1, 2, 1 << 7


def _tables() -> tuple[FlatMemory, int]:
    """PML4 at 0x1000; 0x0000_7f00_0000_1000 → 4 KiB page 0x40000; 0x0000_7f00_0020_0000 → 2 MiB
    page 0x200000; 0x0000_0080_0000_0000 → 1 GiB page 0 (offset inside it 0x123)."""
    memory = FlatMemory(8 << 20)
    pml4, pdpt, pd, pt, pdpt2 = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000
    virtual = 0x0000_7F00_0000_1000
    memory.entry(pml4, (virtual >> 39) & 0x1FF, pdpt | P | W)
    memory.entry(pdpt, (virtual >> 30) & 0x1FF, pd | P | W)
    memory.entry(pd, (virtual >> 21) & 0x1FF, pt | P | W)
    memory.entry(pt, (virtual >> 12) & 0x1FF, 0x40000 | P | W)
    memory.entry(pd, ((virtual + 0x200000) >> 21) & 0x1FF, 0x200000 | P | W | LARGE)
    memory.entry(pml4, 1, pdpt2 | P)
    memory.entry(pdpt2, 0, 0 | P | LARGE)
    memory.put(0x40000 + 0x10, b"four-kib")
    memory.put(0x200000 + 0x1234, b"two-mib")
    return memory, pml4


def test_page_walks_with_4k_2m_and_1g_pages():
    memory, root = _tables()
    assert translate(memory, root, 0x0000_7F00_0000_1010) == 0x40010
    assert translate(memory, root, 0x0000_7F00_0020_1234) == 0x201234
    assert translate(memory, root, 0x0000_0080_0000_0123) == 0x123
    with pytest.raises(PageFault):
        translate(memory, root, 0x0000_7F00_0000_2000)
    space = AddressSpace(memory, root)
    assert space.read(0x0000_7F00_0000_1010, 8) == b"four-kib"
    assert space.read(0x0000_7F00_0020_1234, 7) == b"two-mib"
    assert space.read_upto(0x0000_7F00_0000_1FFC, 16) == bytes(4)  # stops at the unmapped next page


def test_mapped_pages_enumerates_a_range_without_page_by_page_walks():
    memory, root = _tables()
    pages = list(mapped_pages(memory, root, 0x0000_7F00_0000_0000, 0x0000_7F00_0040_0000))
    assert pages == [(0x0000_7F00_0000_1000, 0x40000, 0x1000), (0x0000_7F00_0020_0000, 0x200000, 0x200000)]
    clipped = list(mapped_pages(memory, root, 0x0000_7F00_0030_0000, 0x0000_7F00_0030_1000))
    assert clipped == [(0x0000_7F00_0030_0000, 0x300000, 0x1000)]


def test_ram_above_the_pci_hole():
    small = RamLayout.for_machine(512 << 20)
    assert small.offset(0x1000) == 0x1000 and small.ranges() == [(0, 512 << 20)]
    big = RamLayout.for_machine(6 * GIB, "pc")
    assert big.below_4g == 3 * GIB and big.offset(4 * GIB + 5) == 3 * GIB + 5
    assert big.ranges() == [(0, 3 * GIB), (4 * GIB, 7 * GIB)]
    with pytest.raises(GuestMemoryError):
        big.offset(3 * GIB + 5)  # the hole
    assert RamLayout.for_machine(3 * GIB, "q35").below_4g == 2 * GIB


# --- BTF -------------------------------------------------------------------------------------


def _btf(types: list[bytes], strings: list[str]) -> bytes:
    table = b"\0" + b"".join(s.encode() + b"\0" for s in strings)
    offsets = {}
    position = 1
    for s in strings:
        offsets[s] = position
        position += len(s) + 1
    body = b"".join(types)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(body), len(body), len(table))
    return header + body + table


def test_btf_member_offsets_through_anonymous_unions_and_arrays():
    names = ["int", "inner", "a", "b", "outer", "x", "arr"]
    off = {n: 1 + sum(len(m) + 1 for m in names[:i]) for i, n in enumerate(names)}
    types = [
        struct.pack("<IIII", off["int"], 1 << 24, 4, 32),  # 1: int
        struct.pack("<III", off["inner"], (4 << 24) | 2, 16)  # 2: struct inner { int a @0; int b @64 bits }
        + struct.pack("<III", off["a"], 1, 0) + struct.pack("<III", off["b"], 1, 64),
        struct.pack("<III", 0, (5 << 24) | 1, 16) + struct.pack("<III", 0, 2, 0),  # 3: anonymous union { struct inner }
        struct.pack("<III", 0, 3 << 24, 0) + struct.pack("<III", 1, 1, 12),  # 4: int[12]
        struct.pack("<III", off["outer"], (4 << 24) | 3, 80)  # 5: struct outer { int x @0; union @64; int arr[12] @192 }
        + struct.pack("<III", off["x"], 1, 0) + struct.pack("<III", 0, 3, 64) + struct.pack("<III", off["arr"], 4, 192),
    ]
    btf = Btf(_btf(types, names))
    assert len(btf) == 5
    assert btf.offset("outer", "b") == 16  # 8 (the union) + 8 (b)
    assert btf.offset("inner", "b") == 8 and btf.size("outer") == 80
    assert btf.array_length("outer", "arr") == 12
    with pytest.raises(BtfError, match="no member"):
        btf.offset("outer", "nope")
    with pytest.raises(BtfError, match="no struct"):
        btf.offset("task_struct", "pid")


def test_btf_refuses_garbage():
    for data in (b"", b"\x00" * 40, struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 1000, 0, 0)):
        with pytest.raises(BtfError):
            Btf(data)


def test_the_hosts_own_btf_parses():
    """This machine's kernel exposes its BTF: a real, 100k-type input."""
    btf = Btf(open("/sys/kernel/btf/vmlinux", "rb").read())
    assert len(btf) > 50_000
    assert btf.offset("task_struct", "comm") > btf.offset("task_struct", "pid") > 0
    assert btf.offset("file", "f_path.dentry") == btf.offset("file", "f_path") + btf.offset("path", "dentry")
    assert btf.array_length("maple_range_64", "slot") == 16 and btf.array_length("maple_arange_64", "slot") == 10


# --- exported symbols from __ksymtab -----------------------------------------------------------------

def _kernel_image(names: list[str], values: list[int], *, gap: int = 300_000, decoy: bool = True) -> tuple[bytes, int]:
    """A stand-in for a kernel image's read-only data: ``__ksymtab`` (PREL32
    entries: value, name, namespace), a gap, ``__ksymtab_strings`` with the names
    (one merged as the tail of a longer name, as the linker does), and before it
    all a decoy: the same name among identifiers, with no entry pointing at it.
    Returns the image and the offset of the table."""
    decoy_block = b"\0".join([b"x" * 60, b"jiffies", b"other_identifier", b"y" * 60]) + b"\0" if decoy else b""
    decoy_block += bytes(-len(decoy_block) % 4)  # the table is 4-byte aligned (.balign 4)
    table = 4096 + len(decoy_block)
    strings = table + len(names) * 12 + gap
    blob, positions = b"", {}
    for name in names:
        if name == "jiffies":  # merged: the tail of "nsecs_to_jiffies"
            positions[name] = strings + len(blob) + len("nsecs_to_")
            blob += b"nsecs_to_jiffies\0"
        else:
            positions[name] = strings + len(blob)
            blob += name.encode() + b"\0"
    image = bytearray(4096) + decoy_block + bytearray(len(names) * 12 + gap) + blob + bytearray(4096)
    for index, (name, value) in enumerate(zip(names, values)):
        entry = table + index * 12
        struct.pack_into("<iii", image, entry, value - entry, positions[name] - (entry + 4), 0)
    return bytes(image), table


def test_an_exported_symbol_is_found_through_its_ksymtab_entry():
    from bridge.vmi.ksymtab import exported_symbol

    names = ["init_net", "jiffies", "nr_cpu_ids", "system_state"]
    values = [0x10_0000, 0x20_0008, 0x30_0010, 0x40_0018]  # image offsets of the symbols
    image, _ = _kernel_image(names, values)
    physical, delta = 0x0100_0000, 0xFFFF_FFFF_8000_0000 - 0x0100_0000
    for name, value in zip(names, values):
        assert exported_symbol(image, physical, delta, name) == 0xFFFF_FFFF_8000_0000 + value, name
    assert exported_symbol(image, physical, delta, "not_exported") is None
    assert exported_symbol(image, physical, delta, "other_identifier") is None  # a string, no entry


def test_a_table_too_far_from_its_strings_or_garbage_finds_nothing():
    import os

    from bridge.vmi.ksymtab import WINDOW, exported_symbol

    image, _ = _kernel_image(["a_symbol", "jiffies", "z_symbol"], [0x1000, 0x2000, 0x3000], gap=WINDOW)
    assert exported_symbol(image, 0, 0, "jiffies") is None
    assert exported_symbol(os.urandom(1 << 20) + b"\0jiffies\0" + os.urandom(1 << 16), 0, 0, "jiffies") is None


def test_a_guest_full_of_decoy_names_costs_bounded_work(monkeypatch):
    from bridge.vmi import ksymtab

    windows = []
    real = ksymtab._aligned_equal_words
    monkeypatch.setattr(ksymtab, "_aligned_equal_words", lambda data, expected: windows.append(1) or real(data, expected))
    decoys = b"\0".join([b"some_identifier_jiffies"] * (4 * ksymtab.MAX_STRINGS)) + b"\0"
    assert ksymtab.exported_symbol(bytes(1 << 20) + decoys, 0, 0, "jiffies") is None
    assert len(windows) == ksymtab.MAX_STRINGS  # not one window per decoy
