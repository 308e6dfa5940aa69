"""Synthetic cleartext re-injection (bridge.reinject.synthetic).

Frames are parsed with scapy (build/parse only, nothing is sent) and with tshark.
"""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from bridge.capture import _records
from bridge.capture.pcapwriter import PcapWriter
from bridge.reinject import _segments
from bridge.engine.events import FlowFinished, FlowInfo, PlaintextData
from tests.support.decrypt import summary_for
from bridge.reinject.synthetic import (
    OutputFrame,
    SegmentBurst,
    SyntheticFlows,
    SyntheticOptions,
    internet_checksum,
)
from bridge.tls.state import Direction

TSHARK = "/usr/bin/tshark"
T0 = 1_700_000_000_000_000_000

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# --- helpers -----------------------------------------------------------------------------


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def flow4(flow_id: int = 1, cport: int = 50000, sport: int = 443) -> FlowInfo:
    return FlowInfo(flow_id, 4, ip("10.0.0.1"), cport, ip("192.0.2.10"), sport, T0)


def flow6(flow_id: int = 2, cport: int = 50001, sport: int = 443) -> FlowInfo:
    return FlowInfo(flow_id, 6, ip("2001:db8::1"), cport, ip("2001:db8::2"), sport, T0)


#: flow_id → the flow log annotations of a conversation, filled by run() (the synthetic description)
_RECORDS: dict[int, dict] = {}


def record_for(info: FlowInfo, ts_ns: int | None = None):  # type: ignore[no-untyped-def]
    return summary_for(info, ts_end_ns=ts_ns)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


def conversation(info: FlowInfo, exchanges: list[tuple[Direction, bytes]], ended_by: str = "fin"):
    events = [PlaintextData(info, d, data, T0 + i * 1000) for i, (d, data) in enumerate(exchanges)]
    finished = FlowFinished(info, ended_by, record_for(info))
    record = _RECORDS[info.flow_id] = {}
    return events + [finished], record


def run(events, options: SyntheticOptions = SyntheticOptions(), synth: SyntheticFlows | None = None) -> list[OutputFrame]:
    synth = synth or SyntheticFlows(options)
    out: list[OutputFrame] = []
    for event in events:
        out.extend(synth.handle(event))
        if isinstance(event, FlowFinished):
            _RECORDS.setdefault(event.flow.flow_id, {})["synthetic"] = synth.describe(event.flow.flow_id)
    return out


def parse(frames: list[OutputFrame]) -> list[Ether]:
    return [Ether(f.data) for f in frames]


def l3(pkt):
    return pkt[IP] if IP in pkt else pkt[IPv6]


def assert_checksums(frames: list[OutputFrame]) -> None:
    """scapy recomputes both checksums (fields deleted, packet rebuilt): identical bytes."""
    for frame in frames:
        pkt = Ether(frame.data)
        clone = pkt.copy()
        if IP in clone:
            del clone[IP].chksum
        del clone[TCP].chksum
        rebuilt = bytes(clone)
        assert rebuilt == frame.data, (pkt.summary(), Ether(rebuilt)[TCP].chksum, pkt[TCP].chksum)
        # and the integers verify to zero with our own checksum
        if IP in pkt:
            ip_hdr = bytes(pkt[IP])[:20]
            assert internet_checksum(ip_hdr) == 0


def walk(pkts: list[Ether], client_port: int) -> dict[Direction, bytes]:
    """Check seq/ack continuity both ways; return the reassembled payload per direction."""
    nxt: dict[Direction, int] = {}
    data = {Direction.C2S: b"", Direction.S2C: b""}
    for pkt in pkts:
        tcp = pkt[TCP]
        d = Direction.C2S if tcp.sport == client_port else Direction.S2C
        peer = d.peer
        flags = int(tcp.flags)
        body = bytes(tcp.payload)
        if flags & SYN:
            assert not body
            nxt[d] = (tcp.seq + 1) % 2**32
            if flags & ACK:
                assert tcp.ack == nxt[peer]
            else:
                assert tcp.ack == 0
            continue
        assert flags & ACK
        assert tcp.seq == nxt[d], (d, tcp.seq, nxt[d])
        assert tcp.ack == nxt[peer], (d, tcp.ack, nxt[peer])
        data[d] += body
        nxt[d] = (nxt[d] + len(body) + (1 if flags & FIN else 0)) % 2**32
    return data


