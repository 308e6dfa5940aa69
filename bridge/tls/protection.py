"""Record protection: decrypt and authenticate one direction's TLS records.

Every record is authenticated before its plaintext is returned: an AEAD tag,
or for CBC suites the HMAC (MAC-then-encrypt or encrypt-then-MAC, RFC 7366) and
the padding.  A failure raises :class:`DecryptionError`; nothing unauthenticated
ever leaves this module.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from bridge.errors import DecryptionError, RecordDecodeError
from bridge.tls.ciphersuites import BulkCipher, CipherSuite
from bridge.tls.keyschedule import KeyMaterial12, TrafficKeys13, traffic_keys13
from bridge.tls.records import CONTENT_APPLICATION_DATA

_AAD12 = struct.Struct(">QBHH")
_HEADER13 = struct.Struct(">BHH")
_INNER_APPLICATION_DATA = bytes([CONTENT_APPLICATION_DATA])


def _aead(suite: CipherSuite, key: bytes) -> AESGCM | AESCCM | ChaCha20Poly1305:
    if suite.cipher is BulkCipher.AES_GCM:
        return AESGCM(key)
    if suite.cipher is BulkCipher.AES_CCM:
        return AESCCM(key, tag_length=16)
    if suite.cipher is BulkCipher.AES_CCM_8:
        return AESCCM(key, tag_length=8)
    if suite.cipher is BulkCipher.CHACHA20_POLY1305:
        return ChaCha20Poly1305(key)
    raise ValueError(f"{suite.name} is not an AEAD suite")


def _xor_nonce(iv: bytes, seq: int) -> bytes:
    """The per-record nonce (RFC 8446 §5.3, RFC 7905 §2): the sequence number,
    left-padded to the IV's length, XORed with the IV."""
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(len(iv), "big")


class RecordDecryptor13:
    """TLS 1.3 record protection (RFC 8446 §5.2) for one direction and one traffic secret."""

    __slots__ = ("suite", "_aead", "_iv", "_iv_int", "seq")

    def __init__(self, suite: CipherSuite, traffic_secret: bytes) -> None:
        keys: TrafficKeys13 = traffic_keys13(suite, traffic_secret)
        self.suite = suite
        self._aead = _aead(suite, keys.key)
        self._iv = keys.iv
        self._iv_int = int.from_bytes(keys.iv, "big")
        self.seq = 0

    #: what follows the plaintext in :meth:`open_application_data`'s result: the inner content type
    TRAILER = 1

    def open_application_data(self, header: bytes, fragment: bytes) -> bytes | None:
        """The steady state's call (:mod:`bridge.engine._lanes`): one record (its 5-byte
        header, which is the AAD, and its fragment) that carries application data,
        opened: its plaintext followed by :attr:`TRAILER` bytes (the inner content type,
        padding removed), which the caller drops — in C, in place, where Python would
        copy the plaintext.  None, and nothing changed, if it does not carry application
        data (another inner content type, none, a tag mismatch): :meth:`decrypt` says
        what it is."""
        try:
            inner = self._aead.decrypt((self._iv_int ^ self.seq).to_bytes(len(self._iv), "big"), fragment, header)
        except (InvalidTag, ValueError):
            return None
        if inner[-1:] != _INNER_APPLICATION_DATA:
            inner = inner.rstrip(b"\0")  # padding (RFC 8446 5.4)
            if inner[-1:] != _INNER_APPLICATION_DATA:
                return None
        self.seq += 1
        return inner

    def decrypt(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes]:
        """Return (inner content type, plaintext) of one TLSCiphertext."""
        if content_type != CONTENT_APPLICATION_DATA:
            raise RecordDecodeError(f"TLS 1.3 protected record has outer type {content_type}")
        aad = _HEADER13.pack(content_type, version, len(fragment))
        try:
            inner = self._aead.decrypt(_xor_nonce(self._iv, self.seq), fragment, aad)
        except (InvalidTag, ValueError):
            raise DecryptionError(f"record {self.seq}: AEAD tag mismatch (wrong key?)") from None
        self.seq += 1
        end = len(inner)
        while end and inner[end - 1] == 0:
            end -= 1
        if not end:
            raise RecordDecodeError("TLS 1.3 inner plaintext has no content type")
        return inner[end - 1], inner[: end - 1]


