"""The guest kernel's own type information (BTF), so no per-kernel profile is needed.

BTF is read from the kernel image the operator points at (a ``vmlinux``, or a
``bzImage``/``vmlinuz`` whose compressed payload holds one), or found in guest
physical memory (the kernel image is physically contiguous and ``.BTF`` is in
it).  Pure parsing; only struct/union layouts are kept: member offsets by dotted
path (``task_struct.tasks``, ``file.f_path.dentry``), sizes, array lengths.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import GuestAccessError

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
# kind → bytes after the common 12-byte header, and per-member size (vlen)
_KIND_INT, _KIND_PTR, _KIND_ARRAY, _KIND_STRUCT, _KIND_UNION, _KIND_ENUM = 1, 2, 3, 4, 5, 6
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT = 8, 9, 10, 11
_KIND_FUNC_PROTO, _KIND_VAR, _KIND_DATASEC, _KIND_DECL_TAG, _KIND_TYPE_TAG, _KIND_ENUM64 = 13, 14, 15, 17, 18, 19
_EXTRA = {_KIND_INT: 4, _KIND_ARRAY: 12, _KIND_VAR: 4, _KIND_DECL_TAG: 4}
_PER_MEMBER = {_KIND_STRUCT: 12, _KIND_UNION: 12, _KIND_ENUM: 8, _KIND_FUNC_PROTO: 8, _KIND_DATASEC: 12,
               _KIND_ENUM64: 12}
_QUALIFIERS = {_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG}


class BtfError(GuestAccessError):
    """BTF is missing or malformed, or lacks a type the harvester needs."""


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(slots=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: tuple[_Member, ...] = ()
    element: int = 0  # arrays
    count: int = 0


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("BTF: too short")
        magic, version, _flags, header_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC or version != 1:
            raise BtfError("BTF: bad magic or version")
        types_start, strings_start = header_len + type_off, header_len + str_off
        if types_start + type_len > len(data) or strings_start + str_len > len(data):
            raise BtfError("BTF: sections beyond the data")
        self._strings = bytes(data[strings_start : strings_start + str_len])
        self._types: list[_Type | None] = [None]  # type ids start at 1
        self._by_name: dict[str, int] = {}
        try:
            self._parse(data, types_start, types_start + type_len)
        except (struct.error, IndexError):
            raise BtfError("BTF: truncated type section") from None

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end].decode("ascii", "replace")

    def _parse(self, data: bytes, position: int, end: int) -> None:
        while position < end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, position)
            position += 12
            kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            entry = _Type(kind, self._string(name_off) if name_off else "", size_or_type)
            if kind in (_KIND_STRUCT, _KIND_UNION):
                members = []
                for index in range(vlen):
                    m_name, m_type, m_offset = struct.unpack_from("<III", data, position + index * 12)
                    members.append(_Member(self._string(m_name) if m_name else "", m_type,
                                           m_offset & 0xFFFFFF if kind_flag else m_offset))
                entry.members = tuple(members)
                if entry.name:
                    self._by_name.setdefault(f"{'struct' if kind == _KIND_STRUCT else 'union'} {entry.name}",
                                             len(self._types))
            elif kind == _KIND_ARRAY:
                entry.element, _index, entry.count = struct.unpack_from("<III", data, position)
            position += _EXTRA.get(kind, 0) + vlen * _PER_MEMBER.get(kind, 0)
            self._types.append(entry)

    def __len__(self) -> int:
        return len(self._types) - 1

    def _resolve(self, type_id: int) -> _Type:
        entry = self._types[type_id]
        while entry is not None and entry.kind in _QUALIFIERS:
            entry = self._types[entry.size_or_type]
        if entry is None:
            raise BtfError(f"BTF: type {type_id} is void")
        return entry

    def _struct(self, name: str) -> _Type:
        type_id = self._by_name.get(f"struct {name}") or self._by_name.get(f"union {name}")
        if type_id is None:
            raise BtfError(f"the guest kernel's BTF has no struct {name}")
        return self._types[type_id]  # type: ignore[return-value]

    def has_member(self, struct_name: str, member: str) -> bool:
        try:
            self.offset(struct_name, member)
            return True
        except BtfError:
            return False

    def _find(self, entry: _Type, name: str) -> tuple[int, _Type] | None:
        """(bit offset, member type) of ``name``, looking into anonymous members."""
        for member in entry.members:
            if member.name == name:
                return member.bit_offset, self._resolve(member.type_id)
            if not member.name:
                inner = self._resolve(member.type_id)
                if inner.kind in (_KIND_STRUCT, _KIND_UNION):
                    found = self._find(inner, name)
                    if found is not None:
                        return member.bit_offset + found[0], found[1]
        return None

    def offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path, e.g. ``offset("file", "f_path.dentry")``."""
        entry, bits = self._struct(struct_name), 0
        for name in path.split("."):
            found = self._find(entry, name)
            if found is None:
                raise BtfError(f"the guest kernel's struct {struct_name} has no member {path}")
            bits += found[0]
            entry = found[1]
        return bits // 8

    def size(self, struct_name: str) -> int:
        return self._struct(struct_name).size_or_type

    def array_length(self, struct_name: str, member: str) -> int:
        entry = self._struct(struct_name)
        found = self._find(entry, member)
        if found is None or found[1].kind != _KIND_ARRAY:
            raise BtfError(f"struct {struct_name}.{member} is not an array")
        return found[1].count