def write_pcap(path, frames: list[OutputFrame]) -> None:
    with PcapWriter(path, 1) as writer:
        for frame in frames:
            writer.write(frame.timestamp_ns, frame.data)


def tshark(*args: str) -> str:
    result = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


# --- internet_checksum ----------------------------------------------------------------------


def reference_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=3000))
def test_internet_checksum_matches_reference(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00", b"\xff\xff", b"\xff\xff\xff\xff", b"\xff", b"\x01"])
def test_internet_checksum_edges(data: bytes) -> None:
    assert internet_checksum(data) == reference_checksum(data)


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_internet_checksum_continues_a_partial_sum(data: bytes, word: int) -> None:
    # the compiled checksum's ``initial``: a sum carried over from words summed before
    assert _segments.checksum(data, word) == reference_checksum(word.to_bytes(2, "big") + data)


def test_internet_checksum_rfc1071_example() -> None:
    # RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 → checksum 220d
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


@pytest.mark.parametrize("make_flow", [flow4, flow6])
def test_ack_each_segment(make_flow) -> None:
    info = make_flow()
    data = payload(10_000, 4)
    events, _ = conversation(info, [(Direction.S2C, data)])
    pkts = parse(run(events, SyntheticOptions(ack_each_segment=True)))
    for i, p in enumerate(pkts):
        if len(p[TCP].payload):
            ack = pkts[i + 1][TCP]
            assert not len(ack.payload) and int(ack.flags) == ACK and ack.sport == p[TCP].dport
            assert ack.ack == (p[TCP].seq + len(p[TCP].payload)) % 2**32
    assert walk(pkts, info.client_port)[Direction.S2C] == data


@pytest.mark.parametrize("args", [
    (b"\x00" * 65, b"\x00" * 4, b"\x00" * 4, 1, 2, 0, 0, 0x10, b"", 0),  # link header too long
    (b"", b"\x00" * 4, b"\x00" * 16, 1, 2, 0, 0, 0x10, b"", 0),  # address families differ
    (b"", b"\x00" * 5, b"\x00" * 5, 1, 2, 0, 0, 0x10, b"", 0),  # not an address
    (b"", b"\x00" * 4, b"\x00" * 4, 70000, 2, 0, 0, 0x10, b"", 0),  # port
    (b"", b"\x00" * 4, b"\x00" * 4, 1, 2, 0, 0, 0x100, b"", 0),  # flags
    (b"", b"\x00" * 4, b"\x00" * 4, 1, 2, 0, 0, 0x10, b"x" * 65516, 0),  # longer than an IPv4 packet
])
def test_compiled_frame_rejects_bad_arguments(args) -> None:
    with pytest.raises(ValueError):
        _segments.frame(*args)


@pytest.mark.parametrize("mss", [0, -1, 65516])
def test_compiled_segments_rejects_bad_mss(mss: int) -> None:
    with pytest.raises(ValueError):
        _segments.segments(b"", b"", b"\x00" * 4, b"\x00" * 4, 1, 2, 0, 0, mss, [b"data"], 0, False)


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"mtu": 67}, {"mtu": 65536}, {"server_port": 0}, {"vlan": 4095}, {"source_mac": b"\x02"}],
)
def test_options_validated(kwargs) -> None:
    with pytest.raises(ValueError):
        SyntheticOptions(**kwargs)


