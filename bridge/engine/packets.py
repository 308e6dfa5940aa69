"""Decode captured frames down to TCP segments (the packet hot path).

API:

* :func:`decode_tcp` -> :class:`TcpSegment` or ``None``.  ``None`` means "not a
  TCP segment we can use" (ARP, UDP, ICMP, other ethertypes, non-first IP
  fragments, unsupported link types); malformed headers raise
  :class:`~bridge.errors.PacketDecodeError`.
* :func:`classify` is the single implementation behind it: it returns the
  segment or a :class:`SkipReason` saying *why* the frame was skipped.
  :func:`skip_reason` is the slow-path helper for logging/statistics.

Supported link layers: Ethernet II (with any number of 802.1Q / 802.1ad / 0x9100
tags), Linux cooked capture v1/v2, raw IP (101, 228, 229) and BSD null/loopback
(0, 108; the 4-byte address family in either byte order).  Addresses stay as
``bytes`` (4 or 16) to keep the hot path cheap; :func:`format_endpoint` renders them.

Notes: an IPv4 total length (or IPv6 payload length) of 0 is taken as "unknown"
(TSO/jumbograms) and the captured length is used; when the capture is shorter
than the IP length (snaplen), the available payload is returned.
"""

from __future__ import annotations

import enum
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
from bridge.errors import PacketDecodeError

__all__ = [
    "ACK",
    "CWR",
    "ECE",
    "FIN",
    "NS",
    "PSH",
    "RST",
    "SYN",
    "URG",
    "SkipReason",
    "TcpSegment",
    "classify",
    "decode_tcp",
    "format_endpoint",
    "skip_reason",
]

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80
NS = 0x100  # the bit left of CWR (RFC 3540 nonce sum, now AE of Accurate ECN)

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
VLAN_TPIDS = frozenset({0x8100, 0x88A8, 0x9100})
_NULL_AF_INET = 2
_NULL_AF_INET6 = frozenset({10, 24, 28, 30})  # Linux, BSDs, FreeBSD/DragonFly, Darwin
_IPPROTO_TCP = 6
_IPV6_SKIPPABLE = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44
_IPV6_AH = 51

_U16 = struct.Struct("!H")
_U32_LE = struct.Struct("<I")
_U32_BE = struct.Struct("!I")
# ver_ihl, total_length, frag (flags+offset), protocol, src, dst
_IPV4 = struct.Struct("!BxHxxHxB2x4s4s")
# ver/tc/flow, payload length, next header, src, dst
_IPV6 = struct.Struct("!IHBx16s16s")
# sport, dport, seq, ack, data offset byte, flags byte, window
_TCP = struct.Struct("!HHIIBBH")


class SkipReason(enum.Enum):
    """Why :func:`classify` did not produce a TCP segment."""

    UNSUPPORTED_LINKTYPE = "unsupported link type"
    NOT_IP = "not IPv4/IPv6 (other ethertype or address family)"
    NOT_TCP = "IP payload is not TCP"
    IP_FRAGMENT = "ip fragment"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class TcpSegment:
    timestamp_ns: int
    ip_version: int  # 4 or 6
    src: bytes  # 4 or 16 bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int  # FIN..CWR in the low byte, NS/AE as 0x100
    window: int
    payload: bytes  # TCP payload, trimmed to the IP length (no Ethernet padding)
    vlan_ids: tuple[int, ...] = ()  # 802.1Q/QinQ VLAN IDs, outermost first


