"""The cipher suites the decryptor knows, by IANA code point.

A suite says how records are protected (AEAD or CBC + HMAC), the key sizes, and
the hash used by the PRF (TLS 1.2) or HKDF (TLS 1.3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BulkCipher(enum.Enum):
    AES_GCM = "AES-GCM"
    AES_CCM = "AES-CCM"
    AES_CCM_8 = "AES-CCM-8"
    CHACHA20_POLY1305 = "ChaCha20-Poly1305"
    AES_CBC = "AES-CBC"


@dataclass(frozen=True, slots=True)
class CipherSuite:
    code: int
    name: str
    tls13: bool
    cipher: BulkCipher
    key_length: int
    #: TLS 1.2 AEAD: implicit (salt) IV bytes from the key block; TLS 1.3: whole IV length.
    fixed_iv_length: int
    #: "sha256"/"sha384": PRF hash (TLS 1.2) or HKDF hash (TLS 1.3).
    prf_hash: str
    #: CBC suites: the HMAC hash ("sha1", "sha256", "sha384"); None for AEAD.
    mac_hash: str | None = None

    @property
    def is_aead(self) -> bool:
        return self.cipher is not BulkCipher.AES_CBC

    @property
    def tag_length(self) -> int:
        return 8 if self.cipher is BulkCipher.AES_CCM_8 else 16

    @property
    def mac_length(self) -> int:
        return {"sha1": 20, "sha256": 32, "sha384": 48}[self.mac_hash] if self.mac_hash else 0

    @property
    def hash_length(self) -> int:
        return 48 if self.prf_hash == "sha384" else 32

    @property
    def explicit_nonce_length(self) -> int:
        """Bytes of per-record nonce/IV carried in a TLS 1.2 record."""
        if self.tls13 or self.cipher is BulkCipher.CHACHA20_POLY1305:
            return 0
        return 16 if self.cipher is BulkCipher.AES_CBC else 8


def _tls13(code: int, name: str, cipher: BulkCipher, key: int, prf: str) -> CipherSuite:
    return CipherSuite(code, name, True, cipher, key, 12, prf)


def _aead12(code: int, name: str, cipher: BulkCipher, key: int, prf: str) -> CipherSuite:
    fixed_iv = 12 if cipher is BulkCipher.CHACHA20_POLY1305 else 4
    return CipherSuite(code, name, False, cipher, key, fixed_iv, prf)


def _cbc12(code: int, name: str, key: int, mac: str, prf: str = "sha256") -> CipherSuite:
    return CipherSuite(code, name, False, BulkCipher.AES_CBC, key, 16, prf, mac)


_G, _C, _C8, _CH = BulkCipher.AES_GCM, BulkCipher.AES_CCM, BulkCipher.AES_CCM_8, BulkCipher.CHACHA20_POLY1305

_SUITES = [
    # TLS 1.3 (RFC 8446, appendix B.4)
    _tls13(0x1301, "TLS_AES_128_GCM_SHA256", _G, 16, "sha256"),
    _tls13(0x1302, "TLS_AES_256_GCM_SHA384", _G, 32, "sha384"),
    _tls13(0x1303, "TLS_CHACHA20_POLY1305_SHA256", _CH, 32, "sha256"),
    _tls13(0x1304, "TLS_AES_128_CCM_SHA256", _C, 16, "sha256"),
    _tls13(0x1305, "TLS_AES_128_CCM_8_SHA256", _C8, 16, "sha256"),
]

# TLS 1.2 AEAD suites, every key exchange (the master secret is given).
for _kx, _codes in {
    "RSA": (0x009C, 0x009D, None),
    "DHE_RSA": (0x009E, 0x009F, 0xCCAA),
    "ECDHE_RSA": (0xC02F, 0xC030, 0xCCA8),
    "ECDHE_ECDSA": (0xC02B, 0xC02C, 0xCCA9),
    "PSK": (0x00A8, 0x00A9, 0xCCAB),
    "DHE_PSK": (0x00AA, 0x00AB, 0xCCAD),
    "ECDHE_PSK": (None, None, 0xCCAC),
}.items():
    _gcm128, _gcm256, _chacha = _codes
    if _gcm128 is not None:
        _SUITES.append(_aead12(_gcm128, f"TLS_{_kx}_WITH_AES_128_GCM_SHA256", _G, 16, "sha256"))
    if _gcm256 is not None:
        _SUITES.append(_aead12(_gcm256, f"TLS_{_kx}_WITH_AES_256_GCM_SHA384", _G, 32, "sha384"))
    if _chacha is not None:
        _SUITES.append(_aead12(_chacha, f"TLS_{_kx}_WITH_CHACHA20_POLY1305_SHA256", _CH, 32, "sha256"))

# TLS 1.2 CCM suites (RFC 6655, RFC 7251)
for _code, _name, _cipher, _key in [
    (0xC09C, "TLS_RSA_WITH_AES_128_CCM", _C, 16),
    (0xC09D, "TLS_RSA_WITH_AES_256_CCM", _C, 32),
    (0xC09E, "TLS_DHE_RSA_WITH_AES_128_CCM", _C, 16),
    (0xC09F, "TLS_DHE_RSA_WITH_AES_256_CCM", _C, 32),
    (0xC0A0, "TLS_RSA_WITH_AES_128_CCM_8", _C8, 16),
    (0xC0A1, "TLS_RSA_WITH_AES_256_CCM_8", _C8, 32),
    (0xC0A2, "TLS_DHE_RSA_WITH_AES_128_CCM_8", _C8, 16),
    (0xC0A3, "TLS_DHE_RSA_WITH_AES_256_CCM_8", _C8, 32),
    (0xC0A4, "TLS_PSK_WITH_AES_128_CCM", _C, 16),
    (0xC0A5, "TLS_PSK_WITH_AES_256_CCM", _C, 32),
    (0xC0A8, "TLS_PSK_WITH_AES_128_CCM_8", _C8, 16),
    (0xC0A9, "TLS_PSK_WITH_AES_256_CCM_8", _C8, 32),
    (0xC0AC, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", _C, 16),
    (0xC0AD, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM", _C, 32),
    (0xC0AE, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", _C8, 16),
    (0xC0AF, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8", _C8, 32),
]:
    _SUITES.append(_aead12(_code, _name, _cipher, _key, "sha256"))

# TLS 1.2 CBC suites (MAC-then-encrypt, or encrypt-then-MAC per RFC 7366)
for _code, _name, _key, _mac, _prf in [
    (0x002F, "TLS_RSA_WITH_AES_128_CBC_SHA", 16, "sha1", "sha256"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA", 32, "sha1", "sha256"),
    (0x003C, "TLS_RSA_WITH_AES_128_CBC_SHA256", 16, "sha256", "sha256"),
    (0x003D, "TLS_RSA_WITH_AES_256_CBC_SHA256", 32, "sha256", "sha256"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA", 16, "sha1", "sha256"),
    (0x0039, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA", 32, "sha1", "sha256"),
    (0x0067, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256", 16, "sha256", "sha256"),
    (0x006B, "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256", 32, "sha256", "sha256"),
    (0xC009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 16, "sha1", "sha256"),
    (0xC00A, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", 32, "sha1", "sha256"),
    (0xC013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 16, "sha1", "sha256"),
    (0xC014, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", 32, "sha1", "sha256"),
    (0xC023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 16, "sha256", "sha256"),
    (0xC024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384", 32, "sha384", "sha384"),
    (0xC027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", 16, "sha256", "sha256"),
    (0xC028, "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", 32, "sha384", "sha384"),
    (0x008C, "TLS_PSK_WITH_AES_128_CBC_SHA", 16, "sha1", "sha256"),
    (0x008D, "TLS_PSK_WITH_AES_256_CBC_SHA", 32, "sha1", "sha256"),
]:
    _SUITES.append(_cbc12(_code, _name, _key, _mac, _prf))

CIPHER_SUITES: dict[int, CipherSuite] = {suite.code: suite for suite in _SUITES}


def cipher_suite(code: int) -> CipherSuite | None:
    """The suite for an IANA code point, or None when the decryptor does not know it."""
    return CIPHER_SUITES.get(code)


def cipher_suite_name(code: int) -> str:
    suite = CIPHER_SUITES.get(code)
    return suite.name if suite else f"0x{code:04X}"