# --- behaviour ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_flow", [flow4, flow6])
@pytest.mark.parametrize("mtu", [1500, 9000])
def test_conversation_both_directions(make_flow, mtu: int) -> None:
    info = make_flow()
    c1, s1, c2 = payload(25_000, 1), payload(40_001, 2), payload(3, 3)
    events, record = conversation(info, [(Direction.C2S, c1), (Direction.S2C, s1), (Direction.C2S, c2)])
    synth = SyntheticFlows(SyntheticOptions(mtu=mtu))
    frames = run(events, synth=synth)
    pkts = parse(frames)

    assert_checksums(frames)
    flags = [int(p[TCP].flags) for p in pkts]
    assert flags[:3] == [SYN, SYN | ACK, ACK]
    assert flags[-4:] == [FIN | ACK, ACK, FIN | ACK, ACK]
    assert [p[TCP].sport == info.client_port for p in pkts[:3]] == [True, False, True]
    assert [p[TCP].sport == info.client_port for p in pkts[-4:]] == [True, False, False, True]

    data = walk(pkts, info.client_port)
    assert data[Direction.C2S] == c1 + c2
    assert data[Direction.S2C] == s1

    ip_header = 20 if info.ip_version == 4 else 40
    mss = mtu - ip_header - 20
    data_pkts = [p for p in pkts if len(p[TCP].payload)]
    assert all(len(p[TCP].payload) <= mss for p in data_pkts)
    assert max(len(l3(p)) for p in pkts) == mtu  # full-sized segments
    expected_segments = sum(-(-len(x) // mss) for x in (c1, s1, c2))
    assert len(data_pkts) == expected_segments
    # each event's segments are acknowledged by one pure ACK of the peer after the last (a delayed ACK)
    for i, p in enumerate(pkts):
        if len(p[TCP].payload) and int(p[TCP].flags) & PSH:
            ack = pkts[i + 1][TCP]
            assert not len(ack.payload) and int(ack.flags) == ACK and ack.sport == p[TCP].dport
            assert ack.ack == (p[TCP].seq + len(p[TCP].payload)) % 2**32
        elif len(p[TCP].payload):
            assert len(pkts[i + 1][TCP].payload)  # more of the same event follows, unacknowledged yet
    assert len(pkts) == 3 + len(data_pkts) + 3 + 4
    # PSH only on the last piece of each event
    assert sum(1 for p in data_pkts if int(p[TCP].flags) & PSH) == 3
    assert all(int(p[TCP].flags) == PSH | ACK for p in data_pkts if int(p[TCP].flags) & PSH)

    # addresses, TTL, DF, MACs, no VLAN by default
    for p in pkts:
        hdr = l3(p)
        from_client = p[TCP].sport == info.client_port
        client_ip = ipaddress.ip_address(info.client_ip).compressed
        server_ip = ipaddress.ip_address(info.server_ip).compressed
        assert (hdr.src, hdr.dst) == ((client_ip, server_ip) if from_client else (server_ip, client_ip))
        assert Dot1Q not in p
        assert (p.src, p.dst) == (
            ("02:00:00:00:00:01", "02:00:00:00:00:02") if from_client else ("02:00:00:00:00:02", "02:00:00:00:00:01")
        )
        assert p[TCP].window == 65535 and p[TCP].dataofs == 5
        if IP in p:
            assert p[IP].ttl == 64 and p[IP].flags.DF and p[IP].ihl == 5
        else:
            assert p[IPv6].hlim == 64 and p[IPv6].nh == 6
    if info.ip_version == 4:
        ids = [p[IP].id for p in pkts]
        assert ids == list(range(ids[0], ids[0] + len(ids)))

    assert record["synthetic"] == {
        "client": info.client,
        "server": info.server,
        "vlan": None,
        "source_mac": "02:00:00:00:00:01",
        "segments": expected_segments,
        "bytes_c2s": len(c1) + len(c2),
        "bytes_s2c": len(s1),
    }
    stats = synth.stats
    assert (stats.flows_started, stats.flows_closed, stats.segments) == (1, 1, expected_segments)
    assert stats.bytes == len(c1) + len(c2) + len(s1)
    assert stats.frames == len(frames)
    assert synth.open_flows == 0
    # timestamps never go backwards within a flow
    stamps = [f.timestamp_ns for f in frames]
    assert stamps == sorted(stamps) and stamps[0] == T0


def test_rst_close_and_port_rewrite_and_vlan() -> None:
    info = flow4(sport=8443)
    events, record = conversation(info, [(Direction.C2S, b"hello"), (Direction.S2C, b"world!")], ended_by="rst")
    options = SyntheticOptions(server_port=80, vlan=42, source_mac=bytes.fromhex("020000aa0001"), server_mac=bytes.fromhex("020000aa0002"))
    frames = run(events, options)
    assert_checksums(frames)
    pkts = parse(frames)
    assert all(p[Dot1Q].vlan == 42 and p[Dot1Q].type == 0x0800 for p in pkts)
    assert all(80 in (p[TCP].sport, p[TCP].dport) and 8443 not in (p[TCP].sport, p[TCP].dport) for p in pkts)
    last = pkts[-1]
    assert int(last[TCP].flags) == RST | ACK and last[TCP].sport == info.client_port
    assert not any(int(p[TCP].flags) & FIN for p in pkts)
    data = walk(pkts, info.client_port)
    assert data == {Direction.C2S: b"hello", Direction.S2C: b"world!"}
    assert pkts[0].src == "02:00:00:aa:00:01" and pkts[0].dst == "02:00:00:aa:00:02"
    assert record["synthetic"]["server"] == "192.0.2.10:80"
    assert record["synthetic"]["vlan"] == 42
    assert record["synthetic"]["source_mac"] == "02:00:00:aa:00:01"


@pytest.mark.parametrize("ended_by", ["fin", "idle", "evicted", "end_of_capture"])
def test_clean_close_for_non_rst_endings(ended_by: str) -> None:
    info = flow6()
    events, record = conversation(info, [(Direction.S2C, b"x")], ended_by=ended_by)
    pkts = parse(run(events))
    assert [int(p[TCP].flags) for p in pkts[-4:]] == [FIN | ACK, ACK, FIN | ACK, ACK]
    assert record["synthetic"]["server"] == "[2001:db8::2]:443"


def test_no_frames_without_plaintext() -> None:
    synth = SyntheticFlows()
    info = flow4()
    assert synth.handle(PlaintextData(info, Direction.C2S, b"", T0)) == []
    assert synth.handle(FlowFinished(info, "fin", record_for(info))) == []
    assert synth.describe(info.flow_id) is None
    assert synth.handle(object()) == []
    assert synth.handle("not an event") == []
    assert synth.stats.flows_started == 0 and synth.stats.flows_not_emitted == 1


def test_close_fins_open_flows() -> None:
    synth = SyntheticFlows()
    a, b = flow4(), flow6()
    run([PlaintextData(a, Direction.C2S, b"GET / HTTP/1.1\r\n\r\n", T0), PlaintextData(b, Direction.S2C, b"hi", T0 + 5)], synth=synth)
    assert synth.open_flows == 2
    frames = synth.close(T0 + 10)
    assert len(frames) == 8 and synth.open_flows == 0
    assert all(f.timestamp_ns == T0 + 10 for f in frames)
    assert synth.stats.flows_closed_at_end == 2
    assert_checksums(frames)
    assert synth.close(T0 + 20) == []


def test_fin_timestamp_from_record_ts_end() -> None:
    info = flow4()
    synth = SyntheticFlows()
    synth.handle(PlaintextData(info, Direction.C2S, b"a", T0))
    frames = synth.handle(FlowFinished(info, "idle", record_for(info, T0 + 5_000_000)))
    assert {f.timestamp_ns for f in frames} == {T0 + 5_000_000}


def test_deterministic_output_and_isn_seed() -> None:
    events, _ = conversation(flow4(), [(Direction.C2S, payload(5000)), (Direction.S2C, payload(7000))])
    first = [f.data for f in run(events)]
    events, _ = conversation(flow4(), [(Direction.C2S, payload(5000)), (Direction.S2C, payload(7000))])
    assert [f.data for f in run(events)] == first
    events, _ = conversation(flow4(), [(Direction.C2S, payload(5000)), (Direction.S2C, payload(7000))])
    seeded = run(events, SyntheticOptions(isn_seed=7))
    assert Ether(seeded[0].data)[TCP].seq != Ether(first[0])[TCP].seq
    # different flows, different ISNs
    synth = SyntheticFlows()
    assert synth.initial_sequence(flow4(1), Direction.C2S) != synth.initial_sequence(flow4(3), Direction.C2S)
    assert synth.initial_sequence(flow4(1), Direction.C2S) != synth.initial_sequence(flow4(1), Direction.S2C)


class WrappingFlows(SyntheticFlows):
    """ISNs just below 2**32 so both sequence spaces wrap."""

    def initial_sequence(self, flow: FlowInfo, direction: Direction) -> int:
        return 2**32 - 10 if direction == Direction.C2S else 2**32 - 3000


@pytest.mark.parametrize("make_flow", [flow4, flow6])
def test_sequence_wrap(make_flow) -> None:
    info = make_flow()
    c1, s1 = payload(4000, 5), payload(9000, 6)
    events, record = conversation(info, [(Direction.C2S, c1), (Direction.S2C, s1)])
    frames = run(events, synth=WrappingFlows())
    assert_checksums(frames)
    pkts = parse(frames)
    assert pkts[0][TCP].seq == 2**32 - 10
    assert any(p[TCP].seq < 10_000 for p in pkts if p[TCP].sport == info.client_port)
    assert any(p[TCP].seq < 10_000 for p in pkts if p[TCP].sport != info.client_port)
    assert walk(pkts, info.client_port) == {Direction.C2S: c1, Direction.S2C: s1}


def test_jumbo_mtu_max() -> None:
    info = flow4()
    events, _ = conversation(info, [(Direction.S2C, payload(200_000))])
    frames = run(events, SyntheticOptions(mtu=65535))
    assert_checksums(frames)
    pkts = parse(frames)
    assert max(len(p[IP]) for p in pkts) == 65535
    assert walk(pkts, info.client_port)[Direction.S2C] == payload(200_000)


def test_interleaved_flows() -> None:
    a, b = flow4(1, cport=50000), flow6(2, cport=50001)
    ea, ra = conversation(a, [(Direction.C2S, payload(3000, 1)), (Direction.S2C, payload(5000, 2))])
    eb, rb = conversation(b, [(Direction.C2S, payload(100, 3)), (Direction.S2C, payload(9000, 4))], ended_by="rst")
    mixed = [ea[0], eb[0], ea[1], eb[1], eb[2], ea[2]]
    frames = run(mixed)
    assert_checksums(frames)
    pkts = parse(frames)
    pa = [p for p in pkts if IP in p]
    pb = [p for p in pkts if IPv6 in p]
    assert walk(pa, 50000) == {Direction.C2S: payload(3000, 1), Direction.S2C: payload(5000, 2)}
    assert walk(pb, 50001) == {Direction.C2S: payload(100, 3), Direction.S2C: payload(9000, 4)}
    assert ra["synthetic"]["bytes_s2c"] == 5000 and rb["synthetic"]["bytes_c2s"] == 100


def test_per_flow_state_is_small() -> None:
    synth = SyntheticFlows()
    synth.handle(PlaintextData(flow4(), Direction.C2S, payload(100_000), T0))
    (state,) = synth._flows.values()
    assert not hasattr(state, "__dict__")
    assert all(isinstance(getattr(state, name), int) for name in state.__slots__ if name != "info")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.tuples(st.sampled_from([Direction.C2S, Direction.S2C]), st.integers(1, 5000)), min_size=1, max_size=8),
    mtu=st.integers(68, 3000),
    v6=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_random_splits_reassemble(chunks, mtu: int, v6: bool, seed: int) -> None:
    info = flow6() if v6 else flow4()
    exchanges = [(d, payload(n, seed + i)) for i, (d, n) in enumerate(chunks)]
    events, _ = conversation(info, exchanges)
    frames = run(events, SyntheticOptions(mtu=mtu, isn_seed=seed))
    assert_checksums(frames)
    pkts = parse(frames)
    data = walk(pkts, info.client_port)
    for d in Direction:
        assert data[d] == b"".join(x for dd, x in exchanges if dd == d)
    mss = mtu - (40 if v6 else 20) - 20
    assert all(len(p[TCP].payload) <= mss for p in pkts)


# --- tshark oracle -------------------------------------------------------------------------


def http_flows() -> tuple[list, list[str]]:
    """Three HTTP flows (IPv4 port 443, IPv6 port 8443, IPv4 with wrapping ISNs)."""
    events: list = []
    uris: list[str] = []
    body = payload(30_000, 9)
    for info in (flow4(1, cport=40001), flow6(2, cport=40002, sport=8443), flow4(3, cport=40003)):
        exchanges = []
        for k in range(3):
            uri = f"/flow{info.flow_id}/item{k}?q={k}"
            uris.append(uri)
            request = f"GET {uri} HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t\r\n\r\n".encode()
            response = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
            exchanges += [(Direction.C2S, request), (Direction.S2C, response + body[:5000]), (Direction.S2C, body[5000:])]
        evs, _ = conversation(info, exchanges)
        events.extend(evs)
    return events, uris


def test_tshark_sees_clean_http(tmp_path) -> None:
    events, uris = http_flows()
    synth = SyntheticFlows(SyntheticOptions(server_port=80, vlan=7))
    frames = run(events, synth=synth)
    pcap = tmp_path / "out.pcap"
    write_pcap(pcap, frames)

    bad = tshark(
        "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
        "-Y", "tcp.analysis.flags || tcp.checksum.status==0 || ip.checksum.status==0",
    )
    assert bad.strip() == ""
    good = tshark(
        "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
        "-Y", "tcp.checksum.status==1", "-T", "fields", "-e", "frame.number",
    )
    assert len(good.split()) == len(frames)

    listed = tshark("-r", str(pcap), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri")
    assert listed.split() == uris
    codes = tshark("-r", str(pcap), "-Y", "http.response", "-T", "fields", "-e", "http.response.code", "-e", "http.content_length")
    assert [line.split() for line in codes.splitlines()] == [["200", "30000"]] * len(uris)


def test_tshark_original_ports_with_decode_as_and_wrap(tmp_path) -> None:
    events, uris = http_flows()
    frames = run(events, SyntheticOptions(mtu=9000), synth=WrappingFlows(SyntheticOptions(mtu=9000)))
    pcap = tmp_path / "out.pcap"
    write_pcap(pcap, frames)
    bad = tshark(
        "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
        "-Y", "tcp.analysis.flags || tcp.checksum.status==0 || ip.checksum.status==0",
    )
    assert bad.strip() == ""
    listed = tshark(
        "-r", str(pcap), "-d", "tcp.port==443,http", "-d", "tcp.port==8443,http",
        "-Y", "http.request", "-T", "fields", "-e", "http.request.uri",
    )
    assert listed.split() == uris


# --- the segments made straight into a pcap writer's buffer (SegmentBurst, segments_pcap) ---------

_ETH = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800))[:14]
_ETH6 = _ETH[:12] + b"\x86\xdd"