def classify(linktype: int, data: bytes, timestamp_ns: int) -> TcpSegment | SkipReason:
    """Decode ``data`` to a :class:`TcpSegment` or say why it is skipped.

    Raises PacketDecodeError for malformed link/IP/TCP headers.
    """
    try:
        n = len(data)
        vlans: tuple[int, ...] = ()
        # ---- link layer -> (ethertype-ish, offset)
        if linktype == 1:  # LINKTYPE_ETHERNET (literal: hot path)
            if n < 14:
                raise PacketDecodeError(f"truncated Ethernet header ({n} bytes)")
            etype = (data[12] << 8) | data[13]
            off = 14
            if etype == 0x8100 or etype == 0x88A8 or etype == 0x9100:
                etype, off, vlans = _vlan_tags(data, off, etype)
        elif linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
            if n < 1:
                raise PacketDecodeError("empty raw IP frame")
            off = 0
            version = data[0] >> 4
            if linktype == LINKTYPE_IPV4 or (linktype == LINKTYPE_RAW and version == 4):
                etype = ETH_P_IP
            elif linktype == LINKTYPE_IPV6 or version == 6:
                etype = ETH_P_IPV6
            else:
                raise PacketDecodeError(f"raw IP frame with IP version {version}")
        elif linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                raise PacketDecodeError(f"truncated Linux cooked (SLL) header ({n} bytes)")
            etype = (data[14] << 8) | data[15]
            off = 16
            if etype in VLAN_TPIDS:
                etype, off, vlans = _vlan_tags(data, off, etype)
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                raise PacketDecodeError(f"truncated Linux cooked v2 (SLL2) header ({n} bytes)")
            etype = (data[0] << 8) | data[1]
            off = 20
            if etype in VLAN_TPIDS:
                etype, off, vlans = _vlan_tags(data, off, etype)
        elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
            if n < 4:
                raise PacketDecodeError(f"truncated null/loopback header ({n} bytes)")
            af = _U32_LE.unpack_from(data, 0)[0]
            if af > 0xFFFF:  # written in the other byte order
                af = _U32_BE.unpack_from(data, 0)[0]
            off = 4
            if af == _NULL_AF_INET:
                etype = ETH_P_IP
            elif af in _NULL_AF_INET6:
                etype = ETH_P_IPV6
            else:
                return SkipReason.NOT_IP
        else:
            return SkipReason.UNSUPPORTED_LINKTYPE

        # ---- network layer -> (tcp offset, end of IP datagram)
        if etype == 0x0800:  # ETH_P_IP
            if n - off < 20:
                raise PacketDecodeError(f"truncated IPv4 header ({n - off} bytes)")
            ver_ihl, total, frag, proto, src, dst = _IPV4.unpack_from(data, off)
            if ver_ihl >> 4 != 4:
                raise PacketDecodeError(f"IPv4 header with version {ver_ihl >> 4}")
            ihl = (ver_ihl & 0x0F) << 2
            if ihl < 20:
                raise PacketDecodeError(f"bad IPv4 header length {ihl}")
            if off + ihl > n:
                raise PacketDecodeError("truncated IPv4 options")
            if total == 0:  # TSO / unknown: use what was captured
                end = n
            else:
                if total < ihl:
                    raise PacketDecodeError(f"IPv4 total length {total} < header length {ihl}")
                end = off + total
                if end > n:
                    end = n
            if proto != 6:  # IPPROTO_TCP
                return SkipReason.NOT_TCP
            if frag & 0x3FFF:  # MF set or offset != 0
                return SkipReason.IP_FRAGMENT
            version = 4
            tcp = off + ihl
        elif etype == ETH_P_IPV6:
            if n - off < 40:
                raise PacketDecodeError(f"truncated IPv6 header ({n - off} bytes)")
            vtf, plen, nh, src, dst = _IPV6.unpack_from(data, off)
            if vtf >> 28 != 6:
                raise PacketDecodeError(f"IPv6 header with version {vtf >> 28}")
            tcp = off + 40
            end = n if plen == 0 else min(tcp + plen, n)
            if nh != _IPPROTO_TCP:
                nh, tcp = _ipv6_ext_headers(data, tcp, end, nh)
                if nh != _IPPROTO_TCP:
                    return SkipReason.IP_FRAGMENT if nh == -1 else SkipReason.NOT_TCP
            version = 6
        else:
            return SkipReason.NOT_IP

        # ---- TCP
        if end - tcp < 20:
            raise PacketDecodeError(f"truncated TCP header ({end - tcp} bytes)")
        sport, dport, seq, ack, doff, flags, window = _TCP.unpack_from(data, tcp)
        hlen = (doff >> 4) << 2
        if hlen < 20:
            raise PacketDecodeError(f"bad TCP data offset {hlen >> 2}")
        start = tcp + hlen
        if start > end:
            raise PacketDecodeError(f"truncated TCP options (header {hlen}, have {end - tcp})")
        return TcpSegment(
            timestamp_ns,
            version,
            src,
            dst,
            sport,
            dport,
            seq,
            ack,
            flags | ((doff & 1) << 8),
            window,
            data[start:end],
            vlans,
        )
    except (struct.error, IndexError) as exc:  # defensive: bounds are checked above
        raise PacketDecodeError(f"malformed frame: {exc}") from exc


