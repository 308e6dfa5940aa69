"""UDP datagrams out of frames (bridge.engine.udp): link layers, IPv4 and IPv6,
padding, fragments, malformed headers."""

from __future__ import annotations

import struct

import pytest

from bridge.capture.frames import LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL
from bridge.engine.udp import decode_udp
from bridge.errors import PacketDecodeError

SRC4, DST4 = bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])
SRC6, DST6 = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")
PAYLOAD = b"\xc0\x00\x00\x00\x01quic-ish payload"


def _udp(payload: bytes = PAYLOAD, sport: int = 50000, dport: int = 443) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def _ipv4(body: bytes, proto: int = 17, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 1, frag, 64, proto, 0, SRC4, DST4) + body


def _ipv6(body: bytes, next_header: int = 17) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(body), next_header, 64, SRC6, DST6) + body


def _ethernet(ethertype: int, body: bytes, vlan: int | None = None) -> bytes:
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return b"\x02" * 6 + b"\x04" * 6 + tag + ethertype.to_bytes(2, "big") + body


def test_ethernet_vlan_ipv4_with_padding():
    frame = _ethernet(0x0800, _ipv4(_udp()), vlan=7) + bytes(20)  # Ethernet padding after the IP datagram
    datagram = decode_udp(1, frame, 5)
    assert (datagram.src, datagram.dst, datagram.sport, datagram.dport) == (SRC4, DST4, 50000, 443)
    assert datagram.payload == PAYLOAD and datagram.ip_version == 4 and datagram.timestamp_ns == 5


def test_ipv6_with_an_extension_header_raw_and_sll2():
    hop_by_hop = bytes([17, 0]) + bytes(6)
    packet = _ipv6(hop_by_hop + _udp(), next_header=0)
    for linktype, frame in ((1, _ethernet(0x86DD, packet)), (LINKTYPE_IPV6, packet),
                            (LINKTYPE_LINUX_SLL2, (0x86DD).to_bytes(2, "big") + bytes(18) + packet),
                            (LINKTYPE_NULL, (24).to_bytes(4, "little") + packet)):
        datagram = decode_udp(linktype, frame, 0)
        assert datagram is not None and datagram.ip_version == 6 and datagram.src == SRC6, linktype
        assert datagram.payload == PAYLOAD


def test_not_udp_fragments_and_other_link_types_are_none():
    assert decode_udp(1, _ethernet(0x0800, _ipv4(_udp(), proto=6)), 0) is None  # TCP
    assert decode_udp(1, _ethernet(0x0800, _ipv4(_udp(), frag=0x2000)), 0) is None  # more fragments
    assert decode_udp(1, _ethernet(0x0806, bytes(28)), 0) is None  # ARP
    assert decode_udp(147, _ipv4(_udp()), 0) is None  # a link type we do not read


@pytest.mark.parametrize("frame", [
    _ethernet(0x0800, _ipv4(b"\x00\x01\x02")),  # truncated UDP header
    _ethernet(0x0800, b"\x45\x00"),  # truncated IPv4 header
    b"\x02" * 10,  # truncated Ethernet header
    _ethernet(0x86DD, _ipv6(b"")[:30]),  # truncated IPv6 header
])
def test_malformed_frames_raise(frame):
    with pytest.raises(PacketDecodeError):
        decode_udp(1, frame, 0)
