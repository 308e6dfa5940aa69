"""Go's crypto/tls: its key-log function found in the binary's pclntab, hooked
with the register ABI.

Every Go TLS handshake (server and client, TLS 1.2 and 1.3) calls
``crypto/tls.(*Config).writeKeyLog(label, clientRandom, secret)`` with each
secret an SSLKEYLOGFILE would hold: ``CLIENT_RANDOM`` (TLS 1.2's master secret),
``CLIENT_/SERVER_HANDSHAKE_TRAFFIC_SECRET``, ``CLIENT_/SERVER_TRAFFIC_SECRET_0``.
The call is unconditional; the test ``Config.KeyLogWriter == nil`` is the first
thing *inside* the function (Go 1.19's and 1.23's ``common.go``), so a uprobe on
its first instruction sees the arguments whether or not a key log is
configured.  The function is too large to inline (it formats with
``fmt.Sprintf`` and calls through an interface): every call site calls it
(checked on Debian's go1.19.8 with ``go tool objdump``).  No layout is needed:
the secrets come straight from the arguments.

Register ABI (ABIInternal, amd64, Go 1.17 and later): integer arguments in RAX,
RBX, RCX, RDI, RSI, R8, R9, R10, R11 in order, a string as (pointer, length), a
slice as (pointer, length, capacity).  So: ``c`` in RAX, ``label`` in RBX/RCX,
``clientRandom`` in RDI/RSI/R8, ``secret`` in R9/R10/R11.  The kernel copies
the bytes behind the pointers at hook time (tracefs fetch-args).

The function's address comes from the pclntab (``runtime.pclntab``), which a
stripped binary (``-ldflags='-s -w'``) keeps: the runtime needs it for stack
traces.  Pure code over the file's bytes; pclntab formats of Go 1.16/1.17
(magic ``0xfffffffa``), 1.18/1.19 (``0xfffffff0``) and 1.20 and later
(``0xfffffff1``).  Go 1.16 and older pass arguments on the stack: refused.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass

from bridge.errors import ProfileError
from bridge.harvest.elf import ElfImage
from bridge.harvest.keylog_hooks import KeyLogLine, label_from, secret_from

WRITE_KEY_LOG = "crypto/tls.(*Config).writeKeyLog"
LIBRARY = "go crypto/tls"
_MAGICS = {0xFFFFFFFA: "1.16", 0xFFFFFFF0: "1.18", 0xFFFFFFF1: "1.20"}
_BUILDINFO = b"\xff Go buildinf:"
_VERSION = re.compile(rb"go(\d+)\.(\d+)")
#: Upper bound on the functions a pclntab may claim (Kubernetes binaries have ~100k).
_MAX_FUNCTIONS = 2_000_000

#: The probe's fetch-args: the register ABI's argument registers (see the module's docstring).
PROBE_ARGS = (
    "label=+0(%bx):x64[4]", "label_len=%cx:u64",
    "random=+0(%di):x64[4]", "random_len=%si:u64",
    "secret=+0(%r9):x64[6]", "secret_len=%r10:u64",
)


@dataclass(frozen=True, slots=True)
class GoBinary:
    """A Go executable that links crypto/tls."""

    path: str
    build_id: str
    version: str | None  # "go1.19.8" (from the build info), None when not found
    address: int  # writeKeyLog's virtual address
    offset: int  # its file offset (what uprobe_events takes)

    @property
    def library(self) -> str:
        return f"{LIBRARY} {self.version}" if self.version else LIBRARY


def _pclntab_start(data: bytes, image: ElfImage) -> int | None:
    section = image.sections.get(".gopclntab")
    if section is not None and section[1] + 8 <= len(data):
        return section[1]
    for magic in _MAGICS:  # no section headers (or a PIE's relro copy): the header's own bytes
        pattern = struct.pack("<I", magic) + b"\x00\x00\x01\x08"
        position = data.find(pattern)
        if position >= 0:
            return position
    return None


def find_function(data: bytes, image: ElfImage, name: str) -> int | None:
    """The virtual address of the Go function ``name``, from the pclntab (None: not in it).
    Raises ProfileError for a pclntab that does not parse."""
    start = _pclntab_start(data, image)
    if start is None:
        return None
    try:
        magic, _pad, quantum, pointer = struct.unpack_from("<IHBB", data, start)
        kind = _MAGICS.get(magic)
        if kind is None or quantum != 1 or pointer != 8:
            raise ProfileError(f"{image.path}: pclntab magic {magic:#x} (quantum {quantum}, pointer {pointer}) unknown")
        if kind == "1.16":
            nfunc, _nfiles, names, _cu, _files, _pc, pcln = struct.unpack_from("<7Q", data, start + 8)
            text = 0
        else:
            nfunc, _nfiles, text, names, _cu, _files, _pc, pcln = struct.unpack_from("<8Q", data, start + 8)
            if text == 0:  # a PIE: the text start is relocated at load time
                text = image.sections.get(".text", (0, 0, 0))[0]
        if not 0 < nfunc <= _MAX_FUNCTIONS:
            raise ProfileError(f"{image.path}: pclntab claims {nfunc} functions")
        wanted = name.encode() + b"\0"
        table = start + names
        position = data.find(wanted, table, start + pcln)
        while position > table and data[position - 1] != 0:  # a longer name ending in ours
            position = data.find(wanted, position + 1, start + pcln)
        if position < 0:
            return None
        name_offset = position - table
        functab = start + pcln
        if kind == "1.16":
            for index in range(nfunc):
                entry, func = struct.unpack_from("<QQ", data, functab + index * 16)
                if struct.unpack_from("<i", data, functab + func + 8)[0] == name_offset:
                    return entry
        else:
            entries = memoryview(data)[functab : functab + nfunc * 8].cast("I")
            for index in range(nfunc):
                func = entries[index * 2 + 1]
                entry_offset, func_name = struct.unpack_from("<Ii", data, functab + func)
                if func_name == name_offset:
                    return text + entry_offset
    except (struct.error, IndexError, ValueError, TypeError):
        raise ProfileError(f"{image.path}: malformed pclntab") from None
    return None


def build_version(data: bytes, image: ElfImage) -> str | None:
    """The Go release that built the binary ("go1.19.8"), from its build info blob."""
    position = data.find(_BUILDINFO)
    if position < 0 or position + 32 > len(data):
        return None
    pointer, flags = data[position + 14], data[position + 15]
    try:
        if flags & 2:  # Go 1.18+: the strings inline, each length-prefixed (varint)
            length, shift, cursor = 0, 0, position + 32
            while True:
                byte = data[cursor]
                length |= (byte & 0x7F) << shift
                cursor += 1
                shift += 7
                if not byte & 0x80 or shift > 28:
                    break
            text = bytes(data[cursor : cursor + min(length, 64)])
        elif pointer == 8:  # older: a pointer to a string header
            header = struct.unpack_from("<Q", data, position + 16)[0]
            address, length = struct.unpack_from("<QQ", data, image.file_offset(header))
            text = bytes(data[image.file_offset(address) : image.file_offset(address) + min(length, 64)])
        else:
            return None
    except (struct.error, IndexError, ProfileError):
        return None
    match = _VERSION.match(text)
    return text.decode("ascii", "replace") if match else None


def register_abi(version: str | None) -> bool:
    """Go 1.17 and later pass arguments in registers on amd64 (unknown: assumed)."""
    match = _VERSION.match(version.encode()) if version else None
    return match is None or (int(match[1]), int(match[2])) >= (1, 17)


def inspect(path: str, image: ElfImage) -> GoBinary | None:
    """The binary's crypto/tls hook point, or None: not Go, or no crypto/tls linked.
    Raises ProfileError for a Go binary that cannot be hooked (stack ABI, malformed)."""
    if ".go.buildinfo" not in image.sections and not image.build_id.startswith("go:") and ".gopclntab" not in image.sections:
        return None
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if data.find(WRITE_KEY_LOG.encode() + b"\0") < 0:
            return None  # quick: the name is not in the binary at all
        version = build_version(data, image)
        address = find_function(data, image, WRITE_KEY_LOG)
    finally:
        data.close()
    if address is None:
        return None
    if not register_abi(version):
        raise ProfileError(f"{path}: built by {version}, which passes arguments on the stack (Go 1.17+ is hooked)")
    return GoBinary(path, image.build_id, version, address, image.file_offset(address))


def decode(args: dict[str, bytes | int | None]) -> KeyLogLine | None:
    """A probe's fetched arguments → the key log line (None: not a key log call we can read)."""
    label = label_from(args.get("label"), args.get("label_len"))
    random = secret_from(args.get("random"), args.get("random_len"))
    secret = secret_from(args.get("secret"), args.get("secret_len"))
    if label is None or random is None or len(random) != 32 or secret is None:
        return None
    return KeyLogLine(label, random, secret)
