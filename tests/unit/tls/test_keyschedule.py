"""Key schedule tests against published vectors.

Sources:

* RFC 8448 "Example Handshake Traces for TLS 1.3", §3 "Simple 1-RTT Handshake"
  (TLS_AES_128_GCM_SHA256).  Every constant below is transcribed from that section
  (the RFC prints hex with spaces; ``hexbytes`` strips them), or imported from
  tests/support/rfc8448.py where tests/test_rfc8448_connection.py needs it too
  (HANDSHAKE_SECRET, the handshake and application traffic secrets,
  SERVER_FLIGHT_RECORD).  The transcript hashes are *computed* here from the RFC's
  handshake messages and then checked against the ``hash`` lines the RFC prints, so a
  typo in either shows up.
* RFC 5246 §5 (the TLS 1.2 PRF): the P_SHA256 / P_SHA384 vectors posted to the
  IETF TLS WG list (https://www.ietf.org/mail-archive/web/tls/current/msg03416.html),
  as carried by the test suites of GnuTLS and BearSSL, plus an independent
  re-implementation of P_hash on top of the ``cryptography`` package's HMAC.
* RFC 5869 appendix A (HKDF test cases 1 and 3).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from bridge.tls.ciphersuites import cipher_suite
from bridge.tls.keyschedule import (
    application_traffic_secrets,
    derive_secret,
    empty_hash,
    handshake_traffic_secrets,
    hkdf_expand,
    hkdf_expand_label,
    hkdf_extract,
    master_secret13,
    next_traffic_secret,
    prf12,
    traffic_keys13,
)
from bridge.tls.protection import RecordDecryptor13
from tests.support.rfc8448 import (
    CLIENT_APPLICATION_TRAFFIC_SECRET_0,
    CLIENT_HANDSHAKE_TRAFFIC_SECRET,
    HANDSHAKE_SECRET,
    SERVER_APPLICATION_TRAFFIC_SECRET_0,
    SERVER_FLIGHT_RECORD,
    SERVER_HANDSHAKE_TRAFFIC_SECRET,
    hexbytes,
)


SUITE = cipher_suite(0x1301)  # TLS_AES_128_GCM_SHA256, the suite of RFC 8448 §3

# =============================================================================
# RFC 8448 §3 "Simple 1-RTT Handshake" — inputs
# =============================================================================

# RFC 8448 §3, "{client} create an ephemeral x25519 key pair": private key
CLIENT_X25519_PRIVATE = hexbytes(
    """49 af 42 ba 7f 79 94 85 2d 71 3e f2 78 4b cb ca a7 91 1d e2 6a dc 56 42
    cb 63 45 40 e7 ea 50 05"""
)
# RFC 8448 §3, "{client} create an ephemeral x25519 key pair": public key
CLIENT_X25519_PUBLIC = hexbytes(
    """99 38 1d e5 60 e4 bd 43 d2 3d 8e 43 5a 7d ba fe b3 c0 6e 51 c1 3c ae 4d
    54 13 69 1e 52 9a af 2c"""
)
# RFC 8448 §3, "{server} create an ephemeral x25519 key pair": private key
SERVER_X25519_PRIVATE = hexbytes(
    """b1 58 0e ea df 6d d5 89 b8 ef 4f 2d 56 52 57 8c c8 10 e9 98 01 91 ec 8d
    05 83 08 ce a2 16 a2 1e"""
)
# RFC 8448 §3, "{server} create an ephemeral x25519 key pair": public key
SERVER_X25519_PUBLIC = hexbytes(
    """c9 82 88 76 11 20 95 fe 66 76 2b db f7 c6 72 e1 56 d6 cc 25 3b 83 3d f1
    dd 69 b1 b0 4e 75 1f 0f"""
)

# RFC 8448 §3, "{client} construct a ClientHello handshake message": ClientHello (196 octets)
CLIENT_HELLO = hexbytes(
    """01 00 00 c0 03 03 cb 34 ec b1 e7 81 63 ba 1c 38 c6 da cb 19 6a 6d ff a2
    1a 8d 99 12 ec 18 a2 ef 62 83 02 4d ec e7 00 00 06 13 01 13 03 13 02 01
    00 00 91 00 00 00 0b 00 09 00 00 06 73 65 72 76 65 72 ff 01 00 01 00 00
    0a 00 14 00 12 00 1d 00 17 00 18 00 19 01 00 01 01 01 02 01 03 01 04 00
    23 00 00 00 33 00 26 00 24 00 1d 00 20 99 38 1d e5 60 e4 bd 43 d2 3d 8e
    43 5a 7d ba fe b3 c0 6e 51 c1 3c ae 4d 54 13 69 1e 52 9a af 2c 00 2b 00
    03 02 03 04 00 0d 00 20 00 1e 04 03 05 03 06 03 02 03 08 04 08 05 08 06
    04 01 05 01 06 01 02 01 04 02 05 02 06 02 02 02 00 2d 00 02 01 01 00 1c
    00 02 40 01"""
)

# RFC 8448 §3, "{server} construct a ServerHello handshake message": ServerHello (90 octets)
SERVER_HELLO = hexbytes(
    """02 00 00 56 03 03 a6 af 06 a4 12 18 60 dc 5e 6e 60 24 9c d3 4c 95 93 0c
    8a c5 cb 14 34 da c1 55 77 2e d3 e2 69 28 00 13 01 00 00 2e 00 33 00 24
    00 1d 00 20 c9 82 88 76 11 20 95 fe 66 76 2b db f7 c6 72 e1 56 d6 cc 25
    3b 83 3d f1 dd 69 b1 b0 4e 75 1f 0f 00 2b 00 02 03 04"""
)

# RFC 8448 §3, "{server} construct an EncryptedExtensions handshake message" (40 octets)
ENCRYPTED_EXTENSIONS = hexbytes(
    """08 00 00 24 00 22 00 0a 00 14 00 12 00 1d 00 17 00 18 00 19 01 00 01 01
    01 02 01 03 01 04 00 1c 00 02 40 01 00 00 00 00"""
)

# RFC 8448 §3, "{server} construct a Certificate handshake message": Certificate (445 octets)
CERTIFICATE = hexbytes(
    """0b 00 01 b9 00 00 01 b5 00 01 b0 30 82 01 ac 30 82 01 15 a0 03 02 01 02
    02 01 02 30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00 30 0e 31 0c 30 0a
    06 03 55 04 03 13 03 72 73 61 30 1e 17 0d 31 36 30 37 33 30 30 31 32 33
    35 39 5a 17 0d 32 36 30 37 33 30 30 31 32 33 35 39 5a 30 0e 31 0c 30 0a
    06 03 55 04 03 13 03 72 73 61 30 81 9f 30 0d 06 09 2a 86 48 86 f7 0d 01
    01 01 05 00 03 81 8d 00 30 81 89 02 81 81 00 b4 bb 49 8f 82 79 30 3d 98
    08 36 39 9b 36 c6 98 8c 0c 68 de 55 e1 bd b8 26 d3 90 1a 24 61 ea fd 2d
    e4 9a 91 d0 15 ab bc 9a 95 13 7a ce 6c 1a f1 9e aa 6a f9 8c 7c ed 43 12
    09 98 e1 87 a8 0e e0 cc b0 52 4b 1b 01 8c 3e 0b 63 26 4d 44 9a 6d 38 e2
    2a 5f da 43 08 46 74 80 30 53 0e f0 46 1c 8c a9 d9 ef bf ae 8e a6 d1 d0
    3e 2b d1 93 ef f0 ab 9a 80 02 c4 74 28 a6 d3 5a 8d 88 d7 9f 7f 1e 3f 02
    03 01 00 01 a3 1a 30 18 30 09 06 03 55 1d 13 04 02 30 00 30 0b 06 03 55
    1d 0f 04 04 03 02 05 a0 30 0d 06 09 2a 86 48 86 f7 0d 01 01 0b 05 00 03
    81 81 00 85 aa d2 a0 e5 b9 27 6b 90 8c 65 f7 3a 72 67 17 06 18 a5 4c 5f
    8a 7b 33 7d 2d f7 a5 94 36 54 17 f2 ea e8 f8 a5 8c 8f 81 72 f9 31 9c f3
    6b 7f d6 c5 5b 80 f2 1a 03 01 51 56 72 60 96 fd 33 5e 5e 67 f2 db f1 02
    70 2e 60 8c ca e6 be c1 fc 63 a4 2a 99 be 5c 3e b7 10 7c 3c 54 e9 b9 eb
    2b d5 20 3b 1c 3b 84 e0 a8 b2 f7 59 40 9b a3 ea c9 d9 1d 40 2d cc 0c c8
    f8 96 12 29 ac 91 87 b4 2b 4d e1 00 00"""
)

# RFC 8448 §3, "{server} construct a CertificateVerify handshake message" (136 octets)
CERTIFICATE_VERIFY = hexbytes(
    """0f 00 00 84 08 04 00 80 5a 74 7c 5d 88 fa 9b d2 e5 5a b0 85 a6 10 15 b7
    21 1f 82 4c d4 84 14 5a b3 ff 52 f1 fd a8 47 7b 0b 7a bc 90 db 78 e2 d3
    3a 5c 14 1a 07 86 53 fa 6b ef 78 0c 5e a2 48 ee aa a7 85 c4 f3 94 ca b6
    d3 0b be 8d 48 59 ee 51 1f 60 29 57 b1 54 11 ac 02 76 71 45 9e 46 44 5c
    9e a5 8c 18 1e 81 8e 95 b8 c3 fb 0b f3 27 84 09 d3 be 15 2a 3d a5 04 3e
    06 3d da 65 cd f5 ae a2 0d 53 df ac d4 2f 74 f3"""
)

# RFC 8448 §3, "{server} construct a Finished handshake message": Finished (36 octets)
SERVER_FINISHED = hexbytes(
    """14 00 00 20 9b 9b 14 1d 90 63 37 fb d2 cb dc e7 1d f4 de da 4a b4 2c 30
    95 72 cb 7f ff ee 54 54 b7 8f 07 18"""
)

# RFC 8448 §3, "{client} construct a Finished handshake message": Finished (36 octets)
CLIENT_FINISHED = hexbytes(
    """14 00 00 20 a8 ec 43 6d 67 76 34 ae 52 5a c1 fc eb e1 1a 03 9e c1 76 94
    fa c6 e9 85 27 b6 42 f2 ed d5 ce 61"""
)

# =============================================================================
# RFC 8448 §3 — expected intermediate values
# =============================================================================

# RFC 8448 §3, "{server} extract secret "early"": secret
EARLY_SECRET = hexbytes(
    """33 ad 0a 1c 60 7e c0 3b 09 e6 cd 98 93 68 0c e2 10 ad f3 00 aa 1f 26 60
    e1 b2 2e 10 f1 70 f9 2a"""
)
# RFC 8448 §3, "{server} derive secret for handshake "tls13 derived"": expanded
DERIVED_FOR_HANDSHAKE = hexbytes(
    """6f 26 15 a1 08 c7 02 c5 67 8f 54 fc 9d ba b6 97 16 c0 76 18 9c 48 25 0c
    eb ea c3 57 6c 36 11 ba"""
)
# RFC 8448 §3, "{server} extract secret "handshake"": IKM (the x25519 shared secret)
ECDHE_SHARED_SECRET = hexbytes(
    """8b d4 05 4f b5 5b 9d 63 fd fb ac f9 f0 4b 9f 0d 35 e6 d6 3f 53 75 63 ef
    d4 62 72 90 0f 89 49 2d"""
)
# RFC 8448 §3, "{server} derive secret "tls13 c hs traffic"": hash
# (= Transcript-Hash(ClientHello, ServerHello))
HELLO_HASH = hexbytes(
    """86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed d6 b4 3f 2c a3 e6 e9 5f
    02 ed 06 3c f0 e1 ca d8"""
)
# RFC 8448 §3, "{server} derive secret "tls13 c hs traffic"": info
C_HS_TRAFFIC_INFO = hexbytes(
    """00 20 12 74 6c 73 31 33 20 63 20 68 73 20 74 72 61 66 66 69 63 20 86 0c
    06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed d6 b4 3f 2c a3 e6 e9 5f 02 ed
    06 3c f0 e1 ca d8"""
)
# RFC 8448 §3, "{server} derive secret for master "tls13 derived"": expanded
DERIVED_FOR_MASTER = hexbytes(
    """43 de 77 e0 c7 77 13 85 9a 94 4d b9 db 25 90 b5 31 90 a6 5b 3e e2 e4 f1
    2d d7 a0 bb 7c e2 54 b4"""
)
# RFC 8448 §3, "{server} extract secret "master"": secret
MASTER_SECRET = hexbytes(
    """18 df 06 84 3d 13 a0 8b f2 a4 49 84 4c 5f 8a 47 80 01 bc 4d 4c 62 79 84
    d5 a4 1d a8 d0 40 29 19"""
)
# RFC 8448 §3, "{server} derive write traffic keys for handshake data": key expanded
SERVER_HANDSHAKE_KEY = hexbytes("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc")
# RFC 8448 §3, "{server} derive write traffic keys for handshake data": iv expanded
SERVER_HANDSHAKE_IV = hexbytes("5d 31 3e b2 67 12 76 ee 13 00 0b 30")
# RFC 8448 §3, "{server} derive read traffic keys for handshake data": key / iv expanded
CLIENT_HANDSHAKE_KEY = hexbytes("db fa a6 93 d1 76 2c 5b 66 6a f5 d9 50 25 8d 01")
CLIENT_HANDSHAKE_IV = hexbytes("5b d3 c7 1b 83 6e 0b 76 bb 73 26 5f")
# RFC 8448 §3, "{server} calculate finished "tls13 finished"": expanded (finished_key)
# and finished (verify_data)
SERVER_FINISHED_KEY = hexbytes(
    """00 8d 3b 66 f8 16 ea 55 9f 96 b5 37 e8 85 c3 1f c0 68 bf 49 2c 65 2f 01
    f2 88 a1 d8 cd c1 9f c8"""
)
SERVER_VERIFY_DATA = hexbytes(
    """9b 9b 14 1d 90 63 37 fb d2 cb dc e7 1d f4 de da 4a b4 2c 30 95 72 cb 7f
    ff ee 54 54 b7 8f 07 18"""
)
# RFC 8448 §3, "{server} derive secret "tls13 c ap traffic"": hash
# (= Transcript-Hash(ClientHello .. server Finished))
SERVER_FINISHED_HASH = hexbytes(
    """96 08 10 2a 0f 1c cc 6d b6 25 0b 7b 7e 41 7b 1a 00 0e aa da 3d aa e4 77
    7a 76 86 c9 ff 83 df 13"""
)
# RFC 8448 §3, "{server} derive secret "tls13 exp master"": expanded
EXPORTER_MASTER_SECRET = hexbytes(
    """fe 22 f8 81 17 6e da 18 eb 8f 44 52 9e 67 92 c5 0c 9a 3f 89 45 2f 68 d8
    ae 31 1b 43 09 d3 cf 50"""
)
# RFC 8448 §3, "{server} derive write traffic keys for application data": key / iv expanded
SERVER_APPLICATION_KEY = hexbytes("9f 02 28 3b 6c 9c 07 ef c2 6b b9 f2 ac 92 e3 56")
SERVER_APPLICATION_IV = hexbytes("cf 78 2b 88 dd 83 54 9a ad f1 e9 84")
# RFC 8448 §3, "{client} derive write traffic keys for application data": key / iv expanded
CLIENT_APPLICATION_KEY = hexbytes("17 42 2d da 59 6e d5 d9 ac d8 90 e3 c6 3f 50 51")
CLIENT_APPLICATION_IV = hexbytes("5b 78 92 3d ee 08 57 90 33 e5 23 d9")
# RFC 8448 §3, "{client} derive secret "tls13 res master"": hash
# (= Transcript-Hash(ClientHello .. client Finished)) and expanded
CLIENT_FINISHED_HASH = hexbytes(
    """20 91 45 a9 6e e8 e2 a1 22 ff 81 00 47 cc 95 26 84 65 8d 60 49 e8 64 29
    42 6d b8 7c 54 ad 14 3d"""
)
RESUMPTION_MASTER_SECRET = hexbytes(
    """7d f2 35 f2 03 1d 2a 05 12 87 d0 2b 02 41 b0 bf da f8 6c c8 56 23 1f 2d
    5a ba 46 c4 34 ec 19 6c"""
)

SERVER_FLIGHT = ENCRYPTED_EXTENSIONS + CERTIFICATE + CERTIFICATE_VERIFY + SERVER_FINISHED


def test_transcribed_lengths_match_the_rfc() -> None:
    # The RFC states the octet counts; catches dropped or doubled bytes.
    assert len(CLIENT_HELLO) == 196
    assert len(SERVER_HELLO) == 90
    assert len(ENCRYPTED_EXTENSIONS) == 40
    assert len(CERTIFICATE) == 445
    assert len(CERTIFICATE_VERIFY) == 136
    assert len(SERVER_FINISHED) == 36
    assert len(CLIENT_FINISHED) == 36
    assert len(SERVER_FLIGHT_RECORD) == 679
    for secret in (
        EARLY_SECRET,
        HANDSHAKE_SECRET,
        HELLO_HASH,
        CLIENT_HANDSHAKE_TRAFFIC_SECRET,
        SERVER_HANDSHAKE_TRAFFIC_SECRET,
        MASTER_SECRET,
        SERVER_FINISHED_HASH,
        CLIENT_APPLICATION_TRAFFIC_SECRET_0,
        SERVER_APPLICATION_TRAFFIC_SECRET_0,
    ):
        assert len(secret) == 32


# --- transcript hashes (computed from the messages, checked against the RFC) -----


def test_hello_transcript_hash() -> None:
    assert hashlib.sha256(CLIENT_HELLO + SERVER_HELLO).digest() == HELLO_HASH


def test_server_finished_transcript_hash() -> None:
    assert hashlib.sha256(CLIENT_HELLO + SERVER_HELLO + SERVER_FLIGHT).digest() == SERVER_FINISHED_HASH


def test_client_finished_transcript_hash() -> None:
    transcript = CLIENT_HELLO + SERVER_HELLO + SERVER_FLIGHT + CLIENT_FINISHED
    assert hashlib.sha256(transcript).digest() == CLIENT_FINISHED_HASH


def test_server_flight_record_decrypts_to_the_rfc_messages() -> None:
    """The encrypted flight, opened with the RFC's server handshake key/iv
    (cryptography's AESGCM, independent of bridge/), is EE..Finished + inner type 22."""
    header, body = SERVER_FLIGHT_RECORD[:5], SERVER_FLIGHT_RECORD[5:]
    inner = AESGCM(SERVER_HANDSHAKE_KEY).decrypt(SERVER_HANDSHAKE_IV, body, header)  # seq 0: nonce = iv
    assert inner == SERVER_FLIGHT + b"\x16"


# --- the key schedule, step by step (RFC 8446 §7.1) -------------------------------


def test_x25519_shared_secret_is_the_handshake_ikm() -> None:
    client = X25519PrivateKey.from_private_bytes(CLIENT_X25519_PRIVATE)
    server = X25519PrivateKey.from_private_bytes(SERVER_X25519_PRIVATE)
    assert client.public_key().public_bytes_raw() == CLIENT_X25519_PUBLIC
    assert server.public_key().public_bytes_raw() == SERVER_X25519_PUBLIC
    assert client.exchange(X25519PublicKey.from_public_bytes(SERVER_X25519_PUBLIC)) == ECDHE_SHARED_SECRET
    assert server.exchange(X25519PublicKey.from_public_bytes(CLIENT_X25519_PUBLIC)) == ECDHE_SHARED_SECRET


def test_early_secret() -> None:
    # salt 0 (empty → HashLen zeros), IKM = 32 zero octets (no PSK)
    assert hkdf_extract("sha256", salt=b"", ikm=bytes(32)) == EARLY_SECRET
    assert hkdf_extract("sha256", salt=bytes(32), ikm=bytes(32)) == EARLY_SECRET


def test_empty_hash() -> None:
    # RFC 8448 §3 "derive secret for handshake "tls13 derived"": hash (SHA-256 of "")
    assert empty_hash("sha256") == hexbytes(
        "e3 b0 c4 42 98 fc 1c 14 9a fb f4 c8 99 6f b9 24 27 ae 41 e4 64 9b 93 4c a4 95 99 1b 78 52 b8 55"
    )


def test_derived_and_handshake_secret() -> None:
    derived = derive_secret("sha256", EARLY_SECRET, b"derived", empty_hash("sha256"))
    assert derived == DERIVED_FOR_HANDSHAKE
    assert hkdf_extract("sha256", salt=derived, ikm=ECDHE_SHARED_SECRET) == HANDSHAKE_SECRET


def test_hkdf_expand_label_info_layout() -> None:
    """HkdfLabel encoding: derive_secret == HKDF-Expand(PRK, info printed in the RFC)."""
    expected = hkdf_expand("sha256", HANDSHAKE_SECRET, C_HS_TRAFFIC_INFO, 32)
    assert expected == CLIENT_HANDSHAKE_TRAFFIC_SECRET
    assert hkdf_expand_label("sha256", HANDSHAKE_SECRET, b"c hs traffic", HELLO_HASH, 32) == expected


def test_handshake_traffic_secrets() -> None:
    hello_hash = hashlib.sha256(CLIENT_HELLO + SERVER_HELLO).digest()
    client, server = handshake_traffic_secrets(SUITE, handshake_secret=HANDSHAKE_SECRET, hello_hash=hello_hash)
    assert client == CLIENT_HANDSHAKE_TRAFFIC_SECRET
    assert server == SERVER_HANDSHAKE_TRAFFIC_SECRET


def test_handshake_traffic_keys() -> None:
    server = traffic_keys13(SUITE, SERVER_HANDSHAKE_TRAFFIC_SECRET)
    assert server.key == SERVER_HANDSHAKE_KEY
    assert server.iv == SERVER_HANDSHAKE_IV
    client = traffic_keys13(SUITE, CLIENT_HANDSHAKE_TRAFFIC_SECRET)
    assert client.key == CLIENT_HANDSHAKE_KEY
    assert client.iv == CLIENT_HANDSHAKE_IV


def test_server_finished_verify_data() -> None:
    finished_key = hkdf_expand_label("sha256", SERVER_HANDSHAKE_TRAFFIC_SECRET, b"finished", b"", 32)
    assert finished_key == SERVER_FINISHED_KEY
    mac = HMAC(finished_key, hashes.SHA256())
    mac.update(hashlib.sha256(CLIENT_HELLO + SERVER_HELLO + ENCRYPTED_EXTENSIONS + CERTIFICATE + CERTIFICATE_VERIFY).digest())
    assert mac.finalize() == SERVER_VERIFY_DATA
    assert SERVER_FINISHED[4:] == SERVER_VERIFY_DATA


def test_master_secret() -> None:
    assert derive_secret("sha256", HANDSHAKE_SECRET, b"derived", empty_hash("sha256")) == DERIVED_FOR_MASTER
    assert master_secret13(SUITE, handshake_secret=HANDSHAKE_SECRET) == MASTER_SECRET


def test_application_traffic_secrets() -> None:
    server_finished_hash = hashlib.sha256(CLIENT_HELLO + SERVER_HELLO + SERVER_FLIGHT).digest()
    client, server = application_traffic_secrets(
        SUITE, handshake_secret=HANDSHAKE_SECRET, server_finished_hash=server_finished_hash
    )
    assert client == CLIENT_APPLICATION_TRAFFIC_SECRET_0
    assert server == SERVER_APPLICATION_TRAFFIC_SECRET_0


def test_exporter_and_resumption_master_secrets() -> None:
    assert derive_secret("sha256", MASTER_SECRET, b"exp master", SERVER_FINISHED_HASH) == EXPORTER_MASTER_SECRET
    assert derive_secret("sha256", MASTER_SECRET, b"res master", CLIENT_FINISHED_HASH) == RESUMPTION_MASTER_SECRET


def test_application_traffic_keys() -> None:
    server = traffic_keys13(SUITE, SERVER_APPLICATION_TRAFFIC_SECRET_0)
    assert (server.key, server.iv) == (SERVER_APPLICATION_KEY, SERVER_APPLICATION_IV)
    client = traffic_keys13(SUITE, CLIENT_APPLICATION_TRAFFIC_SECRET_0)
    assert (client.key, client.iv) == (CLIENT_APPLICATION_KEY, CLIENT_APPLICATION_IV)


def test_record_decryptor13_opens_the_server_flight() -> None:
    decryptor = RecordDecryptor13(SUITE, SERVER_HANDSHAKE_TRAFFIC_SECRET)
    content_type, version, length = SERVER_FLIGHT_RECORD[0], int.from_bytes(SERVER_FLIGHT_RECORD[1:3], "big"), int.from_bytes(SERVER_FLIGHT_RECORD[3:5], "big")
    assert length == len(SERVER_FLIGHT_RECORD) - 5
    inner_type, plaintext = decryptor.decrypt(content_type, version, SERVER_FLIGHT_RECORD[5:])
    assert inner_type == 22
    assert plaintext == SERVER_FLIGHT
    assert decryptor.seq == 1


def test_secrets_are_not_in_reprs() -> None:
    keys = traffic_keys13(SUITE, SERVER_HANDSHAKE_TRAFFIC_SECRET)
    assert SERVER_HANDSHAKE_KEY.hex() not in repr(keys)
    assert SERVER_HANDSHAKE_IV.hex() not in repr(keys)


# --- next_traffic_secret (RFC 8446 §7.2) — no published vector; an independent
# HKDF-Expand-Label built on cryptography's HKDFExpand is the reference. -----------


def _reference_expand_label(algorithm: hashes.HashAlgorithm, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context
    return HKDFExpand(algorithm, length, info).derive(secret)


def test_next_traffic_secret_sha256() -> None:
    expected = _reference_expand_label(hashes.SHA256(), SERVER_APPLICATION_TRAFFIC_SECRET_0, b"traffic upd", b"", 32)
    assert next_traffic_secret(SUITE, SERVER_APPLICATION_TRAFFIC_SECRET_0) == expected
    assert expected not in (SERVER_APPLICATION_TRAFFIC_SECRET_0, CLIENT_APPLICATION_TRAFFIC_SECRET_0)


def test_next_traffic_secret_sha384() -> None:
    suite = cipher_suite(0x1302)
    secret = bytes(range(48))
    expected = _reference_expand_label(hashes.SHA384(), secret, b"traffic upd", b"", 48)
    assert next_traffic_secret(suite, secret) == expected
    keys = traffic_keys13(suite, secret)
    assert keys.key == _reference_expand_label(hashes.SHA384(), secret, b"key", b"", 32)
    assert keys.iv == _reference_expand_label(hashes.SHA384(), secret, b"iv", b"", 12)


# =============================================================================
# HKDF (RFC 5869 appendix A)
# =============================================================================

# RFC 5869 A.1 "Test Case 1" (SHA-256)
RFC5869_TC1_IKM = bytes([0x0B]) * 22
RFC5869_TC1_SALT = bytes(range(0x0D))
RFC5869_TC1_INFO = bytes(range(0xF0, 0xFA))
RFC5869_TC1_PRK = hexbytes("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
RFC5869_TC1_OKM = hexbytes("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
# RFC 5869 A.3 "Test Case 3" (SHA-256, zero-length salt and info)
RFC5869_TC3_OKM = hexbytes("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")


def test_hkdf_rfc5869_case_1() -> None:
    prk = hkdf_extract("sha256", salt=RFC5869_TC1_SALT, ikm=RFC5869_TC1_IKM)
    assert prk == RFC5869_TC1_PRK
    assert hkdf_expand("sha256", prk, RFC5869_TC1_INFO, 42) == RFC5869_TC1_OKM


def test_hkdf_rfc5869_case_3_empty_salt() -> None:
    prk = hkdf_extract("sha256", salt=b"", ikm=RFC5869_TC1_IKM)
    assert hkdf_expand("sha256", prk, b"", 42) == RFC5869_TC3_OKM


# =============================================================================
# TLS 1.2 PRF (RFC 5246 §5)
# =============================================================================

# IETF TLS WG list, msg03416 ("TLS 1.2 PRF test vectors"), P_SHA256 case
PRF_SHA256_SECRET = hexbytes("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35")
PRF_SHA256_SEED = hexbytes("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c")
PRF_SHA256_OUTPUT = hexbytes(
    """e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95
    32 9b 52 d4 e6 1e db 5a 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af
    0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab 4f bc 91 66 6e 9d ef 9b
    97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
    87 34 7b 66"""
)
# IETF TLS WG list, msg03416, P_SHA384 case
PRF_SHA384_SECRET = hexbytes("b8 0b 73 3d 6c ee fc dc 71 56 6e a4 8e 55 67 df")
PRF_SHA384_SEED = hexbytes("cd 66 5c f6 a8 44 7d d6 ff 8b 27 55 5e db 74 65")
PRF_SHA384_OUTPUT = hexbytes(
    """7b 0c 18 e9 ce d4 10 ed 18 04 f2 cf a3 4a 33 6a 1c 14 df fb 49 00 bb 5f
    d7 94 21 07 e8 1c 83 cd e9 ca 0f aa 60 be 9f e3 4f 82 b1 23 3c 91 46 a0
    e5 34 cb 40 0f ed 27 00 88 4f 9d c2 36 f8 0e dd 8b fa 96 11 44 c9 e8 d7
    92 ec a7 22 a7 b3 2f c3 d4 16 d4 73 eb c2 c5 fd 4a bf da d0 5d 91 84 25
    9b 5b f8 cd 4d 90 fa 0d 31 e2 de c4 79 e4 f1 a2 60 66 f2 ee a9 a6 92 36
    a3 e5 26 55 c9 e9 ae e6 91 c8 f3 a2 68 54 30 8d 5e aa 3b e8 5e 09 90 70
    3d 73 e5 6f"""
)


def _reference_p_hash(algorithm: hashes.HashAlgorithm, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_hash of RFC 5246 §5, written straight from the RFC text on cryptography's HMAC:
    A(0) = seed; A(i) = HMAC(secret, A(i-1));
    P_hash = HMAC(secret, A(1) + seed) + HMAC(secret, A(2) + seed) + ..."""

    def hmac_(data: bytes) -> bytes:
        mac = HMAC(secret, algorithm)
        mac.update(data)
        return mac.finalize()

    out = b""
    a = seed
    while len(out) < length:
        a = hmac_(a)
        out += hmac_(a + seed)
    return out[:length]


def test_prf_vector_lengths() -> None:
    assert len(PRF_SHA256_OUTPUT) == 100
    assert len(PRF_SHA384_OUTPUT) == 148


def test_prf12_sha256_ietf_vector() -> None:
    out = prf12("sha256", PRF_SHA256_SECRET, b"test label", PRF_SHA256_SEED, 100)
    assert out[:8] == hexbytes("e3 f2 29 ba 72 7b e1 7b")
    assert out == PRF_SHA256_OUTPUT


def test_prf12_sha384_ietf_vector() -> None:
    out = prf12("sha384", PRF_SHA384_SECRET, b"test label", PRF_SHA384_SEED, 148)
    assert out == PRF_SHA384_OUTPUT


@pytest.mark.parametrize(
    ("name", "algorithm", "secret", "seed", "expected"),
    [
        ("sha256", hashes.SHA256(), PRF_SHA256_SECRET, PRF_SHA256_SEED, PRF_SHA256_OUTPUT),
        ("sha384", hashes.SHA384(), PRF_SHA384_SECRET, PRF_SHA384_SEED, PRF_SHA384_OUTPUT),
    ],
)
def test_reference_p_hash_agrees(name: str, algorithm: hashes.HashAlgorithm, secret: bytes, seed: bytes, expected: bytes) -> None:
    """The independent re-implementation reproduces the published vectors too,
    so it can stand as reference for lengths the vectors do not cover."""
    assert _reference_p_hash(algorithm, secret, b"test label" + seed, len(expected)) == expected


@pytest.mark.parametrize("length", [0, 1, 31, 32, 33, 48, 64, 100, 104, 200])
@pytest.mark.parametrize(("name", "algorithm"), [("sha256", hashes.SHA256()), ("sha384", hashes.SHA384())])
def test_prf12_matches_reference_at_any_length(name: str, algorithm: hashes.HashAlgorithm, length: int) -> None:
    secret = bytes(range(48))
    seed = bytes(range(100, 164))
    expected = _reference_p_hash(algorithm, secret, b"key expansion" + seed, length)
    assert prf12(name, secret, b"key expansion", seed, length) == expected
    # Prefix property: a shorter output is a prefix of a longer one.
    assert prf12(name, secret, b"key expansion", seed, 200)[:length] == expected
