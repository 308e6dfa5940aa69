"""Frame -> TcpSegment decoding, cross-checked against scapy."""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from bridge.capture.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)
from bridge.errors import PacketDecodeError
from bridge.engine.packets import ACK, FIN, NS, PSH, RST, SYN, SkipReason, TcpSegment, classify, decode_tcp, format_endpoint, skip_reason


def E(**kw: object) -> Ether:
    """Ether with fixed MACs: a bare Ether() makes scapy resolve (ARP) the IP destination."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **kw)


A4 = socket.inet_pton(socket.AF_INET, "192.0.2.1")
B4 = socket.inet_pton(socket.AF_INET, "198.51.100.7")
A6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
B6 = socket.inet_pton(socket.AF_INET6, "2001:db8:0:1::2")
TS = 1_700_000_000_000_000_001


def tcp4(payload: bytes = b"hello", **ip: object) -> IP:
    return IP(src="192.0.2.1", dst="198.51.100.7", **ip) / TCP(
        sport=40000, dport=443, seq=1000, ack=2000, flags="PA", window=512
    ) / Raw(payload)


def tcp6(payload: bytes = b"hello6") -> IPv6:
    return IPv6(src="2001:db8::1", dst="2001:db8:0:1::2") / TCP(
        sport=40001, dport=8443, seq=7, ack=9, flags="A", window=100
    ) / Raw(payload)


def _ok(linktype: int, frame: bytes) -> TcpSegment:
    seg = decode_tcp(linktype, frame, TS)
    assert isinstance(seg, TcpSegment), skip_reason(linktype, frame)
    assert seg.timestamp_ns == TS
    return seg


def _check4(seg: TcpSegment, payload: bytes = b"hello") -> None:
    assert (seg.ip_version, seg.src, seg.dst, seg.sport, seg.dport) == (4, A4, B4, 40000, 443)
    assert (seg.seq, seg.ack, seg.flags, seg.window, seg.payload) == (1000, 2000, PSH | ACK, 512, payload)


def _check6(seg: TcpSegment, payload: bytes = b"hello6") -> None:
    assert (seg.ip_version, seg.src, seg.dst, seg.sport, seg.dport) == (6, A6, B6, 40001, 8443)
    assert (seg.seq, seg.ack, seg.flags, seg.window, seg.payload) == (7, 9, ACK, 100, payload)


# --------------------------------------------------------------------------- link layers
def test_ethernet_ipv4_and_ipv6() -> None:
    seg = _ok(LINKTYPE_ETHERNET, bytes(E() / tcp4()))
    _check4(seg)
    assert seg.vlan_ids == ()
    _check6(_ok(LINKTYPE_ETHERNET, bytes(E() / tcp6())))


def test_single_vlan() -> None:
    seg = _ok(LINKTYPE_ETHERNET, bytes(E() / Dot1Q(vlan=42, prio=5) / tcp4()))
    _check4(seg)
    assert seg.vlan_ids == (42,)


def test_qinq_and_triple_tag() -> None:
    seg = _ok(LINKTYPE_ETHERNET, bytes(E() / Dot1AD(vlan=100) / Dot1Q(vlan=200) / tcp6()))
    _check6(seg)
    assert seg.vlan_ids == (100, 200)
    frame = bytes(E(type=0x9100) / Dot1Q(vlan=7, type=0x8100) / Dot1Q(vlan=8) / Dot1Q(vlan=9) / tcp4())
    assert _ok(LINKTYPE_ETHERNET, frame).vlan_ids == (7, 8, 9)


def test_linux_sll_v1_v2() -> None:
    _check4(_ok(LINKTYPE_LINUX_SLL, bytes(CookedLinux(pkttype=0, proto=0x0800) / tcp4())))
    _check6(_ok(LINKTYPE_LINUX_SLL, bytes(CookedLinux(proto=0x86DD) / tcp6())))
    _check4(_ok(LINKTYPE_LINUX_SLL2, bytes(CookedLinuxV2(proto=0x0800) / tcp4())))
    _check6(_ok(LINKTYPE_LINUX_SLL2, bytes(CookedLinuxV2(proto=0x86DD) / tcp6())))
    assert len(bytes(CookedLinuxV2())) == 20 and len(bytes(CookedLinux())) == 16
    seg = _ok(LINKTYPE_LINUX_SLL, bytes(CookedLinux(proto=0x8100) / Dot1Q(vlan=3) / tcp4()))
    assert seg.vlan_ids == (3,)


def test_raw_ip_linktypes() -> None:
    _check4(_ok(LINKTYPE_RAW, bytes(tcp4())))
    _check6(_ok(LINKTYPE_RAW, bytes(tcp6())))
    _check4(_ok(LINKTYPE_IPV4, bytes(tcp4())))
    _check6(_ok(LINKTYPE_IPV6, bytes(tcp6())))
    with pytest.raises(PacketDecodeError, match="version"):
        decode_tcp(LINKTYPE_RAW, b"\x50" + bytes(39), 0)
    with pytest.raises(PacketDecodeError, match="version"):
        decode_tcp(LINKTYPE_IPV4, bytes(tcp6()), 0)


@pytest.mark.parametrize("linktype", [LINKTYPE_NULL, LINKTYPE_LOOP])
@pytest.mark.parametrize("order", ["<", ">"])
def test_null_loopback(linktype: int, order: str) -> None:
    _check4(_ok(linktype, struct.pack(order + "I", 2) + bytes(tcp4())))
    for af6 in (10, 24, 28, 30):
        _check6(_ok(linktype, struct.pack(order + "I", af6) + bytes(tcp6())))
    assert skip_reason(linktype, struct.pack(order + "I", 7) + bytes(tcp4())) is SkipReason.NOT_IP


# --------------------------------------------------------------------------- IP details
def test_ipv4_options() -> None:
    pkt = E() / IP(src="192.0.2.1", dst="198.51.100.7", options=[IPOption_RR(routers=["1.1.1.1", "2.2.2.2"])]) / TCP(
        sport=40000, dport=443, seq=1000, ack=2000, flags="PA", window=512
    ) / Raw(b"opts")
    raw = bytes(pkt)
    assert raw[14] & 0x0F > 5
    _check4(_ok(LINKTYPE_ETHERNET, raw), b"opts")


def test_tcp_options_and_flags() -> None:
    raw = bytes(
        IP(src="192.0.2.1", dst="198.51.100.7")
        / TCP(sport=1, dport=2, flags="SEC", options=[("MSS", 1460), ("SAckOK", b""), ("WScale", 7), ("Timestamp", (1, 2))])
    )
    seg = _ok(LINKTYPE_RAW, raw)
    assert seg.flags == SYN | 0x40 | 0x80 and seg.payload == b""
    raw2 = bytearray(bytes(IP() / TCP(flags="FR")))
    raw2[20 + 12] |= 1  # NS bit
    seg2 = _ok(LINKTYPE_RAW, bytes(raw2))
    assert seg2.flags == FIN | RST | NS


def test_ethernet_padding_trimmed() -> None:
    bare = bytes(E() / IP(src="192.0.2.1", dst="198.51.100.7") / TCP(flags="A"))
    assert len(bare) == 54
    seg = _ok(LINKTYPE_ETHERNET, bare + b"\x00" * 6 + b"FCS!")
    assert seg.payload == b""
    seg = _ok(LINKTYPE_ETHERNET, bytes(E() / tcp4(b"x")) + b"\xaa" * 5)
    assert seg.payload == b"x"
    seg6 = _ok(LINKTYPE_ETHERNET, bytes(E() / tcp6(b"")) + b"\x00" * 8)
    assert seg6.payload == b""


def test_snaplen_truncated_payload_kept() -> None:
    full = bytes(E() / tcp4(b"A" * 100))
    seg = _ok(LINKTYPE_ETHERNET, full[:-60])
    assert seg.payload == b"A" * 40


def test_ipv4_total_length_zero_means_captured_length() -> None:
    raw = bytearray(bytes(tcp4(b"tso")))
    raw[2:4] = b"\0\0"
    assert _ok(LINKTYPE_RAW, bytes(raw)).payload == b"tso"


def test_ipv6_extension_headers() -> None:
    pkt = (
        IPv6(src="2001:db8::1", dst="2001:db8:0:1::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["2001:db8::99"])
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrFragment(offset=0, m=0)  # atomic fragment: fine
        / TCP(sport=40001, dport=8443, seq=7, ack=9, flags="A", window=100)
        / Raw(b"hello6")
    )
    _check6(_ok(LINKTYPE_ETHERNET, bytes(E() / pkt)))


def test_ipv6_authentication_header() -> None:
    tcp = bytes(TCP(sport=40001, dport=8443, seq=7, ack=9, flags="A", window=100) / Raw(b"hello6"))
    ah = bytes([6, 4, 0, 0]) + struct.pack("!II", 0x1234, 1) + b"\x00" * 12  # 24 bytes: (4+2)*4
    ip6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8:0:1::2", nh=51, plen=len(ah) + len(tcp)))
    _check6(_ok(LINKTYPE_RAW, ip6 + ah + tcp))


def test_fragments_skipped() -> None:
    for ip in (tcp4(flags="MF"), tcp4(frag=100)):
        raw = bytes(E() / ip)
        assert decode_tcp(LINKTYPE_ETHERNET, raw, 0) is None
        assert skip_reason(LINKTYPE_ETHERNET, raw) is SkipReason.IP_FRAGMENT
        assert str(SkipReason.IP_FRAGMENT) == "ip fragment"
    assert decode_tcp(LINKTYPE_ETHERNET, bytes(E() / tcp4(flags="DF")), 0) is not None
    for off, m in ((0, 1), (10, 0)):
        raw = bytes(IPv6() / IPv6ExtHdrFragment(offset=off, m=m) / TCP())
        assert decode_tcp(LINKTYPE_RAW, raw, 0) is None
        assert skip_reason(LINKTYPE_RAW, raw) is SkipReason.IP_FRAGMENT


@pytest.mark.parametrize(
    ("linktype", "frame", "reason"),
    [
        (LINKTYPE_ETHERNET, bytes(E() / IP() / UDP() / Raw(b"x")), SkipReason.NOT_TCP),
        (LINKTYPE_ETHERNET, bytes(E() / IP() / ICMP()), SkipReason.NOT_TCP),
        (LINKTYPE_ETHERNET, bytes(E() / ARP()), SkipReason.NOT_IP),
        (LINKTYPE_ETHERNET, bytes(E(type=0x88CC) / Raw(b"lldp" * 10)), SkipReason.NOT_IP),
        (LINKTYPE_ETHERNET, bytes(E() / IPv6() / UDP()), SkipReason.NOT_TCP),
        (LINKTYPE_ETHERNET, bytes(E() / IPv6(nh=59)), SkipReason.NOT_TCP),
        (LINKTYPE_ETHERNET, bytes(E() / IPv6() / IPv6ExtHdrHopByHop() / UDP()), SkipReason.NOT_TCP),
        (LINKTYPE_RAW, bytes(IP() / UDP()), SkipReason.NOT_TCP),
        (147, bytes(tcp4()), SkipReason.UNSUPPORTED_LINKTYPE),
    ],
)
def test_not_tcp(linktype: int, frame: bytes, reason: SkipReason) -> None:
    assert decode_tcp(linktype, frame, 0) is None
    assert skip_reason(linktype, frame) is reason
    assert classify(linktype, frame, 0) is reason


def test_skip_reason_none_for_tcp() -> None:
    assert skip_reason(LINKTYPE_ETHERNET, bytes(E() / tcp4())) is None


# --------------------------------------------------------------------------- malformed
def _set(raw: bytes, offset: int, value: int) -> bytes:
    b = bytearray(raw)
    b[offset] = value
    return bytes(b)


GOOD = bytes(E() / tcp4())


@pytest.mark.parametrize(
    ("linktype", "frame", "match"),
    [
        (LINKTYPE_ETHERNET, GOOD[:10], "Ethernet"),
        (LINKTYPE_ETHERNET, GOOD[:14 + 12], "truncated IPv4 header"),
        (LINKTYPE_ETHERNET, _set(GOOD, 14, 0x44), "bad IPv4 header length"),
        (LINKTYPE_ETHERNET, _set(GOOD, 14, 0x4F), "truncated IPv4 options"),
        (LINKTYPE_ETHERNET, _set(GOOD, 14, 0x65), "version"),
        (LINKTYPE_ETHERNET, _set(_set(GOOD, 16, 0), 17, 12), "total length"),
        (LINKTYPE_ETHERNET, _set(_set(GOOD, 16, 0), 17, 30), "truncated TCP header"),
        (LINKTYPE_ETHERNET, GOOD[:14 + 20 + 10], "truncated TCP header"),
        (LINKTYPE_ETHERNET, _set(GOOD, 14 + 20 + 12, 0x40), "data offset"),
        (LINKTYPE_ETHERNET, _set(GOOD, 14 + 20 + 12, 0xF0), "truncated TCP options"),
        (LINKTYPE_ETHERNET, bytes(E() / Dot1Q(vlan=1))[:16], "VLAN"),
        (LINKTYPE_ETHERNET, bytes(E() / tcp6())[:14 + 30], "truncated IPv6 header"),
        (LINKTYPE_ETHERNET, bytes(E() / IPv6() / IPv6ExtHdrHopByHop() / TCP())[: 14 + 41], "extension"),
        (LINKTYPE_RAW, bytes(IPv6(plen=8) / IPv6ExtHdrFragment() / TCP())[:44], "fragment header"),
        (LINKTYPE_RAW, bytes(IPv6(nh=51) / Raw(b"\x06\x20" + bytes(30))), "overruns"),
        (LINKTYPE_RAW, b"", "empty"),
        (LINKTYPE_LINUX_SLL, bytes(10), "SLL"),
        (LINKTYPE_LINUX_SLL2, bytes(10), "SLL2"),
        (LINKTYPE_NULL, b"\x02\x00", "null"),
    ],
)
def test_malformed(linktype: int, frame: bytes, match: str) -> None:
    with pytest.raises(PacketDecodeError, match=match):
        decode_tcp(linktype, frame, 0)


# --------------------------------------------------------------------------- format_endpoint
def test_format_endpoint() -> None:
    assert format_endpoint(A4, 443) == "192.0.2.1:443"
    assert format_endpoint(A6, 8443) == "[2001:db8::1]:8443"
    assert format_endpoint(bytes(16), 1) == "[::]:1"
    with pytest.raises(ValueError):
        format_endpoint(b"abc", 1)


# --------------------------------------------------------------------------- scapy cross-check
def _random_packet(rng: random.Random) -> tuple[int, bytes]:
    payload = rng.randbytes(rng.choice([0, 1, 10, 100, 1400]))
    tcp = TCP(
        sport=rng.randrange(65536),
        dport=rng.randrange(65536),
        seq=rng.randrange(2**32),
        ack=rng.randrange(2**32),
        flags=rng.randrange(512),
        window=rng.randrange(65536),
        options=rng.choice([[], [("MSS", 1460)], [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))]]),
    )
    if rng.random() < 0.5:
        ip = IP(src=socket.inet_ntoa(rng.randbytes(4)), dst=socket.inet_ntoa(rng.randbytes(4)), ttl=rng.randrange(256))
        if rng.random() < 0.2:
            ip.options = [IPOption_RR(routers=["10.0.0.1"])]
    else:
        ip = IPv6(src=socket.inet_ntop(socket.AF_INET6, rng.randbytes(16)), dst=socket.inet_ntop(socket.AF_INET6, rng.randbytes(16)))
    l3 = ip / tcp / Raw(payload)
    kind = rng.randrange(4)
    if kind == 0:
        return LINKTYPE_ETHERNET, bytes(E() / l3)
    if kind == 1:
        tags = [rng.randrange(4096) for _ in range(rng.randrange(1, 4))]
        frame = E()
        for t in tags:
            frame = frame / Dot1Q(vlan=t)
        return LINKTYPE_ETHERNET, bytes(frame / l3)
    if kind == 2:
        return LINKTYPE_LINUX_SLL2, bytes(CookedLinuxV2(proto=0x0800 if IP in l3 else 0x86DD) / l3)
    return LINKTYPE_RAW, bytes(l3)


_DISSECT = {LINKTYPE_ETHERNET: Ether, LINKTYPE_LINUX_SLL2: CookedLinuxV2}


def test_cross_check_with_scapy() -> None:
    rng = random.Random(1234)
    for _ in range(400):
        linktype, frame = _random_packet(rng)
        seg = decode_tcp(linktype, frame, 5)
        assert seg is not None
        if linktype == LINKTYPE_RAW:
            pkt = IP(frame) if frame[0] >> 4 == 4 else IPv6(frame)
        else:
            pkt = _DISSECT[linktype](frame)
        ip = pkt[IP] if IP in pkt else pkt[IPv6]
        tcp = pkt[TCP]
        assert seg.ip_version == ip.version
        assert seg.src == socket.inet_pton(socket.AF_INET if ip.version == 4 else socket.AF_INET6, ip.src)
        assert seg.dst == socket.inet_pton(socket.AF_INET if ip.version == 4 else socket.AF_INET6, ip.dst)
        assert (seg.sport, seg.dport, seg.seq, seg.ack) == (tcp.sport, tcp.dport, tcp.seq, tcp.ack)
        assert (seg.flags, seg.window) == (int(tcp.flags), tcp.window)
        assert seg.payload == bytes(tcp.payload)
        assert seg.vlan_ids == tuple(layer.vlan for layer in pkt.iterpayloads() if isinstance(layer, Dot1Q))


# --------------------------------------------------------------------------- robustness
LINKTYPES = [LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_LINUX_SLL2, 147]


def _decode_is_total(linktype: int, data: bytes) -> None:
    try:
        result = decode_tcp(linktype, data, 0)
    except PacketDecodeError:
        return
    assert result is None or isinstance(result, TcpSegment)
    if result is not None:
        assert len(result.src) in (4, 16) and len(result.dst) == len(result.src)
        assert len(result.payload) <= len(data)


@given(st.sampled_from(LINKTYPES), st.binary(max_size=200))
@settings(max_examples=1500, deadline=None)
def test_arbitrary_bytes_never_crash(linktype: int, data: bytes) -> None:
    _decode_is_total(linktype, data)


_SEEDS = [
    (LINKTYPE_ETHERNET, bytes(E() / Dot1Q(vlan=5) / tcp4())),
    (LINKTYPE_ETHERNET, bytes(E() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment() / TCP() / Raw(b"z"))),
    (LINKTYPE_LINUX_SLL, bytes(CookedLinux(proto=0x0800) / tcp4())),
    (LINKTYPE_NULL, struct.pack("<I", 2) + bytes(tcp4())),
    (LINKTYPE_RAW, bytes(tcp6())),
]


@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    st.integers(0, 220),
)
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_valid_frames_never_crash(seed: tuple[int, bytes], flips: list[tuple[int, int]], cut: int) -> None:
    linktype, frame = seed
    b = bytearray(frame)
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    _decode_is_total(linktype, bytes(b[:cut]))
