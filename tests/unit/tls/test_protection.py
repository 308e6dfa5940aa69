"""Record protection's steady-state call, ``open_application_data``: records sealed
here with cryptography's AEADs (RFC 8446 §5.2 and RFC 5288 nonces and AADs, built
independently of the module), and RFC 8448's server flight."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from bridge.tls.ciphersuites import cipher_suite
from bridge.tls.keyschedule import KeyMaterial12, traffic_keys13
from bridge.tls.protection import RecordDecryptor12, RecordDecryptor13
from tests.unit.tls.test_keyschedule import SERVER_FLIGHT_RECORD, SERVER_HANDSHAKE_TRAFFIC_SECRET, SUITE

SECRET = bytes(range(32))


def _seal13(suite_id: int, seq: int, inner: bytes) -> bytes:
    """A TLS 1.3 record: inner plaintext (content, type, padding) sealed under SECRET's keys."""
    suite = cipher_suite(suite_id)
    keys = traffic_keys13(suite, SECRET)
    nonce = bytes(a ^ b for a, b in zip(keys.iv, seq.to_bytes(len(keys.iv), "big")))
    header = b"\x17\x03\x03" + (len(inner) + 16).to_bytes(2, "big")
    aead = AESGCM(keys.key) if suite_id != 0x1303 else ChaCha20Poly1305(keys.key)
    return header + aead.encrypt(nonce, inner, header)


@pytest.mark.parametrize("suite_id", [0x1301, 0x1303])
def test_records_of_application_data_open_in_sequence(suite_id: int) -> None:
    decryptor = RecordDecryptor13(cipher_suite(suite_id), SECRET)
    for seq, inner, expected in [(0, b"GET / HTTP/1.1\r\n\x17", b"GET / HTTP/1.1\r\n"),
                                 (1, b"body\x00\x17\x00\x00\x00", b"body\x00"),  # padding, and a zero of the data
                                 (2, b"\x17", b"")]:  # an empty record
        record = _seal13(suite_id, seq, inner)
        opened = decryptor.open_application_data(memoryview(record)[:5], memoryview(record)[5:])
        assert opened == expected + b"\x17"  # the inner content type trails: TRAILER bytes, which the caller drops
        assert opened[len(opened) - RecordDecryptor13.TRAILER:] == b"\x17"
        assert decryptor.seq == seq + 1


@pytest.mark.parametrize("inner", [b"\x00\x00", b"key update\x16", b"\x01\x00\x15"])
def test_anything_else_is_declined_and_changes_nothing(inner: bytes) -> None:
    decryptor = RecordDecryptor13(SUITE, SECRET)
    record = _seal13(0x1301, 0, inner)
    assert decryptor.open_application_data(record[:5], record[5:]) is None
    assert decryptor.seq == 0
    content_type = inner.rstrip(b"\x00")[-1:]
    if content_type:  # the general call says what it is
        assert decryptor.decrypt(23, 0x0303, record[5:])[0] == content_type[0]


def test_a_tag_that_does_not_match_is_declined() -> None:
    decryptor = RecordDecryptor13(SUITE, SECRET)
    record = bytearray(_seal13(0x1301, 0, b"data\x17"))
    record[-1] ^= 1
    assert decryptor.open_application_data(bytes(record[:5]), bytes(record[5:])) is None
    record = _seal13(0x1301, 1, b"data\x17")  # the next sequence number: not this one's
    assert decryptor.open_application_data(record[:5], record[5:]) is None
    assert decryptor.seq == 0


def test_the_rfc8448_server_flight_is_handshake_data_not_application_data() -> None:
    decryptor = RecordDecryptor13(SUITE, SERVER_HANDSHAKE_TRAFFIC_SECRET)
    assert decryptor.open_application_data(SERVER_FLIGHT_RECORD[:5], SERVER_FLIGHT_RECORD[5:]) is None
    assert decryptor.seq == 0


def test_tls12_gcm_and_chacha20() -> None:
    keys = KeyMaterial12(mac_key=b"", key=bytes(16), iv=bytes(range(4)))
    gcm = RecordDecryptor12(cipher_suite(0xC02F), keys)
    for seq in range(2):
        explicit = (1000 + seq).to_bytes(8, "big")
        aad = seq.to_bytes(8, "big") + b"\x17\x03\x03" + (5).to_bytes(2, "big")
        fragment = explicit + AESGCM(keys.key).encrypt(keys.iv + explicit, b"hello", aad)
        header = b"\x17\x03\x03" + len(fragment).to_bytes(2, "big")
        assert gcm.open_application_data(header, fragment) == b"hello" and RecordDecryptor12.TRAILER == 0
    assert gcm.open_application_data(header, fragment) is None and gcm.seq == 2  # replayed: seq 1's
    keys = KeyMaterial12(mac_key=b"", key=bytes(32), iv=bytes(12))
    chacha = RecordDecryptor12(cipher_suite(0xCCA8), keys)
    aad = bytes(8) + b"\x17\x03\x03" + (2).to_bytes(2, "big")
    fragment = ChaCha20Poly1305(keys.key).encrypt(keys.iv, b"hi", aad)
    assert chacha.open_application_data(b"\x17\x03\x03" + len(fragment).to_bytes(2, "big"), fragment) == b"hi"


def test_cbc_suites_have_no_steady_state_call() -> None:
    keys = KeyMaterial12(mac_key=bytes(20), key=bytes(16), iv=bytes(16))
    assert RecordDecryptor12(cipher_suite(0xC013), keys).open_application_data(b"\x17\x03\x03\x00\x40", bytes(64)) is None