class RecordDecryptor12:
    """TLS 1.2 record protection (RFC 5246 §6.2.3, RFC 5288, RFC 6655, RFC 7905, RFC 7366)."""

    __slots__ = ("suite", "_keys", "_aead", "encrypt_then_mac", "seq")

    def __init__(self, suite: CipherSuite, keys: KeyMaterial12, *, encrypt_then_mac: bool = False) -> None:
        self.suite = suite
        self._keys = keys
        self._aead = _aead(suite, keys.key) if suite.is_aead else None
        self.encrypt_then_mac = encrypt_then_mac and not suite.is_aead
        self.seq = 0

    def decrypt(self, content_type: int, version: int, fragment: bytes) -> tuple[int, bytes]:
        plaintext = self._decrypt_aead(content_type, version, fragment) if self._aead else self._decrypt_cbc(
            content_type, version, fragment
        )
        self.seq += 1
        return content_type, plaintext

    #: nothing follows the plaintext in :meth:`open_application_data`'s result
    TRAILER = 0

    def open_application_data(self, header: bytes, fragment: bytes) -> bytes | None:
        """As :meth:`RecordDecryptor13.open_application_data` (the plaintext alone); None for a CBC suite."""
        if self._aead is None:
            return None
        try:
            plaintext = self._decrypt_aead(CONTENT_APPLICATION_DATA, (header[1] << 8) | header[2], fragment)
        except DecryptionError:
            return None
        self.seq += 1
        return plaintext

    def _decrypt_aead(self, content_type: int, version: int, fragment: bytes) -> bytes:
        suite = self.suite
        explicit = suite.explicit_nonce_length
        if len(fragment) < explicit + suite.tag_length:
            raise DecryptionError(f"record {self.seq}: too short for {suite.name}")
        if suite.cipher is BulkCipher.CHACHA20_POLY1305:
            nonce = _xor_nonce(self._keys.iv, self.seq)
        else:
            nonce = self._keys.iv + fragment[:explicit]
        ciphertext = fragment[explicit:]
        aad = _AAD12.pack(self.seq, content_type, version, len(ciphertext) - suite.tag_length)
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)  # type: ignore[union-attr]
        except (InvalidTag, ValueError):
            raise DecryptionError(f"record {self.seq}: AEAD tag mismatch (wrong key?)") from None

    def _mac(self, content_type: int, version: int, data: bytes) -> bytes:
        header = _AAD12.pack(self.seq, content_type, version, len(data))
        return hmac.digest(self._keys.mac_key, header + data, self.suite.mac_hash)  # type: ignore[arg-type]

    def _cbc_decrypt(self, body: bytes) -> bytes:
        if len(body) < 32 or len(body) % 16:
            raise DecryptionError(f"record {self.seq}: CBC body length {len(body)} is not whole blocks")
        decryptor = Cipher(algorithms.AES(self._keys.key), modes.CBC(body[:16])).decryptor()
        padded = decryptor.update(body[16:]) + decryptor.finalize()
        pad = padded[-1]
        if pad + 1 > len(padded) or padded[-pad - 1 :] != bytes([pad]) * (pad + 1):
            raise DecryptionError(f"record {self.seq}: bad CBC padding (wrong key?)")
        return padded[: -pad - 1]

    def _decrypt_cbc(self, content_type: int, version: int, fragment: bytes) -> bytes:
        mac_len = self.suite.mac_length
        if self.encrypt_then_mac:
            body, tag = fragment[:-mac_len], fragment[-mac_len:]
            if len(fragment) < mac_len or not hmac.compare_digest(self._mac(content_type, version, body), tag):
                raise DecryptionError(f"record {self.seq}: HMAC mismatch (wrong key?)")
            return self._cbc_decrypt(body)
        padded = self._cbc_decrypt(fragment)
        if len(padded) < mac_len:
            raise DecryptionError(f"record {self.seq}: shorter than its MAC")
        plaintext, tag = padded[:-mac_len], padded[-mac_len:]
        if not hmac.compare_digest(self._mac(content_type, version, plaintext), tag):
            raise DecryptionError(f"record {self.seq}: HMAC mismatch (wrong key?)")
        return plaintext
