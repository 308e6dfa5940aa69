"""QUIC packet protection (RFC 9001 §5), one direction and one key phase at a time.

A secret (an Initial secret derived from the Destination Connection ID, or a
TLS 1.3 traffic secret from a key log or the key feed) gives three keys by
HKDF-Expand-Label with the version's labels (§5.1; RFC 9369 §3.3.2): the AEAD
key and IV, and the header protection key.  The next key phase's secret is the
"quic ku" expansion of the current one (§6); the header protection key does not
change with it.  Every packet is authenticated before its payload is returned: a
failure raises :class:`~bridge.errors.DecryptionError`.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from bridge.errors import DecryptionError
from bridge.quic.versions import Version
from bridge.tls.ciphersuites import BulkCipher, CipherSuite, cipher_suite
from bridge.tls.keyschedule import hkdf_expand_label, hkdf_extract

#: Initial packets are protected with AEAD_AES_128_GCM and SHA-256 (RFC 9001 §5.2)
INITIAL_SUITE: CipherSuite = cipher_suite(0x1301)  # type: ignore[assignment]
#: suites QUIC can use (RFC 9001 §5.3: not AES_128_CCM_8)
QUIC_SUITES = frozenset({0x1301, 0x1302, 0x1303, 0x1304})
_ZERO5 = bytes(5)


def initial_secrets(version: Version, dcid: bytes) -> tuple[bytes, bytes]:
    """(client_initial_secret, server_initial_secret) of RFC 9001 §5.2 from the
    Destination Connection ID of the client's first Initial (after a Retry: of
    the Initial that follows it)."""
    initial_secret = hkdf_extract("sha256", salt=version.initial_salt, ikm=dcid)
    return (
        hkdf_expand_label("sha256", initial_secret, b"client in", b"", 32),
        hkdf_expand_label("sha256", initial_secret, b"server in", b"", 32),
    )


def next_secret(version: Version, suite: CipherSuite, secret: bytes) -> bytes:
    """The secret of the next key phase (RFC 9001 §6.1)."""
    return hkdf_expand_label(suite.prf_hash, secret, version.label(b"ku"), b"", suite.hash_length)


class PacketKeys:
    """AEAD and header protection keys of one secret (RFC 9001 §5.1)."""

    __slots__ = ("version", "suite", "secret", "key", "iv", "hp", "_aead", "_hp", "_hp_chacha")

    def __init__(self, version: Version, suite: CipherSuite, secret: bytes, *, hp: bytes | None = None) -> None:
        if suite.code not in QUIC_SUITES:
            raise DecryptionError(f"cipher suite {suite.name} is not used by QUIC")
        h = suite.prf_hash
        self.version, self.suite, self.secret = version, suite, secret
        self.key = hkdf_expand_label(h, secret, version.label(b"key"), b"", suite.key_length)
        self.iv = hkdf_expand_label(h, secret, version.label(b"iv"), b"", 12)
        #: a key update keeps the header protection key (RFC 9001 §6)
        self.hp = hp if hp is not None else hkdf_expand_label(h, secret, version.label(b"hp"), b"", suite.key_length)
        cipher = suite.cipher
        if cipher is BulkCipher.AES_GCM:
            self._aead: AESGCM | AESCCM | ChaCha20Poly1305 = AESGCM(self.key)
        elif cipher is BulkCipher.AES_CCM:
            self._aead = AESCCM(self.key, tag_length=16)
        else:
            self._aead = ChaCha20Poly1305(self.key)
        self._hp_chacha = cipher is BulkCipher.CHACHA20_POLY1305
        # one ECB encryptor for every sample: 16-byte blocks in, nothing carried between them
        self._hp = None if self._hp_chacha else Cipher(algorithms.AES(self.hp), modes.ECB()).encryptor()

    def __repr__(self) -> str:
        return f"PacketKeys({self.version.name}, {self.suite.name}, <secret>)"

    def next(self) -> PacketKeys:
        """The keys of the next key phase."""
        return PacketKeys(self.version, self.suite, next_secret(self.version, self.suite, self.secret), hp=self.hp)

    def mask(self, sample: bytes) -> bytes:
        """The 5-byte header protection mask of a 16-byte sample (RFC 9001 §5.4.3, §5.4.4)."""
        if self._hp_chacha:
            # counter = sample[0:4] (little-endian), nonce = sample[4:16]: cryptography's 16-byte nonce
            encryptor = Cipher(algorithms.ChaCha20(self.hp, sample), mode=None).encryptor()
            return encryptor.update(_ZERO5)
        return self._hp.update(sample)[:5]  # type: ignore[union-attr]

    def nonce(self, packet_number: int) -> bytes:
        return (int.from_bytes(self.iv, "big") ^ packet_number).to_bytes(12, "big")

    def open(self, packet_number: int, header: bytes, ciphertext: bytes) -> bytes:
        """The payload of a packet whose unprotected ``header`` (AAD) ends with its
        packet number; raises DecryptionError if it does not authenticate."""
        try:
            return self._aead.decrypt(self.nonce(packet_number), ciphertext, header)
        except InvalidTag:
            raise DecryptionError("QUIC packet does not authenticate") from None

    def seal(self, packet_number: int, header: bytes, payload: bytes) -> bytes:
        """Protect a payload (tests build packets with it)."""
        return self._aead.encrypt(self.nonce(packet_number), payload, header)


def initial_keys(version: Version, dcid: bytes) -> tuple[PacketKeys, PacketKeys]:
    """(client, server) Initial packet keys for a client-chosen DCID."""
    client, server = initial_secrets(version, dcid)
    return PacketKeys(version, INITIAL_SUITE, client), PacketKeys(version, INITIAL_SUITE, server)


def retry_integrity_tag(version: Version, original_dcid: bytes, retry_without_tag: bytes) -> bytes:
    """The Retry Integrity Tag (RFC 9001 §5.8) of a Retry packet for the client's
    original Destination Connection ID."""
    pseudo = bytes([len(original_dcid)]) + original_dcid + retry_without_tag
    return AESGCM(version.retry_key).encrypt(version.retry_nonce, b"", pseudo)