def _arguments(v6: bool, mss: int, pieces: list[bytes], ack_each: bool, seq: int = 0xFFFFFF00,  # type: ignore[type-arg]
               ip_id: int = 0xFFF0) -> tuple:
    src, dst = (b"\xfd" + b"\x00" * 14 + b"\x01", b"\xfd" + b"\x00" * 14 + b"\x02") if v6 else (b"\x0a\x00\x00\x01",
                                                                                                 b"\x0a\x00\x00\x02")
    eth = _ETH6 if v6 else _ETH
    return (eth, eth[6:12] + eth[:6] + eth[12:], src, dst, 40000, 80, seq, 7, mss, pieces, ip_id, ack_each)


@settings(max_examples=200, deadline=None)
@given(st.booleans(), st.integers(1, 1460), st.lists(st.tuples(st.binary(max_size=3000), st.integers(0, 2**63 - 1)),
                                                     max_size=4),
       st.booleans(), st.booleans(), st.sampled_from([0, 40, 54, 100, 262144]), st.binary(max_size=3))
def test_segments_made_in_the_pcap_buffer_are_the_records_of_the_frames(v6: bool, mss: int, pieces: list,  # type: ignore[type-arg]
                                                                      ack_each: bool, nanosecond: bool,
                                                                      snaplen: int, before: bytes) -> None:
    """Several pieces are the frames of each piece in turn (segments() of one piece,
    from where the previous one ended); segments_pcap appends exactly what pack_pcap
    appends for them, each piece's frames at its own time (cut to snaplen, either
    timestamp resolution), after what the buffer held, and ends where segments() ends."""
    datas, stamps = [data for data, _ in pieces], [stamp for _, stamp in pieces]
    expected = bytearray(before)
    every: list[bytes] = []
    seq, ip_id, size = 0xFFFFFF00, 0xFFF0, 0
    for data, stamp in pieces:
        frames, seq, ip_id = _segments.segments(*_arguments(v6, mss, [data], ack_each, seq, ip_id))
        size += _records.pack_pcap(expected, stamp, frames, nanosecond, snaplen)
        every += frames
    arguments = _arguments(v6, mss, datas, ack_each)
    assert _segments.segments(*arguments) == (every, seq, ip_id)
    got = bytearray(before)
    assert _segments.segments_pcap(got, stamps, nanosecond, snaplen, *arguments) == (len(every), seq, ip_id, size)
    assert got == expected


