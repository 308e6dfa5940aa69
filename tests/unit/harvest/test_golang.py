"""Go binaries: the pclntab's function table, the build info, the register-ABI decoder."""

from __future__ import annotations

import struct

import pytest

from bridge.errors import ProfileError
from bridge.harvest.elf import ElfImage, Segment
from bridge.harvest.golang import (
    WRITE_KEY_LOG,
    build_version,
    decode,
    find_function,
    register_abi,
)

TEXT = 0x401000


def _image(sections: dict) -> ElfImage:
    return ElfImage("go-test", "go:x", [Segment(0x400000, 0, 1 << 20, 1 << 20, 5)], {}, None, sections)


def _pclntab(names: list[str], magic: int = 0xFFFFFFF1, text: int = TEXT) -> bytes:
    """A Go 1.18+ pclntab: header, function names, functab ((entry offset, func offset) pairs), _func records."""
    nametab = b"".join(name.encode() + b"\0" for name in names)
    header_size = 8 + 8 * 8
    names_at = header_size
    pcln_at = names_at + len(nametab)
    count = len(names)
    functab = bytearray()
    funcs = bytearray()
    name_offset = 0
    funcs_at = (count + 1) * 8
    for index, name in enumerate(names):
        functab += struct.pack("<II", 0x100 * index, funcs_at + len(funcs))
        funcs += struct.pack("<Ii", 0x100 * index, name_offset) + b"\0" * 8
        name_offset += len(name) + 1
    functab += struct.pack("<II", 0x100 * count, 0)
    header = struct.pack("<IHBB", magic, 0, 1, 8) + struct.pack("<8Q", count, 0, text, names_at, 0, 0, 0, pcln_at)
    return header + nametab + bytes(functab) + bytes(funcs)


def test_a_function_is_found_by_its_exact_name_in_the_pclntab():
    names = ["runtime.main", "x" + WRITE_KEY_LOG, WRITE_KEY_LOG, "main.main"]
    blob = b"\0" * 64 + _pclntab(names)
    image = _image({".gopclntab": (0x500000, 64, len(blob) - 64)})
    assert find_function(blob, image, WRITE_KEY_LOG) == TEXT + 0x200  # not the longer name ending in it
    assert find_function(blob, image, "main.main") == TEXT + 0x300
    assert find_function(blob, image, "crypto/tls.absent") is None


def test_without_section_headers_the_pclntab_is_found_by_its_magic():
    blob = b"\x90" * 100 + _pclntab([WRITE_KEY_LOG], magic=0xFFFFFFF0)
    assert find_function(blob, _image({}), WRITE_KEY_LOG) == TEXT


def test_a_pie_pclntab_takes_the_text_section_address():
    blob = _pclntab(["a", WRITE_KEY_LOG], text=0)
    image = _image({".gopclntab": (0, 0, len(blob)), ".text": (0x1000, 0x1000, 0x10)})
    assert find_function(blob, image, WRITE_KEY_LOG) == 0x1100


def test_malformed_pclntabs_raise_the_declared_error():
    blob = _pclntab([WRITE_KEY_LOG])
    image = _image({".gopclntab": (0, 0, len(blob))})
    with pytest.raises(ProfileError):
        find_function(blob[:60], image, WRITE_KEY_LOG)
    wrong = bytearray(blob)
    wrong[:4] = struct.pack("<I", 0xFFFFFFFB)
    with pytest.raises(ProfileError, match="magic"):
        find_function(bytes(wrong), image, WRITE_KEY_LOG)
    huge = bytearray(blob)
    huge[8:16] = struct.pack("<Q", 1 << 40)
    with pytest.raises(ProfileError, match="functions"):
        find_function(bytes(huge), image, WRITE_KEY_LOG)
    truncated = blob[: len(blob) - 12]  # the last _func cut
    with pytest.raises(ProfileError):
        find_function(truncated, image, WRITE_KEY_LOG)


def test_the_build_version_from_the_inline_build_info():
    version = b"go1.19.8"
    blob = b"\0" * 16 + b"\xff Go buildinf:" + bytes([8, 2]) + b"\0" * 16 + bytes([len(version)]) + version + b"\0" * 8
    assert build_version(blob, _image({})) == "go1.19.8"
    assert build_version(b"nothing here", _image({})) is None


def test_register_abi_from_go_1_17():
    assert register_abi("go1.17") and register_abi("go1.23.4") and register_abi(None)
    assert not register_abi("go1.16.15")


def test_decode_the_register_abi_arguments():
    label = b"CLIENT_TRAFFIC_SECRET_0"
    args = {"label": label + b"\0" * (32 - len(label)), "label_len": len(label), "random": bytes(range(32)),
            "random_len": 32, "secret": bytes(48), "secret_len": 48}
    line = decode(args)
    assert line is not None and line.label == "CLIENT_TRAFFIC_SECRET_0" and line.secret == bytes(48)
    assert decode({**args, "secret": None}) is None  # the kernel could not fetch it
    assert decode({**args, "random_len": 28}) is None
    assert decode({**args, "label_len": 3}) is None  # "CLI" is no label
