"""Key schedules: the TLS 1.2 PRF (RFC 5246 §5) and TLS 1.3 HKDF (RFC 8446 §7).

Functions carry the RFCs' names.  Secrets are plain ``bytes`` here; callers keep
them out of logs and exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from bridge.tls.ciphersuites import CipherSuite


# --- TLS 1.2 (RFC 5246 §5) -------------------------------------------------------

def p_hash(hash_name: str, secret: bytes, seed: bytes, length: int) -> bytes:
    """P_hash(secret, seed) of RFC 5246 §5, truncated to ``length`` bytes."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = hmac.digest(secret, a, hash_name)
        out += hmac.digest(secret, a + seed, hash_name)
    return bytes(out[:length])


def prf12(hash_name: str, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """PRF(secret, label, seed) = P_<hash>(secret, label + seed)."""
    return p_hash(hash_name, secret, label + seed, length)


@dataclass(frozen=True, slots=True, repr=False)
class KeyMaterial12:
    """One direction's TLS 1.2 keys, sliced from the key block."""

    mac_key: bytes
    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return "KeyMaterial12(<secret>)"


def key_block12(
    suite: CipherSuite, *, master_secret: bytes, client_random: bytes, server_random: bytes
) -> tuple[KeyMaterial12, KeyMaterial12]:
    """(client_write, server_write) keys of RFC 5246 §6.3."""
    mac_len = suite.mac_length
    key_len = suite.key_length
    iv_len = suite.fixed_iv_length
    block = prf12(
        suite.prf_hash,
        master_secret,
        b"key expansion",
        server_random + client_random,
        2 * (mac_len + key_len + iv_len),
    )
    offset = 0

    def take(n: int) -> bytes:
        nonlocal offset
        piece = block[offset : offset + n]
        offset += n
        return piece

    client_mac, server_mac = take(mac_len), take(mac_len)
    client_key, server_key = take(key_len), take(key_len)
    client_iv, server_iv = take(iv_len), take(iv_len)
    return KeyMaterial12(client_mac, client_key, client_iv), KeyMaterial12(server_mac, server_key, server_iv)


def master_secret12(
    suite: CipherSuite,
    *,
    pre_master_secret: bytes,
    client_random: bytes,
    server_random: bytes,
    session_hash: bytes | None = None,
) -> bytes:
    """master_secret of RFC 5246 §8.1, or RFC 7627 §4's extended master secret
    when ``session_hash`` (Hash(ClientHello ... ClientKeyExchange)) is given."""
    if session_hash is not None:
        return prf12(suite.prf_hash, pre_master_secret, b"extended master secret", session_hash, 48)
    return prf12(suite.prf_hash, pre_master_secret, b"master secret", client_random + server_random, 48)


# --- TLS 1.3 (RFC 8446 §7.1) -----------------------------------------------------

def hkdf_extract(hash_name: str, *, salt: bytes, ikm: bytes) -> bytes:
    return hmac.digest(salt or bytes(hashlib.new(hash_name).digest_size), ikm, hash_name)


def hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    out = bytearray()
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        out += block
        counter += 1
    return bytes(out[:length])


def hkdf_expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full_label)]) + full_label + bytes([len(context)]) + context
    return hkdf_expand(hash_name, secret, info, length)


def derive_secret(hash_name: str, secret: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """Derive-Secret(Secret, Label, Messages), given Transcript-Hash(Messages)."""
    return hkdf_expand_label(hash_name, secret, label, transcript_hash, hashlib.new(hash_name).digest_size)


def empty_hash(hash_name: str) -> bytes:
    return hashlib.new(hash_name).digest()


@dataclass(frozen=True, slots=True, repr=False)
class TrafficKeys13:
    key: bytes
    iv: bytes

    def __repr__(self) -> str:
        return "TrafficKeys13(<secret>)"


def traffic_keys13(suite: CipherSuite, traffic_secret: bytes) -> TrafficKeys13:
    """[sender]_write_key/iv of RFC 8446 §7.3."""
    return TrafficKeys13(
        key=hkdf_expand_label(suite.prf_hash, traffic_secret, b"key", b"", suite.key_length),
        iv=hkdf_expand_label(suite.prf_hash, traffic_secret, b"iv", b"", 12),
    )


def next_traffic_secret(suite: CipherSuite, traffic_secret: bytes) -> bytes:
    """application_traffic_secret_N+1 of RFC 8446 §7.2 (after a KeyUpdate)."""
    return hkdf_expand_label(suite.prf_hash, traffic_secret, b"traffic upd", b"", suite.hash_length)


def handshake_traffic_secrets(
    suite: CipherSuite, *, handshake_secret: bytes, hello_hash: bytes
) -> tuple[bytes, bytes]:
    """(client, server) handshake traffic secrets from the handshake secret and
    Transcript-Hash(ClientHello...ServerHello)."""
    h = suite.prf_hash
    return (
        derive_secret(h, handshake_secret, b"c hs traffic", hello_hash),
        derive_secret(h, handshake_secret, b"s hs traffic", hello_hash),
    )


def master_secret13(suite: CipherSuite, *, handshake_secret: bytes) -> bytes:
    h = suite.prf_hash
    derived = derive_secret(h, handshake_secret, b"derived", empty_hash(h))
    return hkdf_extract(h, salt=derived, ikm=bytes(suite.hash_length))


def application_traffic_secrets(
    suite: CipherSuite, *, handshake_secret: bytes, server_finished_hash: bytes
) -> tuple[bytes, bytes]:
    """(client, server) application traffic secrets 0 from the handshake secret and
    Transcript-Hash(ClientHello...server Finished)."""
    h = suite.prf_hash
    master = master_secret13(suite, handshake_secret=handshake_secret)
    return (
        derive_secret(h, master, b"c ap traffic", server_finished_hash),
        derive_secret(h, master, b"s ap traffic", server_finished_hash),
    )