class _Shrinking:
    """A stamp whose conversion empties the list it is in."""

    def __index__(self) -> int:
        _STAMPS.clear()
        return 0


_STAMPS: list[object] = []


@pytest.mark.parametrize("args", [
    (bytes(), [0], True, 100),                   # not a bytearray
    (bytearray(), [-1], True, 100),              # a negative timestamp
    (bytearray(), [0, 0], True, 100),            # a stamp per piece
    (bytearray(), ["0"], True, 100),             # not an int
    (bytearray(), 0, True, 100),                 # not a sequence
    (bytearray(), [0], True, -1),                # a negative snaplen
])
def test_segments_pcap_rejects_bad_arguments(args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((TypeError, ValueError)):
        _segments.segments_pcap(*args, *_arguments(False, 100, [b"data"], False))
    with pytest.raises(ValueError):
        _segments.segments_pcap(bytearray(), [0], True, 100, *_arguments(False, 0, [b"data"], False))  # mss 0
    with pytest.raises(TypeError):
        _segments.segments_pcap(bytearray(), [0], True, 100, *_arguments(False, 100, [b"data", 5], False))
    with pytest.raises(TypeError):
        _segments.segments(*_arguments(False, 100, b"data", False)[:9], 5, 0, False)  # pieces not a sequence


def test_segments_pcap_reads_the_stamps_once() -> None:
    """Converting a stamp runs Python code that can change the list: a list that
    shrinks while it is read is an error, never a read past its new end."""
    _STAMPS[:] = [7, _Shrinking(), 9]
    with pytest.raises(ValueError, match="differ in length"):
        _segments.segments_pcap(bytearray(), _STAMPS, True, 262144, *_arguments(False, 100, [b"a", b"b", b"c"], False))
    assert _STAMPS == []


@pytest.mark.parametrize("v6", [False, True])
def test_a_plaintext_event_s_burst_is_made_once_whichever_output_takes_it_first(v6: bool) -> None:
    """SyntheticFlows describes a plaintext event's segments (SegmentBurst) and moves its
    state on at once; the frames, made for an interface or in a pcap writer's buffer,
    are the same either way, and a burst whose frames were made packs them."""
    flows = SyntheticFlows(SyntheticOptions(mtu=576))
    info = FlowInfo(1, 6 if v6 else 4, bytes(16) if v6 else b"\x0a\x00\x00\x01",
                    40000, (b"\x00" * 15 + b"\x02") if v6 else b"\x0a\x00\x00\x02", 443, 0)
    bursts = flows.bursts(PlaintextData(info, Direction.C2S, b"GET / HTTP/1.1\r\n" * 200, 1_000_000_123))
    data = bursts[-1]
    count = -(-3200 // SyntheticOptions(mtu=576).mss(6 if v6 else 4)) + 1  # the segments, then one ACK
    assert isinstance(data, SegmentBurst) and flows.stats.frames == 3 + count
    packed = bytearray()
    assert data.pack_pcap(packed, True, 262144)[0] == count
    frames = data.frames
    assert len(frames) == count and frames is data.frames  # made once
    again = bytearray()
    assert data.pack_pcap(again, True, 262144) == (count, sum(map(len, frames)))
    assert again == packed
    later = flows.bursts(PlaintextData(info, Direction.C2S, b"more", 1_000_000_124))[-1]
    assert later.frames[0][-4:] == b"more"  # the next burst starts where this one ended (seq, IP id)


def test_a_burst_that_does_not_end_where_its_connection_moved_on_is_an_error() -> None:
    burst = SegmentBurst(_arguments(False, 100, [b"x" * 250], False), (0, 0), [1], [4])
    with pytest.raises(RuntimeError, match="ended at seq"):
        burst.pack_pcap(bytearray(), True, 262144)
    with pytest.raises(RuntimeError, match="ended at seq"):
        burst.frames


# --- an engine run's events at once (bursts_all) -------------------------------------------

_RUN_FLOWS = (flow4(1), flow6(2), flow4(3, cport=50003))


@st.composite
def _engine_runs(draw):  # type: ignore[no-untyped-def]
    """Events as an engine run delivers them: plaintexts of a few flows, both directions,
    some empty, often several of a direction in a row, times not always increasing,
    and flows finishing (with RST or FIN) in between."""
    events: list[object] = []
    ts = T0
    for _ in range(draw(st.integers(0, 24))):
        info = draw(st.sampled_from(_RUN_FLOWS))
        if draw(st.integers(0, 9)) == 0:
            events.append(FlowFinished(info, draw(st.sampled_from(["fin", "rst"])), record_for(info, ts)))
            continue
        for _ in range(draw(st.integers(1, 4))):
            ts += draw(st.integers(-2000, 5000))
            events.append(PlaintextData(info, draw(st.sampled_from([Direction.C2S, Direction.S2C])),
                                        draw(st.binary(max_size=3000)), ts))
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_engine_runs(), st.sampled_from([576, 1500, 9000]), st.booleans(), st.integers(1, 6))
def test_a_run_s_events_at_once_make_the_frames_of_each_in_turn(events: list, mtu: int, ack_each: bool,  # type: ignore[type-arg]
                                                                  split: int) -> None:
    """bursts_all (the sink's call per engine run: a direction's plaintexts in a row in
    one burst) makes the very frames, at the very times, that bursts() makes for each
    event in turn: as frames, as pcap records, and the connections' state after."""
    options = SyntheticOptions(mtu=mtu, ack_each_segment=ack_each)
    one, many = SyntheticFlows(options), SyntheticFlows(options)
    each = [burst for event in events for burst in one.bursts(event)]
    together = [burst for at in range(0, len(events), split) for burst in many.bursts_all(events[at:at + split])]
    assert [pair for burst in together for pair in burst.stamped()] == \
        [pair for burst in each for pair in burst.stamped()]
    packed_each, packed_together = bytearray(), bytearray()
    for burst in each:
        burst.pack_pcap(packed_each, True, 262144)
    for burst in together:
        burst.pack_pcap(packed_together, True, 262144)
    assert packed_together == packed_each
    assert many.stats == one.stats
    assert [many.describe(info.flow_id) for info in _RUN_FLOWS] == [one.describe(info.flow_id) for info in _RUN_FLOWS]
    assert many.close(T0 + 10**12) == one.close(T0 + 10**12)


def test_consecutive_plaintexts_of_a_direction_are_one_burst_with_each_one_s_time() -> None:
    info = flow4()
    flows = SyntheticFlows(SyntheticOptions(mtu=576))
    bursts = flows.bursts_all([PlaintextData(info, Direction.S2C, b"a" * 1000, T0 + 10),
                               PlaintextData(info, Direction.S2C, b"", T0 + 15),
                               PlaintextData(info, Direction.S2C, b"b" * 10, T0 + 20),
                               PlaintextData(info, Direction.C2S, b"c", T0 + 30)])
    handshake, s2c, c2s = bursts
    assert len(handshake.frames) == 3
    # 1000 bytes: two segments and an ACK at T0+10; 10 bytes: a segment and an ACK at T0+20
    assert [ts for ts, _ in s2c.stamped()] == [T0 + 10] * 3 + [T0 + 20] * 2 and s2c.timestamp_ns == T0 + 20
    assert [ts for ts, _ in c2s.stamped()] == [T0 + 30] * 2
    assert flows.stats.segments == 4 and flows.stats.bytes == 1011
