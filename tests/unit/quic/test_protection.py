"""Packet protection against RFC 9001 Appendix A and RFC 9369 Appendix A."""

from __future__ import annotations

import pytest

from bridge.errors import DecryptionError
from bridge.quic.protection import INITIAL_SUITE, PacketKeys, initial_keys, initial_secrets, retry_integrity_tag
from bridge.quic.versions import QUIC_V1, QUIC_V2
from bridge.tls.ciphersuites import cipher_suite
from bridge.tls.keyschedule import hkdf_extract
from tests.unit.quic import rfc9001 as A


def test_initial_secret_of_the_dcid_rfc9001_a1():
    assert hkdf_extract("sha256", salt=QUIC_V1.initial_salt, ikm=A.DCID) == A.INITIAL_SECRET
    assert initial_secrets(QUIC_V1, A.DCID) == (A.CLIENT_INITIAL_SECRET, A.SERVER_INITIAL_SECRET)


def test_initial_keys_rfc9001_a1():
    client, server = initial_keys(QUIC_V1, A.DCID)
    assert (client.key, client.iv, client.hp) == (A.CLIENT_KEY, A.CLIENT_IV, A.CLIENT_HP)
    assert (server.key, server.iv, server.hp) == (A.SERVER_KEY, A.SERVER_IV, A.SERVER_HP)


def test_v2_initial_keys_rfc9369_a1():
    assert initial_secrets(QUIC_V2, A.DCID) == (A.V2_CLIENT_INITIAL_SECRET, A.V2_SERVER_INITIAL_SECRET)
    client, server = initial_keys(QUIC_V2, A.DCID)
    assert (client.key, client.iv, client.hp) == (A.V2_CLIENT_KEY, A.V2_CLIENT_IV, A.V2_CLIENT_HP)
    assert (server.key, server.iv, server.hp) == (A.V2_SERVER_KEY, A.V2_SERVER_IV, A.V2_SERVER_HP)


def test_header_protection_masks_rfc9001_a2_a3():
    client, server = initial_keys(QUIC_V1, A.DCID)
    assert client.mask(A.CLIENT_SAMPLE) == A.CLIENT_MASK
    assert server.mask(A.SERVER_SAMPLE) == A.SERVER_MASK


def test_client_initial_payload_protection_rfc9001_a2():
    client, _ = initial_keys(QUIC_V1, A.DCID)
    payload = A.CLIENT_CRYPTO_FRAME + bytes(A.CLIENT_PAYLOAD_LENGTH - len(A.CLIENT_CRYPTO_FRAME))
    sealed = client.seal(2, A.CLIENT_UNPROTECTED_HEADER, payload)
    assert sealed[:16] == A.CLIENT_SAMPLE
    assert sealed == A.CLIENT_INITIAL[len(A.CLIENT_UNPROTECTED_HEADER):]
    assert client.open(2, A.CLIENT_UNPROTECTED_HEADER, sealed) == payload


def test_a_changed_byte_does_not_authenticate():
    client, _ = initial_keys(QUIC_V1, A.DCID)
    ciphertext = bytearray(A.CLIENT_INITIAL[len(A.CLIENT_UNPROTECTED_HEADER):])
    ciphertext[100] ^= 1
    with pytest.raises(DecryptionError):
        client.open(2, A.CLIENT_UNPROTECTED_HEADER, bytes(ciphertext))
    # the server's keys are not the client's
    _, server = initial_keys(QUIC_V1, A.DCID)
    with pytest.raises(DecryptionError):
        server.open(2, A.CLIENT_UNPROTECTED_HEADER, A.CLIENT_INITIAL[len(A.CLIENT_UNPROTECTED_HEADER):])


def test_chacha20_keys_mask_nonce_and_key_update_rfc9001_a5():
    keys = PacketKeys(QUIC_V1, cipher_suite(0x1303), A.CHACHA_SECRET)
    assert (keys.key, keys.iv, keys.hp) == (A.CHACHA_KEY, A.CHACHA_IV, A.CHACHA_HP)
    assert keys.nonce(A.CHACHA_PN) == A.CHACHA_NONCE
    assert keys.mask(A.CHACHA_SAMPLE) == A.CHACHA_MASK
    assert keys.open(A.CHACHA_PN, A.CHACHA_UNPROTECTED_HEADER, A.CHACHA_PACKET[4:]) == b"\x01"
    updated = keys.next()
    assert updated.secret == A.CHACHA_KU
    assert updated.hp == keys.hp  # header protection keys do not change (RFC 9001 §6)
    assert updated.key != keys.key


def test_retry_integrity_tag_rfc9001_a4():
    assert retry_integrity_tag(QUIC_V1, A.DCID, A.RETRY[:-16]) == A.RETRY[-16:]


def test_v2_labels_differ_from_v1():
    v1 = PacketKeys(QUIC_V1, INITIAL_SUITE, A.CLIENT_INITIAL_SECRET)
    v2 = PacketKeys(QUIC_V2, INITIAL_SUITE, A.CLIENT_INITIAL_SECRET)
    assert v1.key != v2.key and v1.hp != v2.hp
    assert v1.next().secret != v2.next().secret


def test_a_tls_only_suite_is_refused():
    with pytest.raises(DecryptionError):
        PacketKeys(QUIC_V1, cipher_suite(0xC02F), A.CLIENT_INITIAL_SECRET)
