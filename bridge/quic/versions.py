"""QUIC versions the bridge decrypts: what differs between them (RFC 9001 §5.2,
§5.8; RFC 9369 §3): the Initial salt, the HKDF label prefix, the long header
packet type codes, the Retry integrity key."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PacketType(enum.Enum):
    INITIAL = "initial"
    ZERO_RTT = "0rtt"
    HANDSHAKE = "handshake"
    RETRY = "retry"
    ONE_RTT = "1rtt"  # short header
    VERSION_NEGOTIATION = "version_negotiation"
    #: a long header of a version the bridge does not decrypt
    UNKNOWN_VERSION = "unknown_version"


@dataclass(frozen=True, slots=True)
class Version:
    number: int
    name: str
    initial_salt: bytes
    #: "quic" (v1) or "quicv2" (v2): the labels are "<prefix> key", " iv", " hp", " ku"
    label_prefix: bytes
    #: long header type bits (0..3) → packet type
    long_types: tuple[PacketType, PacketType, PacketType, PacketType]
    retry_key: bytes
    retry_nonce: bytes

    def label(self, what: bytes) -> bytes:
        return self.label_prefix + b" " + what

    def type_bits(self, packet_type: PacketType) -> int:
        return self.long_types.index(packet_type)


_I, _Z, _H, _R = PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.RETRY

#: RFC 9001 §5.2 (salt), §5.8 (Retry integrity), RFC 9000 §17.2 (types)
QUIC_V1 = Version(
    number=0x00000001,
    name="QUICv1",
    initial_salt=bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    label_prefix=b"quic",
    long_types=(_I, _Z, _H, _R),
    retry_key=bytes.fromhex("be0c690b9f66575a1d766b54e368c84e"),
    retry_nonce=bytes.fromhex("461599d35d632bf2239825bb"),
)

#: RFC 9369 §3.3.1 (salt), §3.3.2 (labels), §3.2 (types), §3.3.3 (Retry integrity)
QUIC_V2 = Version(
    number=0x6B3343CF,
    name="QUICv2",
    initial_salt=bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
    label_prefix=b"quicv2",
    long_types=(_R, _I, _Z, _H),
    retry_key=bytes.fromhex("8fb4b01b56ac48e260fbcbcead7ccc92"),
    retry_nonce=bytes.fromhex("d86969bc2d7c6d9990efb04a"),
)

VERSIONS = {QUIC_V1.number: QUIC_V1, QUIC_V2.number: QUIC_V2}


def version(number: int) -> Version | None:
    """The version by its number (None: not one the bridge decrypts)."""
    return VERSIONS.get(number)
