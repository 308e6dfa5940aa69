"""BoringSSL linked into a binary (gRPC's wheels, Envoy): hooked at ``ssl_log_secret``,
found in stripped code by its callers.

BoringSSL calls ``bssl::ssl_log_secret(ssl, label, secret)`` for every secret
of every handshake (``CLIENT_RANDOM`` for TLS 1.2; the TLS 1.3 handshake,
application, exporter and early secrets); the test for a key-log callback is
its first statement, inside, so a probe on its first instruction always fires.
Static builds keep no symbol for it, so it is found by what calls it: every
label is a C string in the read-only data, loaded with ``lea label(%rip),%rsi``
(the second argument) a few instructions before ``call ssl_log_secret``.  The
function is accepted when the callers of every label found agree on it.

Its arguments: the ``SSL *`` in RDI, the label in RSI, the secret as a
``Span<const uint8_t>`` (pointer in RDX, length in RCX).  The client random is
not an argument: ``ssl_log_secret`` reads ``ssl->s3->client_random`` to write
the line, and the two offsets of that path are read from its own code (``mov
D1(%reg),%rax`` with the register holding the ``SSL *``, then ``lea
D2(%rax),%rsi`` and ``mov $0x20,%edx``: the 32 bytes handed to the hex
writer).  A build whose code does not show that pattern is refused with the
reason, never guessed.

Pure code over the file's bytes (x86-64).
"""

from __future__ import annotations

import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass

from bridge.errors import ProfileError
from bridge.harvest.elf import ElfImage
from bridge.harvest.keylog_hooks import KeyLogBinary, decode_c_label

LIBRARY = "boringssl"
FUNCTION = "ssl_log_secret"
MARKER = b"\0BoringSSL\0"  # what OpenSSL_version() returns in every BoringSSL
LABELS = (b"CLIENT_RANDOM", b"CLIENT_EARLY_TRAFFIC_SECRET", b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
          b"SERVER_HANDSHAKE_TRAFFIC_SECRET", b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0",
          b"EXPORTER_SECRET")
#: ``lea disp32(%rip),%rsi``
_LEA_RSI = re.compile(rb"\x48\x8d\x35", re.DOTALL)
#: How far after the ``lea`` the call may come, and how much of the function is read for the path.
_CALL_WINDOW = 48
_BODY = 512
#: ``mov %rdi,%reg`` (the SSL * kept in a callee-saved register) → how ``mov disp8(%reg),%rax`` is encoded.
_SAVED = {b"\x48\x89\xfb": b"\x48\x8b\x43", b"\x48\x89\xfd": b"\x48\x8b\x45", b"\x49\x89\xfc": b"\x49\x8b\x44\x24",
          b"\x49\x89\xfd": b"\x49\x8b\x45", b"\x49\x89\xfe": b"\x49\x8b\x46", b"\x49\x89\xff": b"\x49\x8b\x47"}


@dataclass(frozen=True, slots=True)
class BoringSslHook:
    address: int  # ssl_log_secret's virtual address
    offset: int  # its file offset
    s3: int  # offset of ``s3`` in ``SSL``
    client_random: int  # offset of ``client_random`` in ``SSL3_STATE``
    callers: int  # labels whose callers agreed


def _vaddr(image: ElfImage, offset: int) -> int | None:
    for segment in image.segments:
        if segment.offset <= offset < segment.offset + segment.filesz:
            return offset - segment.offset + segment.vaddr
    return None


def find_log_secret(data: bytes, image: ElfImage) -> tuple[int, int]:
    """(ssl_log_secret's virtual address, labels whose callers agree).  Raises ProfileError."""
    text = image.sections.get(".text")
    if text is None:
        raise ProfileError(f"{image.path}: no .text section")
    text_address, text_offset, text_size = text
    labels: dict[int, bytes] = {}
    for label in LABELS:
        for match in re.finditer(re.escape(b"\0" + label + b"\0"), data):
            address = _vaddr(image, match.start() + 1)
            if address is not None:
                labels[address] = label
    if not labels:
        raise ProfileError(f"{image.path}: no key log label in the file")
    votes: dict[bytes, Counter] = {}
    body = memoryview(data)[text_offset : text_offset + text_size]
    for match in _LEA_RSI.finditer(data, text_offset, text_offset + text_size):
        position = match.start() - text_offset
        if position + 7 > text_size:
            break
        target = text_address + position + 7 + struct.unpack_from("<i", body, position + 3)[0]
        label = labels.get(target)
        if label is None:
            continue
        cursor = position + 7
        while cursor < min(position + 7 + _CALL_WINDOW, text_size - 5):
            if body[cursor] == 0xE8:
                callee = text_address + cursor + 5 + struct.unpack_from("<i", body, cursor + 1)[0]
                if text_address <= callee < text_address + text_size:
                    votes.setdefault(label, Counter())[callee] += 1
                    break
            cursor += 1
    per_label = {label: counter.most_common(1)[0][0] for label, counter in votes.items()}
    if len(per_label) < 3:
        raise ProfileError(f"{image.path}: the callers of {len(per_label)} key log labels found: too few to be sure")
    tally = Counter(per_label.values())
    callee, agreeing = tally.most_common(1)[0]
    if agreeing != len(per_label):
        raise ProfileError(f"{image.path}: the key log labels' callers call {len(tally)} different functions")
    return callee, agreeing


def client_random_path(code: bytes) -> tuple[int, int] | None:
    """(D1, D2) of ``ssl->s3->client_random`` read from ``ssl_log_secret``'s first bytes."""
    for save, load in _SAVED.items():
        start = code.find(save, 0, 64)
        if start < 0:
            continue
        for match in re.finditer(re.escape(load) + rb"(.)", code[start:], re.DOTALL):
            window = code[start + match.end() : start + match.end() + 24]
            lea = window.find(b"\x48\x8d\x70")  # lea disp8(%rax),%rsi
            if lea >= 0 and lea + 3 < len(window) and b"\xba\x20\x00\x00\x00" in code[start + match.start() - 8:
                                                                                        start + match.end() + 24]:
                return match.group(1)[0], window[lea + 3]
    return None


def inspect(path: str, image: ElfImage) -> BoringSslHook | None:
    """The hook point of a binary with BoringSSL linked in; None: no BoringSSL.
    Raises ProfileError for a BoringSSL whose hook point cannot be established."""
    with open(path, "rb") as handle:
        data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if data.find(MARKER) < 0 or data.find(b"\0SERVER_TRAFFIC_SECRET_0\0") < 0:
            return None
        try:
            address, callers = find_log_secret(data, image)
            offset = image.file_offset(address)
            path_offsets = client_random_path(bytes(data[offset : offset + _BODY]))
        except (struct.error, IndexError, ValueError):
            raise ProfileError(f"{path}: malformed code around ssl_log_secret") from None
    finally:
        data.close()
    if path_offsets is None:
        raise ProfileError(f"{path}: ssl_log_secret at {address:#x} does not show where it reads the client random")
    return BoringSslHook(address, offset, path_offsets[0], path_offsets[1], callers)


def hook_point(path: str, image: ElfImage) -> KeyLogBinary | None:
    hook = inspect(path, image)
    if hook is None:
        return None
    args = ("label=+0(%si):x64[4]", "secret=+0(%dx):x64[6]", "secret_len=%cx:u64",
            f"random=+{hook.client_random:#x}(+{hook.s3:#x}(%di)):x64[4]")
    return KeyLogBinary(path, image.build_id, LIBRARY, FUNCTION, hook.offset, args, decode)


decode = decode_c_label

