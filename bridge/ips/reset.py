"""TCP resets for both ends of a connection, as IP packets (the gateway's own
stack routes them).  Pure."""

from __future__ import annotations

import ipaddress
import struct

from bridge.ips.connections import TrackedConnection
from bridge.reinject.synthetic import internet_checksum

_RST_ACK = 0x14


def _tcp_reset(src: tuple[str, int], dst: tuple[str, int], seq: int, ack: int) -> tuple[bytes, int]:
    """(IP packet, ethertype) of a RST|ACK from src to dst."""
    source, destination = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    tcp = bytearray(struct.pack("!HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, _RST_ACK, 0, 0, 0))
    if source.version == 4:
        pseudo = source.packed + destination.packed + struct.pack("!BBH", 0, 6, len(tcp))
        struct.pack_into("!H", tcp, 16, internet_checksum(pseudo + tcp))
        header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                                       source.packed, destination.packed))
        struct.pack_into("!H", header, 10, internet_checksum(header))
        return bytes(header) + bytes(tcp), 0x0800
    pseudo = source.packed + destination.packed + struct.pack("!IxxxB", len(tcp), 6)
    struct.pack_into("!H", tcp, 16, internet_checksum(pseudo + tcp))
    header = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, source.packed, destination.packed)
    return header + bytes(tcp), 0x86DD


def reset_packets(connection: TrackedConnection) -> list[tuple[str, bytes]]:
    """(destination address, IP packet): to each side, a RST that appears to come
    from the other, at the sequence number that side expects next."""
    sides = list(connection.sides.items())
    if len(sides) != 2:
        return []
    packets = []
    for (sender, direction), (receiver, other) in ((sides[0], sides[1]), (sides[1], sides[0])):
        packet, _ethertype = _tcp_reset(sender, receiver, direction.next_seq, other.next_seq)
        packets.append((receiver[0], packet))
    return packets
