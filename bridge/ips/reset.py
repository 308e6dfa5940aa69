"""TCP resets for both ends of a connection, as IP packets (the gateway's own
stack routes them).  Pure.

A stack takes a RST at once only at exactly the sequence number it expects next
(RFC 5961 3.2); one elsewhere in its window gets a challenge ACK, one outside it is
ignored.  :func:`reset_packets` aims at what each side was last seen sending;
:func:`reset_answering` answers a segment of a cut connection (a challenge ACK, a
retransmission) with the RST its sender expects, read from its acknowledgment."""

from __future__ import annotations

import ipaddress
import struct

from bridge.engine.packets import ACK, RST, SYN, TcpSegment
from bridge.ips.connections import TrackedConnection, endpoint
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


def reset_answering(segment: TcpSegment) -> tuple[str, bytes] | None:
    """(destination address, IP packet): a RST to the sender of ``segment``, as from
    its peer, at the sequence number the segment acknowledges (the one the sender
    expects next, exactly); None for a segment that acknowledges nothing or is a RST."""
    if not segment.flags & ACK or segment.flags & (RST | SYN):
        return None
    sender, peer = endpoint(segment.src, segment.sport), endpoint(segment.dst, segment.dport)
    packet, _ethertype = _tcp_reset(peer, sender, segment.ack, (segment.seq + len(segment.payload)) & 0xFFFFFFFF)
    return sender[0], packet