# --- where BTF comes from ---------------------------------------------------------------------


def _elf_section(data: bytes, wanted: str) -> bytes | None:
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    e_shoff = struct.unpack_from("<Q", data, 0x28)[0]
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize) for i in range(e_shnum)]
    names_offset = headers[e_shstrndx][4]
    for header in headers:
        name_end = data.find(b"\0", names_offset + header[0])
        if data[names_offset + header[0] : name_end].decode("ascii", "replace") == wanted:
            return data[header[4] : header[4] + header[5]]
    return None


def _decompress(payload: bytes) -> bytes:
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    if payload[:3] == b"\x1f\x8b\x08":
        return gzip.GzipFile(fileobj=__import__("io").BytesIO(payload)).read()
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        try:
            import zstandard  # type: ignore[import-not-found]

            return zstandard.ZstdDecompressor().decompressobj().decompress(payload)
        except ImportError:
            pass
        zstd = shutil.which("zstd")
        if zstd is None:
            raise BtfError("the kernel image is zstd-compressed: install zstd (or the zstandard package)")
        # the payload ends with the 4-byte decompressed size, which zstd calls garbage
        result = subprocess.run([zstd, "-dcq"], input=payload[:-4], capture_output=True)
        if result.returncode != 0 or not result.stdout:
            raise BtfError(f"zstd could not decompress the kernel image: {result.stderr.decode(errors='replace')[:200]}")
        return result.stdout
    raise BtfError("the kernel image's payload is in a compression this reader does not know")


def vmlinux_from_image(path: str | Path) -> bytes:
    """The uncompressed ELF ``vmlinux`` of a ``vmlinux`` or ``bzImage``/``vmlinuz`` file."""
    data = Path(path).read_bytes()
    if data[:4] == b"\x7fELF":
        return data
    if data[0x202:0x206] != b"HdrS":
        raise BtfError(f"{path} is neither an ELF vmlinux nor a bzImage")
    setup_sects = data[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    return _decompress(data[start : start + payload_length])


def btf_from_kernel_image(path: str | Path) -> Btf:
    try:
        vmlinux = vmlinux_from_image(path)
    except OSError as exc:
        raise BtfError(f"cannot read kernel image {path}: {exc.strerror}") from None
    section = _elf_section(vmlinux, ".BTF")
    if section is None:
        raise BtfError(f"{path}: the kernel has no .BTF section (built without CONFIG_DEBUG_INFO_BTF)")
    return Btf(section)


def find_btf_in_memory(read, ranges: list[tuple[int, int]], *, chunk: int = 1 << 22) -> Btf:  # type: ignore[no-untyped-def]
    """Scan guest physical memory for the kernel's BTF (header magic, version 1, a
    24-byte header, plausible sizes) and parse the first that parses."""
    signature = struct.pack("<HBBI", BTF_MAGIC, 1, 0, 24)
    for first, end in ranges:
        position = first
        while position < end:
            size = min(chunk, end - position)
            try:
                data = read(position, size)
            except GuestAccessError:
                position += size
                continue
            index = data.find(signature)
            while index >= 0:
                header = read(position + index, _HEADER.size)
                _m, _v, _f, header_len, type_off, type_len, str_off, str_len = _HEADER.unpack(header)
                total = header_len + max(type_off + type_len, str_off + str_len)
                if 1 << 20 < total < 64 << 20:  # a kernel's BTF: megabytes
                    try:
                        return Btf(read(position + index, total))
                    except GuestAccessError:
                        pass
                index = data.find(signature, index + 1)
            position += size
    raise BtfError("no kernel BTF found in guest memory (a kernel without CONFIG_DEBUG_INFO_BTF?): "
                   "give the kernel image with --kernel")
