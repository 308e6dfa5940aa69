"""Each TLS 1.2 connection's ServerHello and first client record, captured from TCP
segments (the committed captures; the oracle: the record decrypts with the key
block of the clients' own key log, a Finished message inside)."""

from __future__ import annotations

import random as _random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.engine.packets import TcpSegment, decode_tcp
from bridge.harvest import first_record
from bridge.harvest.confirm import confirm_tls12_record
from bridge.harvest.first_record import FirstRecords
from bridge.harvest.wire_search import WireHello, hellos
from bridge.secrets import CLIENT_RANDOM, TLS12, ConnectionSecrets
from tests.support.fixtures import FIXTURES, Fixture

TLS12_FIXTURES = [f for f in FIXTURES if f.name.startswith("tls12")]


def _masters(fixture: Fixture) -> dict[bytes, bytes]:
    return {entry.client_random: entry.secret for entry in fixture.entries() if entry.label == CLIENT_RANDOM}


def _segments(fixture: Fixture) -> list[TcpSegment]:
    segments = [decode_tcp(f.linktype, f.data, f.timestamp_ns) for f in fixture.frames()]
    return [s for s in segments if s is not None]


def _decrypts(record, master: bytes) -> bool:  # type: ignore[no-untyped-def]
    secrets = ConnectionSecrets(record.client_random, {CLIENT_RANDOM: master}, TLS12, record.cipher_suite)
    return confirm_tls12_record(secrets, record).ok


def test_every_tls12_connection_of_a_real_capture_is_captured_and_decrypts_with_its_key_log():
    for fixture in TLS12_FIXTURES:
        records = FirstRecords()
        named = [e for e in hellos(fixture.frames(), first_records=records) if isinstance(e, WireHello)]
        masters = _masters(fixture)
        assert len(named) == len(fixture.expected) == len(masters) == len(records) == records.counts.captured
        for hello in named:
            record = records.get(hello.client_random)
            assert record is not None, fixture.name
            assert record.content_type == 22 and record.version == 0x0303
            assert _decrypts(record, masters[hello.client_random]), fixture.name
            assert not _decrypts(record, bytes([masters[hello.client_random][0] ^ 1]) + masters[hello.client_random][1:])


def test_tls13_connections_are_left_at_their_server_hello():
    fixture = next(f for f in FIXTURES if f.name.startswith("tls13"))
    records = FirstRecords()
    list(hellos(fixture.frames(), first_records=records))
    assert len(records) == 0 and records.counts.tls13 == len(fixture.expected)


def _pieces(segments: list[TcpSegment], size: int) -> list[TcpSegment]:
    """Each payload cut in pieces of ``size`` bytes (sequence numbers following)."""
    out = []
    for segment in segments:
        if len(segment.payload) <= size:
            out.append(segment)
            continue
        for at in range(0, len(segment.payload), size):
            out.append(replace(segment, seq=(segment.seq + at) & 0xFFFFFFFF, payload=segment.payload[at : at + size],
                               flags=segment.flags & ~0x05 if at + size < len(segment.payload) else segment.flags))
    return out


def test_small_segments_out_of_order_and_retransmitted_give_the_same_record():
    fixture = TLS12_FIXTURES[0]
    whole = FirstRecords()
    for segment in _segments(fixture):
        whole.feed(segment)
    pieces = _pieces(_segments(fixture), 60)  # (the client random in the first piece, as the wire trigger needs)
    # A connection is followed from its hellos' first bytes: those come first; every other
    # piece is reordered within windows of 4 (within MAX_OUT_OF_ORDER), one of each sent twice.
    starts = [p for p in pieces if p.payload[:1] == b"\x16" and p.payload[5:6] in (b"\x01", b"\x02")]
    rest = [p for p in pieces if p not in starts]
    shuffled: list[TcpSegment] = list(starts)
    rng = _random.Random(7)
    for start in range(0, len(rest), 4):
        window = rest[start : start + 4]
        rng.shuffle(window)
        shuffled += window + window[:1]
    records = FirstRecords()
    for segment in shuffled:
        records.feed(segment)
    masters = _masters(fixture)
    assert len(records) == len(whole) == len(masters)
    for client_random, master in masters.items():
        assert records.get(client_random) == whole.get(client_random)
        assert _decrypts(records.get(client_random), master)


def test_bounds_each_overflow_is_counted_never_buffered(monkeypatch):
    fixture = TLS12_FIXTURES[0]
    segments = _segments(fixture)
    hello = next(s for s in segments if s.payload[:1] == b"\x16" and s.payload[5:6] == b"\x01")
    # a client that sends more than MAX_STREAM bytes before its ChangeCipherSpec
    monkeypatch.setattr(first_record, "MAX_STREAM", 4096)
    records = FirstRecords()
    records.feed(hello)
    junk = b"\x16\x03\x03\x3f\xff" + bytes(0x3FFF)
    seq = (hello.seq + len(hello.payload)) & 0xFFFFFFFF
    for at in range(0, len(junk), 1000):
        records.feed(replace(hello, seq=(seq + at) & 0xFFFFFFFF, payload=junk[at : at + 1000]))
    assert records.counts.over_bound == 1 and not records._flows
    # segments far ahead of the stream: at most MAX_OUT_OF_ORDER held
    records = FirstRecords()
    records.feed(hello)
    for index in range(first_record.MAX_OUT_OF_ORDER + 1):
        records.feed(replace(hello, seq=(seq + 100 + index * 10) & 0xFFFFFFFF, payload=b"x" * 10))
    assert records.counts.over_bound == 1 and not records._flows
    # more connections than followed at once: the oldest evicted
    records = FirstRecords(max_flows=3)
    for port in range(10):
        records.feed(replace(hello, sport=1000 + port))
    assert len(records._flows) == 3 and records.counts.evicted == 7


def test_a_segment_the_capture_cut_short_drops_the_connection_it_belongs_to():
    fixture = TLS12_FIXTURES[0]
    segments = _segments(fixture)
    port = next(s for s in segments if s.payload[:1] == b"\x16" and s.payload[5:6] == b"\x01").dport
    records = FirstRecords()
    for segment in segments:
        if segment.dport == port and segment.payload and records._flows and not segment.payload[5:6] == b"\x01":
            records.feed(segment, truncated=True)  # every client segment after its ClientHello
            continue
        records.feed(segment)
    assert records.counts.truncated >= 1 and len(records) < len(fixture.expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_any_bytes_after_a_client_hello(payloads):
    fixture = TLS12_FIXTURES[0]
    segments = _segments(fixture)
    hello = next(s for s in segments if s.payload[5:6] == b"\x01" and s.payload[:1] == b"\x16")
    server = next(s for s in segments if s.payload[5:6] == b"\x02" and s.payload[:1] == b"\x16")
    records = FirstRecords()
    records.feed(hello)
    client_seq = (hello.seq + len(hello.payload)) & 0xFFFFFFFF
    server_seq = server.seq
    for index, payload in enumerate(payloads):
        if index % 2:
            records.feed(replace(hello, seq=client_seq, payload=payload))
            client_seq = (client_seq + len(payload)) & 0xFFFFFFFF
        else:
            records.feed(replace(server, seq=server_seq, payload=(server.payload[:6] if index == 0 else b"") + payload))
            server_seq = (server_seq + len(payload) + (6 if index == 0 else 0)) & 0xFFFFFFFF
    assert len(records) <= 1
