"""BoringSSL's ssl_log_secret found in stripped code: the labels' callers, the client random's path."""

from __future__ import annotations

import struct

import pytest

from bridge.errors import ProfileError
from bridge.harvest.boringssl import LABELS, client_random_path, decode, find_log_secret
from bridge.harvest.elf import ElfImage, Segment

TEXT, RODATA = 0x1000, 0x8000


def _binary(callee_of: dict[bytes, int]) -> tuple[bytes, ElfImage]:
    """A flat image: .text at 0x1000 with ``lea label(%rip),%rsi; mov %r13,%rdi; call callee`` per label,
    .rodata at 0x8000 with the labels."""
    rodata = bytearray(b"\0")
    where = {}
    for label in callee_of:
        where[label] = RODATA + len(rodata)
        rodata += label + b"\0"
    text = bytearray()
    for label, callee in callee_of.items():
        lea_at = TEXT + len(text)
        text += b"\x48\x8d\x35" + struct.pack("<i", where[label] - (lea_at + 7)) + b"\x4c\x89\xef"
        call_at = TEXT + len(text)
        text += b"\xe8" + struct.pack("<i", callee - (call_at + 5)) + b"\x90" * 5
    text += b"\xc3" * (0x200 - len(text))
    data = bytes(TEXT) + bytes(text) + bytes(RODATA - TEXT - len(text)) + bytes(rodata)
    image = ElfImage("flat", "b" * 40, [Segment(0, 0, len(data), len(data), 5)], {}, None,
                     {".text": (TEXT, TEXT, len(text)), ".rodata": (RODATA, RODATA, len(rodata))})
    return data, image


def test_the_function_every_label_is_passed_to():
    data, image = _binary({label: TEXT + 0x180 for label in LABELS})
    assert find_log_secret(data, image) == (TEXT + 0x180, len(LABELS))


def test_callers_that_disagree_or_too_few_labels_are_refused():
    callees = {label: TEXT + 0x180 for label in LABELS}
    callees[b"EXPORTER_SECRET"] = TEXT + 0x1C0
    data, image = _binary(callees)
    with pytest.raises(ProfileError, match="different functions"):
        find_log_secret(data, image)
    data, image = _binary({label: TEXT + 0x180 for label in LABELS[:2]})
    with pytest.raises(ProfileError, match="too few"):
        find_log_secret(data, image)


def test_the_client_random_path_from_the_code_that_writes_the_line():
    # grpcio 1.66's: push r15 .. mov %rdi,%r12 ... mov 0x30(%r12),%rax; mov $0x20,%edx; mov %r14,%rdi;
    # lea 0x30(%rax),%rsi
    code = (b"\x41\x57\x41\x56\x49\x89\xfc" + b"\x90" * 40 + b"\x49\x8b\x44\x24\x30" + b"\xba\x20\x00\x00\x00"
            + b"\x4c\x89\xf7" + b"\x48\x8d\x70\x30" + b"\xe8\0\0\0\0")
    assert client_random_path(code) == (0x30, 0x30)
    assert client_random_path(code.replace(b"\xba\x20\x00\x00\x00", b"\xba\x30\x00\x00\x00")) is None
    assert client_random_path(b"\x90" * 100) is None


def test_decode():
    args = {"label": b"SERVER_TRAFFIC_SECRET_0\0xxxxxxxx", "secret": bytes(48), "secret_len": 32, "random": bytes(32)}
    line = decode(args)
    assert line is not None and line.label == "SERVER_TRAFFIC_SECRET_0" and line.secret == bytes(32)
    assert decode({**args, "random": None}) is None
