"""What a mirror port and an attacker do to a real capture: reordering,
duplication, overlaps, sequence wrap, missing segments, mid-stream pick-up,
secrets that come late or never, floods of connections, garbage, and every link
layer.  The baseline is the same capture decrypted untouched (itself checked
against tshark in test_decrypt_real)."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.capture.frames import Frame
from bridge.capture.pcapfile import read_capture
from bridge.engine.decryptor import Decryptor, NS
from bridge.engine.settings import EngineSettings
from bridge.engine.events import FlowStarted, FlowFinished, KeysWanted, PlaintextData
from bridge.errors import BridgeError
from bridge.keys.store import KeyStore
from bridge.engine.packets import ACK, FIN, PSH, SYN, TcpSegment, decode_tcp
from bridge.tls.connection import TlsConnection
from bridge.tls.state import Direction
from tests.support import tlslab
from tests.support.decrypt import DecryptResult, assert_matches_tshark, decrypt_capture, keystore_from
from tests.support.tlslab import ClientSpec

pytestmark = pytest.mark.real


@dataclasses.dataclass
class Sample:
    run: tlslab.TlsRun
    frames: list[Frame]
    segments: list[TcpSegment]
    baseline: DecryptResult

    def store(self) -> KeyStore:
        return keystore_from(self.run.keylog)

    def __repr__(self) -> str:
        return f"Sample({self.run.pcap.name}, {len(self.segments)} segments)"


def _sample(run: tlslab.TlsRun) -> Sample:
    frames = list(read_capture(run.pcap))
    segments = [s for f in frames if (s := decode_tcp(f.linktype, f.data, f.timestamp_ns)) is not None]
    baseline = decrypt_capture(run.pcap, run.keylog)
    assert baseline.statuses == ["decrypted"] * len(baseline.flows), [f.record for f in baseline.flows]
    return Sample(run, frames, segments, baseline)


@pytest.fixture(scope="module")
def tls13_sample(tmp_path_factory, nginx_curl_tools, tls_certs) -> Sample:
    """One TLS 1.3 connection, ~200 KB served: about 150 data segments."""
    files = {"/index.html": b"<html>hello</html>\n", "/big.bin": random.Random(7).randbytes(200_000)}
    run = tlslab.run_curl_nginx(tmp_path_factory.mktemp("tls13"), certs=tls_certs, tls="1.3", files=files)
    return _sample(run)


@pytest.fixture(scope="module")
def tls12_sample(tmp_path_factory, tlslab_tools, tls_certs) -> Sample:
    run = tlslab.run_openssl_sessions(
        tmp_path_factory.mktemp("tls12"), certs=tls_certs,
        clients=[ClientSpec(args=["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"])],
    )
    return _sample(run)


def decrypt_segments(segments, store: KeyStore, config: EngineSettings | None = None) -> DecryptResult:
    from tests.support.decrypt import Collector

    collector = Collector()
    decryptor = Decryptor(store, config)
    for segment in segments:
        for event in decryptor.process(segment):
            collector(event)
    for event in decryptor.finish():
        collector(event)
    return collector.result


def _same_plaintext(result: DecryptResult, baseline: DecryptResult) -> None:
    assert len(result.flows) == len(baseline.flows)
    for flow, expected in zip(result.flows, baseline.flows):
        assert flow.record["status"] == "decrypted", flow.record
        assert flow.c2s == expected.c2s
        assert flow.s2c == expected.s2c


def _handshake_length(segments: list[TcpSegment]) -> int:
    """Index after the TCP three-way handshake."""
    return next(i for i, s in enumerate(segments) if s.payload)


# --- reordering, duplication, overlap (hypothesis over a real capture) -----------------

def _split_overlapping(segment: TcpSegment, rnd: random.Random) -> list[TcpSegment]:
    payload = segment.payload
    if len(payload) < 4:
        return [segment]
    cut_end = rnd.randrange(1, len(payload))
    cut_start = rnd.randrange(0, cut_end)  # the second piece re-sends payload[cut_start:cut_end]
    first = dataclasses.replace(segment, payload=payload[:cut_end], flags=segment.flags & ~FIN)
    second = dataclasses.replace(segment, payload=payload[cut_start:], seq=(segment.seq + cut_start) % 2**32)
    return [first, second]


def _mangle(segments: list[TcpSegment], rnd: random.Random, window: int) -> list[TcpSegment]:
    start = _handshake_length(segments)
    body: list[TcpSegment] = []
    for segment in segments[start:]:
        pieces = _split_overlapping(segment, rnd) if rnd.random() < 0.2 else [segment]
        body.extend(pieces)
        if rnd.random() < 0.15:
            body.append(rnd.choice(pieces))  # duplicate (retransmission)
    for i in range(len(body)):  # local shuffle: each segment moves by at most `window`
        j = min(len(body) - 1, i + rnd.randrange(window))
        body[i], body[j] = body[j], body[i]
    return segments[:start] + body


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), window=st.integers(1, 12))
def test_reorder_duplicate_overlap_give_the_same_plaintext(tls13_sample, seed, window):
    # The server's RST after its FIN (nginx answers data after close so) gets reordered too.
    segments = tls13_sample.segments + [_reset_from_server(tls13_sample.segments)]
    mangled = _mangle(segments, random.Random(seed), window)
    _same_plaintext(decrypt_segments(mangled, tls13_sample.store()), tls13_sample.baseline)


def test_sequence_numbers_wrapping_around(tls13_sample):
    segments = tls13_sample.segments
    client = (segments[0].src, segments[0].sport)
    shift = {}
    for segment in segments:
        if segment.flags & SYN:
            direction = (segment.src, segment.sport) == client
            shift[direction] = (2**32 - 700 - segment.seq) % 2**32  # wraps ~700 bytes into the stream
    wrapped = []
    for segment in segments:
        direction = (segment.src, segment.sport) == client
        wrapped.append(dataclasses.replace(
            segment,
            seq=(segment.seq + shift[direction]) % 2**32,
            ack=(segment.ack + shift[not direction]) % 2**32 if segment.flags & ACK else segment.ack,
        ))
    assert any(s.seq < 1000 for s in wrapped[3:]) and any(s.seq > 2**32 - 1000 for s in wrapped[3:])
    _same_plaintext(decrypt_segments(wrapped, tls13_sample.store()), tls13_sample.baseline)


# --- missing data ----------------------------------------------------------------------

def _s2c_data_indices(segments: list[TcpSegment]) -> list[int]:
    client = (segments[0].src, segments[0].sport)
    return [i for i, s in enumerate(segments) if s.payload and (s.src, s.sport) != client]


def test_missing_segment_marks_gap_and_keeps_the_prefix(tls13_sample):
    segments = list(tls13_sample.segments)
    victim = _s2c_data_indices(segments)[len(_s2c_data_indices(segments)) // 2]
    del segments[victim]
    [flow] = decrypt_segments(segments, tls13_sample.store()).flows
    [expected] = tls13_sample.baseline.flows
    assert flow.record["status"] == "gap", flow.record
    assert "missing" in flow.record["reason"] and "later records skipped" in flow.record["reason"]
    assert flow.record["s2c"]["gap_bytes"] == 1448 or flow.record["s2c"]["gap_bytes"] > 0
    assert flow.c2s == expected.c2s
    assert 0 < len(flow.s2c) < len(expected.s2c) and expected.s2c.startswith(flow.s2c)


def test_capture_cut_inside_a_record_is_partial(tls13_sample):
    segments = tls13_sample.segments
    indices = _s2c_data_indices(segments)
    # a segment in the middle of the download that does not start a record: cut before it
    cut_at = next(i for i in indices[len(indices) // 2:] if segments[i].payload[:3] != b"\x17\x03\x03")
    cut = segments[:cut_at]
    [flow] = decrypt_segments(cut, tls13_sample.store()).flows
    assert flow.record["status"] == "partial", flow.record
    assert "ended inside a record" in flow.record["reason"]
    assert tls13_sample.baseline.flows[0].s2c.startswith(flow.s2c)


def test_connection_picked_up_mid_stream(tls13_sample):
    segments = tls13_sample.segments
    late = segments[_s2c_data_indices(segments)[10]:]
    result = decrypt_segments(late, tls13_sample.store())
    [flow] = result.flows
    assert flow.record["status"] == "no_handshake", flow.record
    assert "mid-stream" in flow.record["reason"]
    assert flow.c2s == b"" and flow.s2c == b""


# --- secrets that come late, or never ------------------------------------------------------

def test_secrets_arriving_after_the_packets(tls13_sample):
    store = KeyStore()
    decryptor = Decryptor(store, EngineSettings(key_wait=60))
    events = []
    for segment in tls13_sample.segments:
        events += decryptor.process(segment)
    assert not any(isinstance(e, (PlaintextData, FlowFinished)) for e in events)
    assert decryptor.waiting_flows == 1 and decryptor.budget.used > 200_000
    for entry_store in [tls13_sample.store()]:
        for random_, keyset in entry_store._entries.items():
            for label, secret in keyset.secrets.items():
                store.add(random_, label, secret)
    events += decryptor.keys_arrived()
    finished = [e for e in events if isinstance(e, FlowFinished)]
    assert [e.record["status"] for e in finished] == ["decrypted"]
    # Released in the order of the wire: each request before its response, with
    # the capture time of the record, not the time the secrets came.
    plaintext = [e for e in events if isinstance(e, PlaintextData)]
    assert plaintext[0].direction is Direction.C2S and plaintext[0].data.startswith(b"GET /index.html")
    assert plaintext[1].direction is Direction.S2C and plaintext[1].data.startswith(b"HTTP/1.1 200 OK")
    stamps = [e.timestamp_ns for e in plaintext]
    assert stamps == sorted(stamps) and stamps[-1] <= tls13_sample.segments[-1].timestamp_ns
    s2c = b"".join(e.data for e in events if isinstance(e, PlaintextData) and e.direction is Direction.S2C)
    assert s2c == tls13_sample.baseline.flows[0].s2c
    assert decryptor.budget.used == 0 and decryptor.waiting_flows == 0


@pytest.mark.parametrize("request_keys", [True, False])
def test_a_connection_without_secrets_asks_for_them_once(tls13_sample, request_keys):
    decryptor = Decryptor(KeyStore(), EngineSettings(key_wait=60), request_keys=request_keys)
    events = []
    for segment in tls13_sample.segments:
        events += decryptor.process(segment)
    events += decryptor.finish()
    wanted = [e for e in events if isinstance(e, KeysWanted)]
    if not request_keys:
        assert not wanted and decryptor.stats.keys_wanted == 0
        return
    [want, end] = wanted
    assert not want.ended and end.ended and end.client_random == want.client_random and end.flow == want.flow
    assert events.index(end) < events.index(next(e for e in events if isinstance(e, FlowFinished)))
    [finished] = [e for e in events if isinstance(e, FlowFinished)]
    assert want.client_random.hex() == finished.record["client_random"] and want.flow == finished.flow
    assert (want.flow.client_port, want.flow.server_port) == (tls13_sample.segments[0].sport,
                                                               tls13_sample.segments[0].dport)
    assert decryptor.stats.keys_wanted == 1  # connections asked for
    # asked as soon as the ClientHello was parsed: before the server's first record
    assert isinstance(events[0], FlowStarted) and events.index(want) == 1
    first_server_payload = next(i for i, segment in enumerate(tls13_sample.segments)
                                if segment.payload and segment.sport == want.flow.server_port)
    asked_at = Decryptor(KeyStore(), EngineSettings(), request_keys=True)
    for index, segment in enumerate(tls13_sample.segments):
        if any(isinstance(e, KeysWanted) for e in asked_at.process(segment)):
            assert index < first_server_payload
            break
    else:
        raise AssertionError("no KeysWanted")


def test_a_connection_whose_secrets_are_there_asks_for_nothing(tls13_sample):
    decryptor = Decryptor(tls13_sample.store(), EngineSettings(), request_keys=True)
    events = []
    for segment in tls13_sample.segments:
        events += decryptor.process(segment)
    assert not any(isinstance(e, KeysWanted) for e in events) and decryptor.stats.keys_wanted == 0


def test_secrets_that_never_arrive_expire(tls13_sample):
    decryptor = Decryptor(KeyStore(), EngineSettings(key_wait=2))
    events = []
    for segment in tls13_sample.segments:
        events += decryptor.process(segment)
    events += decryptor.tick(tls13_sample.segments[-1].timestamp_ns + 3 * NS)
    [finished] = [e for e in events if isinstance(e, FlowFinished)]
    assert finished.record["status"] == "no_keys"
    assert "did not arrive within 2 s" in finished.record["reason"]
    assert decryptor.budget.used == 0 and decryptor.active_flows == 0


# --- floods ------------------------------------------------------------------------------------

def _replicate(segments: list[TcpSegment], copies: int) -> list[TcpSegment]:
    client_port = segments[0].sport
    out = []
    for copy in range(copies):
        port = 20000 + copy
        offset = copy * 1000
        for segment in segments:
            out.append(dataclasses.replace(
                segment,
                sport=port if segment.sport == client_port else segment.sport,
                dport=port if segment.dport == client_port else segment.dport,
                timestamp_ns=segment.timestamp_ns + offset,
            ))
    return out


def test_memory_stays_bounded_under_a_flood_without_keys(tls13_sample):
    config = EngineSettings(max_flows=40, max_pending_total=2_000_000, max_pending_per_direction=100_000, key_wait=3600)
    decryptor = Decryptor(KeyStore(), config)
    half = tls13_sample.segments[: len(tls13_sample.segments) // 2]
    # round robin over 150 copies: all connections open at once, each in its own order
    copies = _replicate(half, 150)
    segments = [copies[copy * len(half) + step] for step in range(len(half)) for copy in range(150)]
    records = []
    peak_flows = peak_budget = 0
    for segment in segments:
        records += [e.record for e in decryptor.process(segment) if isinstance(e, FlowFinished)]
        peak_flows = max(peak_flows, decryptor.active_flows)
        peak_budget = max(peak_budget, decryptor.budget.used)
    records += [e.record for e in decryptor.finish() if isinstance(e, FlowFinished)]
    assert peak_flows <= 40
    assert peak_budget <= 2_000_000
    assert decryptor.stats.flows_evicted > 0
    # every connection is logged; later packets of an evicted one are counted and ignored
    assert len({r["client"] for r in records}) == len(records) == 150
    assert {(r["status"], r["reason"]) for r in records if r["ended_by"] == "evicted"} == {
        ("not_tls", "evicted (max flows reached) before any payload")}
    assert {r["status"] for r in records if r["ended_by"] != "evicted"} == {"no_keys"}
    assert decryptor.stats.ignored_segments > 0
    assert any("buffer" in r["reason"] for r in records)
    assert sum(r["ended_by"] == "evicted" for r in records) == decryptor.stats.flows_evicted
    assert decryptor.budget.used == 0


# --- garbage ------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_payloads_never_crash(tls12_sample, data):
    segments = list(tls12_sample.segments)
    data_indices = [i for i, s in enumerate(segments) if s.payload]
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.sampled_from(data_indices))
        payload = bytearray(segments[index].payload)
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] ^= data.draw(st.integers(1, 255))
        segments[index] = dataclasses.replace(segments[index], payload=bytes(payload))
    result = decrypt_segments(segments, tls12_sample.store())
    [flow] = result.flows
    assert flow.record["status"] in {"decrypted", "wrong_key", "partial", "not_tls", "unsupported", "gap", "no_handshake", "no_keys"}
    expected = tls12_sample.baseline.flows[0]
    assert expected.c2s.startswith(flow.c2s) and expected.s2c.startswith(flow.s2c)  # never garbage


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.tuples(st.sampled_from(list(Direction)), st.binary(max_size=300)), max_size=12),
       prefix=st.sampled_from([b"", b"\x16\x03\x01", b"\x16\x03\x03\x00\x30\x01", b"\x17\x03\x03", b"\x80\x2e\x01"]))
def test_random_bytes_into_a_tls_connection(chunks, prefix):
    connection = TlsConnection()
    first = True
    for direction, chunk in chunks:
        connection.receive(direction, (prefix if first else b"") + chunk)
        first = False
    status, reason = connection.status()
    assert status.value in {"not_tls", "no_handshake", "unsupported", "partial", "no_keys", "wrong_key", "gap", "decrypted"}


def test_sslv2_client_hello_is_rejected_cleanly():
    # SSLv2-compatible ClientHello (RFC 5246 appendix E.2): 2-byte length with the top bit set, type 1
    body = bytes([1, 3, 1]) + struct.pack(">HHH", 3, 0, 16) + b"\x00\x00\x2f" + bytes(16)
    hello = struct.pack(">H", 0x8000 | len(body)) + body
    connection = TlsConnection()
    assert connection.receive(Direction.C2S, hello) == []
    status, reason = connection.status()
    assert status.value == "unsupported" and "SSLv2" in reason


# --- link layers and file formats, end to end -------------------------------------------------------

def _relink(frames: list[Frame], kind: str) -> list[Frame]:
    out = []
    for frame in frames:
        ethernet, ethertype, ip = frame.data[:12], frame.data[12:14], frame.data[14:]
        if kind == "vlan":
            data, linktype = ethernet + b"\x81\x00" + struct.pack(">H", 42) + ethertype + ip, 1
        elif kind == "qinq":
            data, linktype = ethernet + b"\x88\xa8" + struct.pack(">H", 7) + b"\x81\x00" + struct.pack(">H", 42) + ethertype + ip, 1
        elif kind == "sll":
            data, linktype = struct.pack(">HHH", 0, 772, 6) + ethernet[6:12] + b"\x00\x00" + ethertype + ip, 113
        elif kind == "sll2":
            data, linktype = ethertype + b"\x00\x00" + struct.pack(">IHBB", 1, 772, 0, 6) + ethernet[6:12] + b"\x00\x00" + ip, 276
        elif kind == "raw":
            data, linktype = ip, 101
        else:
            raise AssertionError(kind)
        out.append(Frame(frame.timestamp_ns, linktype, data, len(data)))
    return out


@pytest.mark.parametrize("kind", ["vlan", "qinq", "sll", "sll2", "raw"])
def test_link_layers_end_to_end(tls12_sample, kind):
    from tests.support.decrypt import decrypt_frames

    result = decrypt_frames(_relink(tls12_sample.frames, kind), tls12_sample.store())
    _same_plaintext(result, tls12_sample.baseline)


@pytest.mark.parametrize("variant", ["pcapng", "big-endian-us", "nanosecond"])
def test_capture_file_formats_end_to_end(tls12_sample, tmp_path, variant):
    import subprocess

    target = tmp_path / f"capture.{variant}"
    if variant == "pcapng":
        subprocess.run(["editcap", "-F", "pcapng", str(tls12_sample.run.pcap), str(target)], check=True)
    elif variant == "nanosecond":
        subprocess.run(["editcap", "-F", "nsecpcap", str(tls12_sample.run.pcap), str(target)], check=True)
    else:
        header = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
        body = b"".join(
            struct.pack(">IIII", f.timestamp_ns // NS, f.timestamp_ns % NS // 1000, len(f.data), len(f.data)) + f.data
            for f in tls12_sample.frames
        )
        target.write_bytes(header + body)
    result = decrypt_capture(target, tls12_sample.run.keylog)
    _same_plaintext(result, tls12_sample.baseline)


def test_ipv6_session(tmp_path, tlslab_tools, tls_certs):
    run = tlslab.run_openssl_sessions(
        tmp_path, certs=tls_certs, server_args=["-6"],
        clients=[ClientSpec(args=["-tls1_3"], connect="[::1]:4433"), ClientSpec(args=["-tls1_2"], connect="[::1]:4433")],
    )
    result = decrypt_capture(run.pcap, run.keylog)
    assert result.statuses == ["decrypted", "decrypted"], [f.record for f in result.flows]
    assert all(f.record["client"].startswith("[::1]:") and f.record["server"] == "[::1]:4433" for f in result.flows)
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=2)


def test_errors_are_the_projects_own():
    assert issubclass(BridgeError, Exception)
    segment = TcpSegment(0, 4, b"\x01\x02\x03\x04", b"\x05\x06\x07\x08", 1, 2, 0, 0, PSH | ACK, 0, b"\x16\x03\x01\x00\x05hello")
    decryptor = Decryptor(KeyStore())
    decryptor.process(segment)
    [finished] = [e for e in decryptor.finish() if isinstance(e, FlowFinished)]
    assert finished.record["status"] in {"no_handshake", "partial", "not_tls"}


def test_reset_ends_the_connection(tls13_sample):
    segments = list(tls13_sample.segments)
    indices = _s2c_data_indices(segments)
    at = indices[len(indices) // 2]
    rst = dataclasses.replace(segments[at - 1], payload=b"", flags=0x04 | ACK)  # RST|ACK right there
    [flow] = decrypt_segments(segments[:at] + [rst] + segments[at:], tls13_sample.store()).flows
    assert flow.record["ended_by"] == "rst"
    assert tls13_sample.baseline.flows[0].s2c.startswith(flow.s2c) and len(flow.s2c) < len(tls13_sample.baseline.flows[0].s2c)


def _reset_from_server(segments: list[TcpSegment]) -> TcpSegment:
    """A RST|ACK from the server at the sequence number after everything it sent."""
    client = (segments[0].src, segments[0].sport)
    last = [s for s in segments if (s.src, s.sport) != client][-1]
    end = (last.seq + len(last.payload) + (1 if last.flags & FIN else 0)) % 2**32
    return dataclasses.replace(last, payload=b"", flags=0x04 | ACK, seq=end)


def test_a_reset_that_overtakes_the_last_data_waits_for_it(tls13_sample):
    """A mirror reorders: the RST can arrive before data sent before it.  Data
    still missing then (here the client's last records) is waited for."""
    segments = [s for s in tls13_sample.segments if not s.flags & FIN]
    client = (segments[0].src, segments[0].sport)
    last_bulk = max(i for i, s in enumerate(segments) if len(s.payload) > 1000 and (s.src, s.sport) != client)
    reordered = segments[:last_bulk] + [_reset_from_server(segments)] + segments[last_bulk:]
    result = decrypt_segments(reordered, tls13_sample.store())
    assert result.flows[0].record["status"] == "decrypted", {k: result.flows[0].record.get(k) for k in ("reason", "ended_by", "c2s", "s2c")}
    _same_plaintext(result, tls13_sample.baseline)
    assert result.flows[0].record["ended_by"] == "rst"


def test_after_a_reset_missing_data_is_waited_for_only_rst_grace(tls13_sample):
    segments = [s for s in tls13_sample.segments if not s.flags & FIN]
    client = (segments[0].src, segments[0].sport)
    s2c = [i for i, s in enumerate(segments) if s.payload and (s.src, s.sport) != client]
    lost = s2c[len(s2c) // 2]
    rst = _reset_from_server(segments)
    kept = segments[:lost] + segments[lost + 1:] + [rst]
    decryptor = Decryptor(tls13_sample.store(), EngineSettings(rst_grace=1.0))
    events = [e for s in kept for e in decryptor.process(s)]
    assert not any(isinstance(e, FlowFinished) for e in events) and decryptor.active_flows == 1
    assert not any(isinstance(e, FlowFinished) for e in decryptor.tick(rst.timestamp_ns + NS // 2))
    [finished] = [e for e in decryptor.tick(rst.timestamp_ns + 2 * NS) if isinstance(e, FlowFinished)]
    assert finished.record["ended_by"] == "rst" and finished.record["status"] == "gap"
    assert decryptor.active_flows == 0
