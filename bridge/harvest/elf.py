"""Just enough ELF for the harvester: build-id, exported symbols, and the file
offsets uprobes want.  Pure over the file's bytes (read through ``mmap``).

x86-64 (ELF64, little-endian) only; anything else raises
:class:`~bridge.errors.ProfileError` with the reason.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass, field

from bridge.errors import ProfileError

_PT_LOAD, _PT_NOTE = 1, 4
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_NT_GNU_BUILD_ID = 3
_NT_GO_BUILD_ID = 4  # the Go linker's note (owner "Go"): Go binaries carry no GNU build-id
_STT_FUNC = 2
_VERSION = re.compile(rb"OpenSSL (\d+\.\d+\.\d+[a-z]{0,2}(?:-[A-Za-z0-9.+~]+)?)\s+\d{1,2} [A-Z][a-z]{2} \d{4}")


@dataclass(frozen=True, slots=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(slots=True)
class ElfImage:
    """What the harvester needs to know about one ELF file."""

    path: str
    build_id: str
    segments: list[Segment]
    #: Function symbols (dynamic first, then the full table if present): name → virtual address.
    functions: dict[str, int] = field(repr=False)
    openssl_version: str | None
    #: Section headers by name: name → (address, file offset, size) (empty when stripped of them).
    sections: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)

    def file_offset(self, vaddr: int) -> int:
        """The file offset of a virtual address (what ``uprobe_events`` takes)."""
        for segment in self.segments:
            if segment.vaddr <= vaddr < segment.vaddr + segment.filesz:
                return vaddr - segment.vaddr + segment.offset
        raise ProfileError(f"{self.path}: address {vaddr:#x} is in no loaded segment")

    def symbol_offset(self, name: str) -> int | None:
        address = self.functions.get(name)
        return None if address is None else self.file_offset(address)

    @property
    def embeds_openssl(self) -> bool:
        return "SSL_new" in self.functions and "SSL_free" in self.functions


def _notes(data: bytes, start: int, size: int, owner: bytes = b"GNU") -> dict[int, bytes]:
    notes: dict[int, bytes] = {}
    position, end = start, start + size
    while position + 12 <= end:
        namesz, descsz, kind = struct.unpack_from("<III", data, position)
        position += 12
        name = data[position : position + namesz]
        position += (namesz + 3) & ~3
        desc = data[position : position + descsz]
        position += (descsz + 3) & ~3
        if name.rstrip(b"\0") == owner:
            notes[kind] = bytes(desc)
    return notes


def _symbols(data: bytes, sections: list[tuple], kind: int) -> dict[str, int]:
    symbols: dict[str, int] = {}
    for sh_type, sh_offset, sh_size, sh_link, sh_entsize in sections:
        if sh_type != kind or sh_entsize != 24:
            continue
        str_offset, str_size = sections[sh_link][1], sections[sh_link][2]
        strtab = data[str_offset : str_offset + str_size]
        for position in range(sh_offset, sh_offset + sh_size, 24):
            st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data, position)
            if st_info & 0xF != _STT_FUNC or not st_value or not st_shndx:
                continue
            end = strtab.find(b"\0", st_name)
            name = strtab[st_name:end].decode("ascii", "replace")
            if "@" in name:
                name = name.split("@", 1)[0]
            symbols.setdefault(name, st_value)
    return symbols


def _version_string(data: bytes) -> str | None:
    match = _VERSION.search(data)
    return match.group(0).decode("ascii") if match else None


def read_elf(path: str | os.PathLike[str], *, with_version: bool = True) -> ElfImage:
    """Parse ``path``.  Raises ProfileError (not an ELF x86-64 file) or OSError."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise ProfileError(f"{path}: empty file") from None
    try:
        return _parse(path, data, with_version)
    except (struct.error, IndexError):
        raise ProfileError(f"{path}: malformed ELF file") from None
    finally:
        data.close()


def _parse(path: str, data: mmap.mmap, with_version: bool) -> ElfImage:
    if data[:4] != b"\x7fELF":
        raise ProfileError(f"{path}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ProfileError(f"{path}: not a 64-bit little-endian ELF file")
    (machine,) = struct.unpack_from("<H", data, 18)
    if machine != 62:
        raise ProfileError(f"{path}: not an x86-64 binary (e_machine {machine})")
    e_phoff, e_shoff = struct.unpack_from("<QQ", data, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHHHH", data, 54)
    segments: list[Segment] = []
    notes: dict[int, bytes] = {}
    go_notes: dict[int, bytes] = {}
    for index in range(e_phnum):
        p_type, p_flags, p_offset, p_vaddr, _paddr, p_filesz, p_memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + index * e_phentsize
        )
        if p_type == _PT_LOAD:
            segments.append(Segment(p_vaddr, p_offset, p_filesz, p_memsz, p_flags))
        elif p_type == _PT_NOTE:
            notes.update(_notes(data, p_offset, p_filesz))
            go_notes.update(_notes(data, p_offset, p_filesz, b"Go"))
    sections = []
    headers = []
    for index in range(e_shnum if e_shoff else 0):
        fields = struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + index * e_shentsize)
        sections.append((fields[1], fields[4], fields[5], fields[6], fields[9]))
        headers.append(fields)
    functions = _symbols(data, sections, _SHT_DYNSYM)
    for name, address in _symbols(data, sections, _SHT_SYMTAB).items():
        functions.setdefault(name, address)
    build_id_text = notes[_NT_GNU_BUILD_ID].hex() if notes.get(_NT_GNU_BUILD_ID) else None
    if build_id_text is None and go_notes.get(_NT_GO_BUILD_ID):  # a Go binary: its own build ID, text
        build_id_text = "go:" + go_notes[_NT_GO_BUILD_ID].decode("ascii", "replace")[:200]
    if build_id_text is None:
        raise ProfileError(f"{path}: no GNU build-id note: profiles are keyed by it")
    return ElfImage(path, build_id_text, segments, functions, _version_string(data) if with_version else None,
                    _section_names(data, headers, e_shstrndx))


def _section_names(data: bytes, headers: list[tuple], shstrndx: int) -> dict[str, tuple[int, int, int]]:
    if not 0 < shstrndx < len(headers):
        return {}
    names_offset, names_size = headers[shstrndx][4], headers[shstrndx][5]
    names = data[names_offset : names_offset + names_size]
    named = {}
    for fields in headers:
        end = names.find(b"\0", fields[0])
        if end > fields[0]:
            named[names[fields[0] : end].decode("ascii", "replace")] = (fields[3], fields[4], fields[5])
    return named


def build_id_in_memory(read, base: int) -> str | None:  # type: ignore[no-untyped-def]
    """The GNU build-id of an ELF image mapped at ``base`` in some address space
    (``read(address, size)``): its header, program headers and PT_NOTE segment."""
    try:
        header = read(base, 64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return None
        e_phoff = struct.unpack_from("<Q", header, 32)[0]
        e_phentsize, e_phnum = struct.unpack_from("<HH", header, 54)
        if e_phnum > 64 or e_phentsize < 56:
            return None
        table = read(base + e_phoff, e_phnum * e_phentsize)
        for index in range(e_phnum):
            p_type, _flags, _offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", table, index * e_phentsize)
            if p_type == _PT_NOTE and 0 < p_filesz <= 4096:
                build_id = _notes(read(base + p_vaddr, p_filesz), 0, p_filesz).get(_NT_GNU_BUILD_ID)
                if build_id:
                    return build_id.hex()
    except (struct.error, IndexError):
        return None
    return None
