"""QUIC packet headers (RFC 9000 §17) and their protection's removal.

:func:`parse_datagram` walks a UDP payload's coalesced packets (§12.2): long
header packets (Initial, 0-RTT, Handshake, Retry; Version Negotiation) carry
their length; a short header packet (1-RTT) runs to the end of the datagram and
its Destination Connection ID has no length on the wire: the connection knows
the lengths of the IDs it saw issued and tries them (:func:`short_header`).

:func:`remove_protection` undoes header protection (RFC 9001 §5.4) and returns
what the AEAD needs; :func:`decode_packet_number` recovers the full packet
number (RFC 9000 §17.1, Appendix A.3).  Malformed input raises
:class:`~bridge.errors.PacketDecodeError`; a failed authentication (a wrong key,
a wrong guess of a short header's ID length) raises
:class:`~bridge.errors.DecryptionError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import PacketDecodeError
from bridge.quic.protection import PacketKeys
from bridge.quic.versions import PacketType, Version, version as find_version

MAX_CID_LENGTH = 20  # RFC 9000 §17.2


def read_varint(data: bytes, position: int, end: int | None = None) -> tuple[int, int]:
    """A variable-length integer (RFC 9000 §16) at ``position``: (value, next position)."""
    end = len(data) if end is None else end
    if position >= end:
        raise PacketDecodeError("truncated variable-length integer")
    first = data[position]
    size = 1 << (first >> 6)
    if position + size > end:
        raise PacketDecodeError("truncated variable-length integer")
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[position + i]
    return value, position + size


def encode_varint(value: int) -> bytes:
    """The shortest encoding of ``value`` (tests and packet builders)."""
    if value < 0x40:
        return bytes([value])
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x40000000:
        return (value | 0x80000000).to_bytes(4, "big")
    if value < 0x4000000000000000:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError("varint out of range")


@dataclass(slots=True)
class RawPacket:
    """One packet of a datagram, its protection not yet removed: ``data[start:end]``."""

    packet_type: PacketType
    version: Version | None  # None: short header (the connection's version) or an unknown version
    version_number: int
    start: int
    end: int
    #: where the protected packet number begins (long headers; short: 1 + the DCID length)
    pn_offset: int
    dcid: bytes
    scid: bytes = b""
    token: bytes = b""
    #: Version Negotiation: the versions offered
    supported_versions: tuple[int, ...] = ()


def parse_datagram(data: bytes) -> tuple[list[RawPacket], int]:
    """The long header packets of a datagram, and where a short header packet
    starts (-1: none).  Trailing bytes that start no packet (zero padding after
    the last coalesced packet) end the walk."""
    packets: list[RawPacket] = []
    position = 0
    end = len(data)
    while position < end:
        first = data[position]
        if not first & 0x80:
            if first == 0 and packets:  # padding after coalesced packets
                break
            return packets, position
        packet = _long_header(data, position, end)
        packets.append(packet)
        position = packet.end
    return packets, -1


def _long_header(data: bytes, start: int, end: int) -> RawPacket:
    if end - start < 7:
        raise PacketDecodeError("truncated QUIC long header")
    first = data[start]
    number = int.from_bytes(data[start + 1:start + 5], "big")
    position = start + 5
    dcid_length = data[position]
    if dcid_length > MAX_CID_LENGTH and number != 0:
        raise PacketDecodeError(f"QUIC connection ID of {dcid_length} bytes")
    dcid = data[position + 1:position + 1 + dcid_length]
    position += 1 + dcid_length
    if position >= end:
        raise PacketDecodeError("truncated QUIC long header")
    scid_length = data[position]
    scid = data[position + 1:position + 1 + scid_length]
    position += 1 + scid_length
    if position > end or len(dcid) != dcid_length or len(scid) != scid_length:
        raise PacketDecodeError("truncated QUIC long header")
    if number == 0:  # Version Negotiation (RFC 9000 §17.2.1): the rest of the datagram
        offered = tuple(int.from_bytes(data[i:i + 4], "big") for i in range(position, end - 3, 4))
        return RawPacket(PacketType.VERSION_NEGOTIATION, None, 0, start, end, position, dcid, scid,
                         supported_versions=offered)
    version = find_version(number)
    if version is None:  # a version we do not know: its packets cannot be delimited
        return RawPacket(PacketType.UNKNOWN_VERSION, None, number, start, end,
                         position, dcid, scid)
    packet_type = version.long_types[(first >> 4) & 0x03]
    if packet_type is PacketType.RETRY:  # token and the 16-byte integrity tag, to the end
        if end - position < 16:
            raise PacketDecodeError("truncated QUIC Retry packet")
        return RawPacket(packet_type, version, number, start, end, end, dcid, scid, token=data[position:end - 16])
    token = b""
    if packet_type is PacketType.INITIAL:
        token_length, position = read_varint(data, position, end)
        if position + token_length > end:
            raise PacketDecodeError("truncated QUIC Initial token")
        token = data[position:position + token_length]
        position += token_length
    length, position = read_varint(data, position, end)
    if position + length > end:
        raise PacketDecodeError(f"QUIC packet length {length} overruns the datagram")
    if length < 20:  # a packet number (1-4) and a 16-byte tag at least; the sample needs 4 + 16
        raise PacketDecodeError(f"QUIC packet length {length} is too short")
    return RawPacket(packet_type, version, number, start, position + length, position, dcid, scid, token)


def short_header(data: bytes, start: int, dcid_length: int) -> RawPacket:
    """A short header packet at ``start`` running to the end, if its DCID is ``dcid_length`` bytes."""
    end = len(data)
    pn_offset = start + 1 + dcid_length
    if pn_offset + 20 > end:
        raise PacketDecodeError("QUIC short header packet too short")
    return RawPacket(PacketType.ONE_RTT, None, 0, start, end, pn_offset, data[start + 1:pn_offset])


@dataclass(slots=True)
class Unprotected:
    """What header protection removal gives: the header as authenticated and the ciphertext."""

    first_byte: int
    truncated_pn: int
    pn_length: int
    header: bytes
    ciphertext: bytes

    @property
    def key_phase(self) -> int:
        """Short headers: the key phase bit (RFC 9000 §17.3.1)."""
        return (self.first_byte >> 2) & 1


def remove_protection(data: bytes, packet: RawPacket, keys: PacketKeys) -> Unprotected:
    """Undo header protection (RFC 9001 §5.4.1): the sample starts 4 bytes after the
    packet number's start (§5.4.2)."""
    pn_offset = packet.pn_offset
    sample_at = pn_offset + 4
    if sample_at + 16 > packet.end:
        raise PacketDecodeError("QUIC packet too short for a header protection sample")
    mask = keys.mask(data[sample_at:sample_at + 16])
    first = data[packet.start]
    first ^= mask[0] & (0x0F if first & 0x80 else 0x1F)
    pn_length = (first & 0x03) + 1
    truncated = 0
    pn_bytes = bytearray(pn_length)
    for i in range(pn_length):
        pn_bytes[i] = data[pn_offset + i] ^ mask[1 + i]
        truncated = (truncated << 8) | pn_bytes[i]
    header = bytes([first]) + data[packet.start + 1:pn_offset] + bytes(pn_bytes)
    return Unprotected(first, truncated, pn_length, header, data[pn_offset + pn_length:packet.end])


def decode_packet_number(largest: int, truncated: int, pn_length: int) -> int:
    """The full packet number nearest the next expected one (RFC 9000 Appendix A.3);
    ``largest`` is -1 before any packet of the space was received."""
    bits = pn_length * 8
    expected = largest + 1
    window = 1 << bits
    half = window >> 1
    mask = window - 1
    candidate = (expected & ~mask) | truncated
    if candidate <= expected - half and candidate < (1 << 62) - window:
        return candidate + window
    if candidate > expected + half and candidate >= window:
        return candidate - window
    return candidate
