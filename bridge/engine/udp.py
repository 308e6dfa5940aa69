"""Decode captured frames down to UDP datagrams (for QUIC, :mod:`bridge.engine.quic`).

The engine calls :func:`decode_udp` only for frames that
:func:`bridge.engine.packets.classify` did not turn into a TCP segment (the TCP
hot path is untouched).  Same link layers as TCP (Ethernet with VLAN tags,
Linux cooked v1/v2, raw IP, BSD null/loopback), IPv4 and IPv6 with extension
headers; fragments are not reassembled (their datagrams are skipped, counted by
the caller).  Malformed headers raise :class:`~bridge.errors.PacketDecodeError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.capture.frames import (
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from bridge.engine.packets import VLAN_TPIDS, _ipv6_ext_headers, _vlan_tags
from bridge.errors import PacketDecodeError

_IPPROTO_UDP = 17
_IPV4 = struct.Struct("!BxHxxHxB2x4s4s")
_IPV6 = struct.Struct("!IHBx16s16s")
_UDP = struct.Struct("!HHH")


@dataclass(slots=True)
class UdpDatagram:
    timestamp_ns: int
    ip_version: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    payload: bytes


def _network(linktype: int, data: bytes) -> tuple[int, int] | None:
    """(ethertype, offset of the IP header), or None for frames that carry no IP."""
    n = len(data)
    if linktype == 1:
        if n < 14:
            raise PacketDecodeError(f"truncated Ethernet header ({n} bytes)")
        etype, off = (data[12] << 8) | data[13], 14
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if n < 1:
            raise PacketDecodeError("empty raw IP frame")
        return (0x86DD if data[0] >> 4 == 6 else 0x0800), 0
    elif linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            raise PacketDecodeError("truncated Linux cooked (SLL) header")
        etype, off = (data[14] << 8) | data[15], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            raise PacketDecodeError("truncated Linux cooked v2 (SLL2) header")
        etype, off = (data[0] << 8) | data[1], 20
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        if n < 4:
            raise PacketDecodeError("truncated null/loopback header")
        family = int.from_bytes(data[:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(data[:4], "big")
        return (0x0800 if family == 2 else 0x86DD if family in (10, 24, 28, 30) else 0), 4
    else:
        return None
    if etype in VLAN_TPIDS:
        etype, off, _ = _vlan_tags(data, off, etype)
    return etype, off


def decode_udp(linktype: int, data: bytes, timestamp_ns: int) -> UdpDatagram | None:
    """The UDP datagram in a frame, or None (not IP, not UDP, a fragment)."""
    try:
        found = _network(linktype, data)
        if found is None:
            return None
        etype, off = found
        n = len(data)
        if etype == 0x0800:
            if n - off < 20:
                raise PacketDecodeError("truncated IPv4 header")
            ver_ihl, total, frag, proto, src, dst = _IPV4.unpack_from(data, off)
            ihl = (ver_ihl & 0x0F) << 2
            if ver_ihl >> 4 != 4 or ihl < 20 or off + ihl > n:
                raise PacketDecodeError("bad IPv4 header")
            if proto != _IPPROTO_UDP or frag & 0x3FFF:
                return None
            end = n if total == 0 else min(off + total, n)
            udp, version = off + ihl, 4
        elif etype == 0x86DD:
            if n - off < 40:
                raise PacketDecodeError("truncated IPv6 header")
            vtf, plen, nh, src, dst = _IPV6.unpack_from(data, off)
            if vtf >> 28 != 6:
                raise PacketDecodeError("bad IPv6 header")
            udp = off + 40
            end = n if plen == 0 else min(udp + plen, n)
            if nh != _IPPROTO_UDP:
                nh, udp = _ipv6_ext_headers(data, udp, end, nh)
                if nh != _IPPROTO_UDP:
                    return None
            version = 6
        else:
            return None
        if end - udp < 8:
            raise PacketDecodeError("truncated UDP header")
        sport, dport, length = _UDP.unpack_from(data, udp)
        if length >= 8 and udp + length < end:
            end = udp + length  # Ethernet padding
        return UdpDatagram(timestamp_ns, version, src, dst, sport, dport, data[udp + 8:end])
    except (struct.error, IndexError) as exc:
        raise PacketDecodeError(f"malformed frame: {exc}") from exc
