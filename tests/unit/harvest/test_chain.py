"""OpenSSL 3.2+'s typed objects: a QUIC object is never read as a TLS connection."""

from __future__ import annotations

import struct

from bridge.harvest.chain import (
    MemoryFields,
    field_path,
    is_other_object,
    read_secrets,
    typed_objects,
)
from bridge.harvest.profile import Profile
from bridge.harvest.uprobes import probe_definition

FIELDS = {"version": (0x4,), "client_random": (0x40,), "session": (0x100,), "master_key": (0x100, 0x50),
          "master_key_length": (0x100, 0x8), "cipher_id": (0x90,), "client_app_traffic_secret": (0x200,),
          "server_app_traffic_secret": (0x240,), "handshake_secret": (0x280,), "exporter_master_secret": (0x2c0,)}


class Memory:
    def __init__(self, image: bytes, base: int) -> None:
        self.image, self.base = image, base

    def read(self, address: int, size: int) -> bytes:
        offset = address - self.base
        return self.image[offset : offset + size]


def _connection(kind: int) -> Memory:
    image = bytearray(0x400)
    struct.pack_into("<iI", image, 0, kind, 0x0304)
    image[0x40:0x60] = bytes(range(1, 33))
    for offset in (0x200, 0x240, 0x280, 0x2C0):
        image[offset : offset + 32] = bytes([offset >> 4]) * 32
    struct.pack_into("<I", image, 0x90, 0x03001301)
    return Memory(bytes(image), 0x10000)


def _profile(version: str) -> Profile:
    return Profile("ab" * 20, version, "libssl.so.3", FIELDS)


def test_builds_from_3_2_have_typed_objects():
    assert typed_objects(_profile("OpenSSL 3.5.4 30 Sep 2025")) and typed_objects(_profile("3.2.0"))
    assert not typed_objects(_profile("OpenSSL 3.0.22 25 Aug 2026")) and not typed_objects(_profile(None))
    assert field_path(_profile("3.6.2"), "object_type") == (0,) and field_path(_profile("3.1.8"), "object_type") is None


def test_a_quic_object_is_skipped_and_a_tls_connection_read():
    profile = _profile("OpenSSL 3.5.4 30 Sep 2025")
    tls = MemoryFields(_connection(0), profile, 0x10000)
    secrets = read_secrets(tls)
    assert secrets is not None and secrets.complete and secrets.client_random == bytes(range(1, 33))
    for kind in (1, 2, 0x80, 0x81, 0x82, 0x83):  # QUIC connection and stream (3.2), and later's with listener, domain
        quic = MemoryFields(_connection(kind), profile, 0x10000)
        assert is_other_object(quic) and read_secrets(quic) is None


def test_before_3_2_the_first_field_is_no_type():
    profile = _profile("OpenSSL 3.0.22 25 Aug 2026")
    fields = MemoryFields(_connection(0x0304), profile, 0x10000)  # 3.0: ssl->version first
    assert not is_other_object(fields)


def test_the_probe_fetches_the_object_type_only_where_there_is_one():
    assert "object_type=+0x0(%di):u32" in probe_definition("g", "e", "/lib/libssl.so.3", 0x1000, _profile("3.5.4"))
    assert "object_type" not in probe_definition("g", "e", "/lib/libssl.so.3", 0x1000, _profile("3.0.22"))