def decode_tcp(linktype: int, data: bytes, timestamp_ns: int) -> TcpSegment | None:
    """The TCP segment in a frame, or None if it carries none (see :func:`classify`)."""
    result = classify(linktype, data, timestamp_ns)
    return result if result.__class__ is TcpSegment else None  # type: ignore[return-value]


def skip_reason(linktype: int, data: bytes) -> SkipReason | None:
    """Why :func:`decode_tcp` returns None for this frame (None if it does not).

    Slow path for logging/stats; raises PacketDecodeError like decode_tcp.
    """
    result = classify(linktype, data, 0)
    return result if isinstance(result, SkipReason) else None


def _vlan_tags(data: bytes, off: int, etype: int) -> tuple[int, int, tuple[int, ...]]:
    """Walk 802.1Q/802.1ad/QinQ tags: -> (inner ethertype, offset, VLAN ids)."""
    n = len(data)
    ids: list[int] = []
    while etype in VLAN_TPIDS:
        if off + 4 > n:
            raise PacketDecodeError("truncated VLAN tag")
        ids.append(((data[off] << 8) | data[off + 1]) & 0x0FFF)
        etype = (data[off + 2] << 8) | data[off + 3]
        off += 4
    return etype, off, tuple(ids)


def _ipv6_ext_headers(data: bytes, off: int, end: int, nh: int) -> tuple[int, int]:
    """Skip IPv6 extension headers -> (upper protocol, its offset); protocol -1 = fragment."""
    while True:
        if nh in _IPV6_SKIPPABLE:
            if off + 2 > end:
                raise PacketDecodeError("truncated IPv6 extension header")
            nxt = data[off]
            off += (data[off + 1] + 1) << 3
        elif nh == _IPV6_FRAGMENT:
            if off + 8 > end:
                raise PacketDecodeError("truncated IPv6 fragment header")
            if ((data[off + 2] << 8) | data[off + 3]) & 0xFFF9:  # offset != 0 or M set
                return -1, off
            nxt = data[off]
            off += 8
        elif nh == _IPV6_AH:
            if off + 2 > end:
                raise PacketDecodeError("truncated IPv6 authentication header")
            nxt = data[off]
            off += (data[off + 1] + 2) << 2
        else:
            return nh, off
        if off > end:
            raise PacketDecodeError("IPv6 extension header overruns the packet")
        nh = nxt


def format_endpoint(ip: bytes, port: int) -> str:
    """``"1.2.3.4:443"`` or ``"[2001:db8::1]:443"``."""
    import socket  # per flow, not per packet: not imported (with its enums) at every start

    if len(ip) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, ip)}:{port}"
    if len(ip) == 16:
        return f"[{socket.inet_ntop(socket.AF_INET6, ip)}]:{port}"
    raise ValueError(f"IP address must be 4 or 16 bytes, got {len(ip)}")
