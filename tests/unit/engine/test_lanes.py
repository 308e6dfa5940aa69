"""The compiled per-packet path (bridge.engine.lanes and its C module _lanes):
the same events, in the same order and with the same times, as the Python path
(``fast_path=False``) on every committed capture, however its frames are
batched, reordered, duplicated or lost; and the C module's own contract.  No root."""

from __future__ import annotations

import random
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Dot1AD, Dot1Q, Ether

from bridge.capture.frames import Frame
from bridge.capture.pcapfile import FrameBatch, read_capture
from bridge.engine import Engine, EngineSettings, FlowFinished, FlowStarted, KeysWanted, PlaintextData
from bridge.engine._lanes import CHUNK_LIMIT, Lanes
from bridge.engine.lanes import LaneDecryptor
from bridge.engine.packets import TcpSegment, classify
from tests.support.fixtures import FIXTURES, Fixture


#: Lanes as soon as a direction can be one (fast_path_after=0): the strictest comparison,
#: every committed capture's connections on the compiled path.  By default only connections
#: that carry bulk get lanes (test_short_connections_stay_on_the_python_path_by_default).
EAGER = 0


def _events(fixture: Fixture, frames, *, fast: bool, batches: list[int] | None = None,  # type: ignore[no-untyped-def]
            after: int = EAGER):
    out: list = []
    engine = Engine(fixture.store(), EngineSettings(fast_path=fast, fast_path_after=after), output=out.append)
    if batches is None:
        engine.run(frames)
    else:
        items, start = [], 0
        for size in batches:
            items.append(list(frames[start:start + size]))
            start += size
        items.append(list(frames[start:]))
        engine.run([item for item in items if item])
    engine.finish()
    return engine, [_describe(event) for event in out]


def _describe(event):  # type: ignore[no-untyped-def]
    if isinstance(event, PlaintextData):
        return ("data", event.flow.flow_id, int(event.direction), event.timestamp_ns, event.data)
    if isinstance(event, FlowFinished):
        return ("finished", event.flow.flow_id, event.ended_by, event.summary.to_record())
    if isinstance(event, FlowStarted):
        return ("started", event.flow.flow_id)
    if isinstance(event, KeysWanted):
        return ("keys", event.flow.flow_id, event.client_random)
    raise AssertionError(event)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_same_events_as_the_python_path(fixture: Fixture) -> None:
    frames = fixture.frames()
    _, reference = _events(fixture, frames, fast=False)
    engine, fast = _events(fixture, frames, fast=True)
    assert fast == reference
    assert isinstance(engine.decryptor, LaneDecryptor)
    # the compiled path did take frames (the feature is on, not only harmless)
    assert engine.decryptor.lanes_opened > 0 and engine.decryptor.lane_frames > 0
    _, batched = _events(fixture, frames, fast=True, batches=[len(frames)])
    assert batched == reference


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_a_capture_read_in_frame_batches_gives_the_same_events(fixture: Fixture) -> None:
    """The capture reader's FrameBatches (frames read in place by the compiled path,
    made objects only for the Python path) against a list of the same frames."""
    frames = fixture.frames()
    _, reference = _events(fixture, frames, fast=False)
    out: list = []
    engine = Engine(fixture.store(), EngineSettings(fast_path_after=EAGER), output=out.append)
    batches = list(read_capture(fixture.pcap, chunk_size=4096).batches())
    assert batches and all(isinstance(batch, FrameBatch) for batch in batches)
    engine.run(batches)
    engine.finish()
    assert [_describe(event) for event in out] == reference
    assert engine.decryptor.lane_frames > 0


def test_most_frames_of_a_bulk_connection_are_taken_by_the_compiled_path() -> None:
    fixture = next(f for f in FIXTURES if f.name == "tls13-keyupdate")
    frames = fixture.frames()
    engine, _ = _events(fixture, frames, fast=True, batches=[len(frames)])
    decryptor = engine.decryptor
    assert isinstance(decryptor, LaneDecryptor)
    assert decryptor.lane_frames > len(frames) // 2, (decryptor.lane_frames, len(frames))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_short_connections_stay_on_the_python_path_by_default(fixture: Fixture) -> None:
    """A lane costs its opening, arming and closing: a connection gets its lanes once a
    direction is known to carry fast_path_after bytes (16 KiB by default).  The
    committed captures' connections are short (a request, a response of a few hundred
    bytes): no lane, every frame but the front's decoded in C for the Python path."""
    frames = fixture.frames()
    _, reference = _events(fixture, frames, fast=False)
    engine, fast = _events(fixture, frames, fast=True, after=EngineSettings().fast_path_after)
    assert fast == reference
    assert engine.decryptor.lanes_opened == 0


@pytest.mark.parametrize("fixture", FIXTURES[:2], ids=lambda f: f.name)
def test_a_connection_gets_its_lanes_once_it_carries_fast_path_after_bytes(fixture: Fixture) -> None:
    """fast_path_after within a connection's stream: its lanes open mid-stream, after
    the Python path took the bytes before; the same events as the Python path, and
    fewer frames on lanes than with lanes at once."""
    frames = fixture.frames()
    _, reference = _events(fixture, frames, fast=False)
    eager, _ = _events(fixture, frames, fast=True)
    engine, fast = _events(fixture, frames, fast=True, after=4096)
    assert fast == reference
    assert engine.decryptor.lanes_opened > 0
    assert 0 < engine.decryptor.lane_frames < eager.decryptor.lane_frames


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.randoms(use_true_random=False), st.data())
def test_same_events_whatever_the_batching_and_damage(fixture: Fixture, rng: random.Random, data) -> None:
    """Batches cut anywhere; frames swapped, duplicated and dropped: the compiled
    path refuses what is not simply in order and the Python path decides."""
    frames = fixture.frames()
    damaged = list(frames)
    for _ in range(data.draw(st.integers(0, 6), label="swaps")):
        i = rng.randrange(len(damaged) - 1)
        damaged[i], damaged[i + 1] = damaged[i + 1], damaged[i]
    for _ in range(data.draw(st.integers(0, 4), label="duplicates")):
        i = rng.randrange(len(damaged))
        damaged.insert(i, damaged[i])
    for _ in range(data.draw(st.integers(0, 2), label="drops")):
        del damaged[rng.randrange(len(damaged))]
    cuts = data.draw(st.lists(st.integers(1, 40), max_size=20), label="batches")
    after = data.draw(st.sampled_from([EAGER, 512, 2048, EngineSettings().fast_path_after]), label="fast_path_after")
    _, reference = _events(fixture, damaged, fast=False)
    _, fast = _events(fixture, damaged, fast=True, batches=cuts, after=after)
    assert_same_events(fast, reference)


def assert_same_events(fast: list, reference: list) -> None:
    """The compiled path's events are the Python path's: each connection's in the same
    order, and all but FlowStarted in the same order across connections.  A connection
    the front holds (its server has not answered) is started when it is promoted or
    ends, so its FlowStarted may come after another connection's events that the
    Python path gave after its SYN (no output reads that position: the synthetic
    builder and the flow log act on data and ends, the inline IPS finds a flow's
    connection by its addresses)."""
    def per_flow(events: list) -> dict:
        flows: dict = {}
        for event in events:
            flows.setdefault(event[1], []).append(event)
        return flows

    assert [e for e in fast if e[0] != "started"] == [e for e in reference if e[0] != "started"]
    assert per_flow(fast) == per_flow(reference)


def test_a_connection_held_at_the_front_starts_when_promoted_after_others_events() -> None:
    """The regression hypothesis found (tls12-cbc-resumed): the second connection's SYN
    comes before the first one's last FIN.  The Python path starts it at its SYN; the
    front holds the SYN until the server answers, after the first one finished."""
    fixture = next(f for f in FIXTURES if f.name == "tls12-cbc-resumed")
    damaged = list(fixture.frames())
    damaged[21], damaged[22] = damaged[22], damaged[21]
    damaged[22], damaged[23] = damaged[23], damaged[22]
    _, reference = _events(fixture, damaged, fast=False)
    _, fast = _events(fixture, damaged, fast=True)
    order = [e[:2] for e in reference if e[0] in ("started", "finished")]
    assert order == [("started", 1), ("started", 2), ("finished", 1), ("finished", 2)]
    assert [e[:2] for e in fast if e[0] in ("started", "finished")] == \
        [("started", 1), ("finished", 1), ("started", 2), ("finished", 2)]
    assert_same_events(fast, reference)


# --- the C module ---------------------------------------------------------------------------

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _frame(packet, timestamp_ns: int = 1, linktype: int = 1) -> Frame:
    return Frame(timestamp_ns, linktype, bytes(packet), len(bytes(packet)))


def _tcp(seq: int, payload: bytes = b"", flags: str = "A", src=A, dst=B, sport=40000, dport=443):  # type: ignore[no-untyped-def]
    ip = IP(src=".".join(map(str, src)), dst=".".join(map(str, dst))) if len(src) == 4 else \
        IPv6(src="fd00::1", dst="fd00::2")
    return ip / TCP(sport=sport, dport=dport, seq=seq, flags=flags) / payload


def _record(body: bytes, content_type: int = 23) -> bytes:
    return bytes([content_type, 3, 3]) + len(body).to_bytes(2, "big") + body


def _raw(handle: str, timestamp_ns: int, data: bytes) -> tuple:  # type: ignore[type-arg]
    """A chunk of stream bytes for Python to frame."""
    return (handle, timestamp_ns, None, 0, data, None)


def test_open_close_and_capacity() -> None:
    lanes = Lanes(2)
    assert lanes.capacity == 2 and len(lanes) == 0
    assert lanes.open(A, 40000, B, 443, "h1", 1000, b"", 0)
    with pytest.raises(KeyError):
        lanes.open(A, 40000, B, 443, "again", 1000, b"", 0)
    assert lanes.open(B, 443, A, 40000, "h2", 5, b"", 0)
    assert not lanes.open(A, 40001, B, 443, "h3", 5, b"", 0)  # full: stays on the Python path
    assert len(lanes) == 2
    assert lanes.close(A, 40000, B, 443) == ("h1", 1000, 0, 0, 0, 0, b"")
    assert lanes.close(A, 40000, B, 443) is None
    assert len(lanes) == 1


@pytest.mark.parametrize("args", [
    (A, 1, B + b"\x00", 2, None, 0, b"", 0),  # address families differ
    (A, 70000, B, 2, None, 0, b"", 0),  # port
    (A, 1, B, 2, None, 0, b"\x17\x03\x03\x00\x10", 0),  # five header bytes: not a partial header
    (A, 1, B, 2, None, 0, b"\x17", 5),  # a partial header and bytes remaining
])
def test_open_rejects_bad_arguments(args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        Lanes(4).open(*args)


def test_in_order_segments_become_chunks_cut_at_record_ends() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    r1, r2 = _record(b"x" * 3000), _record(b"y" * 10)
    stream = r1 + r2 + r1[:7]
    frames, seq = [], 100
    for i in range(0, len(stream), 1000):
        piece = stream[i:i + 1000]
        frames.append(_frame(Ether() / _tcp(seq, piece), timestamp_ns=i + 1))
        seq += len(piece)
    frames.append(_frame(Ether() / _tcp(7, flags="A", src=B, dst=A, sport=443, dport=40000)))  # no lane: stop
    stop, chunks, handled, closed = lanes.run(frames, 0)
    assert stop == len(frames) - 1 and handled == len(frames) - 1 and closed is None
    assert b"".join(c[4] for c in chunks) == stream
    # the first chunk ends with r1 (completed in the 4th frame, at its time), the next with r2
    assert chunks[0] == _raw("h", 3001, r1 + r2)  # both end in the 4th segment
    assert chunks[-1][4] == r1[:7]
    state = lanes.close(A, 40000, B, 443)
    assert state == ("h", (100 + len(stream)) & 0xFFFFFFFF, len(frames) - 1, len(frames) - 1, len(stream), 3001, b"")


@pytest.mark.parametrize("flags", ["S", "F", "R", "FA", "RA"])
def test_control_flags_close_the_lane_before_the_frame(flags: str) -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    frames = [_frame(Ether() / _tcp(100, _record(b"a"))), _frame(Ether() / _tcp(106, b"", flags))]
    stop, chunks, handled, closed = lanes.run(frames, 0)
    assert (stop, handled) == (1, 1)
    assert chunks == [_raw("h", 1, _record(b"a"))]
    assert closed == ("h", 106, 1, 1, 6, 1, b"")
    assert len(lanes) == 0


@pytest.mark.parametrize("seq", [99, 101, 100 + 2**31])
def test_a_segment_not_next_is_refused(seq: int) -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    stop, chunks, handled, closed = lanes.run([_frame(Ether() / _tcp(seq, b"zz"))], 0)
    assert (stop, chunks, handled) == (0, [], 0) and closed == ("h", 100, 0, 0, 0, 0, b"")


def test_pure_acks_are_taken_whatever_their_sequence_number() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    stop, chunks, handled, closed = lanes.run([_frame(Ether() / _tcp(5, b"")) for _ in range(3)], 0)
    assert (stop, chunks, handled, closed) == (3, [], 3, None)


def test_a_partial_header_handed_over_is_completed_in_c() -> None:
    lanes = Lanes(4)
    record = _record(b"q" * 50)
    lanes.open(A, 40000, B, 443, "h", 100, record[:3], 0)
    stop, chunks, handled, closed = lanes.run([_frame(Ether() / _tcp(100, record[3:]), timestamp_ns=9)], 0)
    assert chunks == [_raw("h", 9, record[3:])]  # the record's end: a chunk of its own, with its time


@pytest.mark.parametrize("wrap", [
    lambda p: Ether() / Dot1Q(vlan=7) / p,
    lambda p: Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=7) / p,
])
def test_vlan_tags(wrap) -> None:  # type: ignore[no-untyped-def]
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    stop, chunks, handled, closed = lanes.run([_frame(wrap(_tcp(100, b"abc")))], 0)
    assert handled == 1 and chunks == [_raw("h", 1, b"abc")]


@pytest.mark.parametrize("linktype, build", [
    (113, lambda p: CookedLinux(proto=0x0800) / p),
    (101, lambda p: p),
    (228, lambda p: p),
])
def test_link_types(linktype: int, build) -> None:  # type: ignore[no-untyped-def]
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    stop, chunks, handled, closed = lanes.run([_frame(build(_tcp(100, b"abc")), linktype=linktype)], 0)
    assert handled == 1 and chunks == [_raw("h", 1, b"abc")]


def test_ipv6_and_ethernet_padding() -> None:
    lanes = Lanes(4)
    six_a, six_b = bytes.fromhex("fd00" + "00" * 13 + "01"), bytes.fromhex("fd00" + "00" * 13 + "02")
    lanes.open(six_a, 40000, six_b, 443, "h6", 100, b"", 0)
    lanes.open(A, 40000, B, 443, "h4", 100, b"", 0)
    padded = bytes(Ether() / _tcp(100, b"")) + b"\x00" * 6  # a short frame padded to 60 bytes
    stop, chunks, handled, closed = lanes.run([_frame(Ether() / _tcp(100, b"v6", src=six_a)), Frame(1, 1, padded, 60)], 0)
    assert handled == 2 and chunks == [_raw("h6", 1, b"v6")]


@pytest.mark.parametrize("packet", [
    IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(sport=40000, dport=443, seq=100) / b"frag",  # fragment
    IPv6(src="fd00::1", dst="fd00::2", nh=0) / (b"\x06\x00" + b"\x00" * 6) / TCP(sport=40000, dport=443, seq=100),  # hop-by-hop
])
def test_what_the_common_path_does_not_decode_goes_to_python(packet) -> None:  # type: ignore[no-untyped-def]
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    lanes.open(bytes.fromhex("fd00" + "00" * 13 + "01"), 40000, bytes.fromhex("fd00" + "00" * 13 + "02"), 443,
               "h6", 100, b"", 0)
    assert lanes.run([_frame(Ether() / packet)], 0)[:3] == (0, [], 0)


def _segment_fields(segment) -> tuple:  # type: ignore[no-untyped-def,type-arg]
    return tuple(getattr(segment, name) for name in TcpSegment.__slots__)


def test_run_hands_python_the_frame_it_must_take_decoded() -> None:
    """With a segment class: the frame at start is Python's and nothing was done, so
    run() gives its TcpSegment (as classify makes it), or None for a frame that does
    not decode on the common path; anything done (a frame taken) gives the tuple."""
    lanes = Lanes(4, 0, 0, TcpSegment)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    other = _frame(Ether() / _tcp(7, b"hello", flags="PA", src=B, dst=A, sport=443, dport=40000), timestamp_ns=5)
    segment = lanes.run([other], 0)
    assert isinstance(segment, TcpSegment)
    assert _segment_fields(segment) == _segment_fields(classify(1, other.data, 5))
    assert lanes.run([_frame(Ether() / Dot1Q(vlan=7) / _tcp(7, b"x", src=B, dst=A, sport=443, dport=40000))], 0) is None
    assert lanes.run([Frame(1, 1, b"\x00" * 10, 10)], 0) is None  # malformed: classify says what it is
    stop, chunks, handled, closed = lanes.run([_frame(Ether() / _tcp(100, b"abc")), other], 0)
    assert (stop, handled, closed) == (1, 1, None)
    assert Lanes(4).run([other], 0) == (0, [], 0, None)  # no segment class: the tuple, as before
    with pytest.raises(TypeError):
        Lanes(4).decode(1, other.data, 5)
    with pytest.raises(TypeError):
        Lanes(4, 0, 0, "not a class")


def _frames_to_decode() -> st.SearchStrategy:  # type: ignore[type-arg]
    """Frames of every shape classify knows, built right and then damaged: cut short,
    a byte changed, link types swapped."""
    six_a, six_b = "fd00::1", "fd00::2"
    packets = [
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=443, seq=2**32 - 1, ack=77, flags="PA",
                                                 window=513) / b"payload",
        IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / TCP(flags="S", options=[("MSS", 1460)]),
        IP(src="10.0.0.1", dst="10.0.0.2", len=0) / TCP(flags="FA", reserved=1) / b"tso",
        IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP() / b"fragment",
        IP(src="10.0.0.1", dst="10.0.0.2", proto=17) / (b"\x00" * 8),
        IPv6(src=six_a, dst=six_b) / TCP(sport=1, dport=2, seq=5, flags="RA") / b"six",
        IPv6(src=six_a, dst=six_b, plen=0) / TCP() / b"jumbo",
        IPv6(src=six_a, dst=six_b, nh=0) / (b"\x06\x00" + b"\x00" * 6) / TCP(),
    ]
    wrapped = []
    ether = partial(Ether, src="02:00:00:00:00:01", dst="02:00:00:00:00:02")  # no MAC lookup
    for packet in packets:
        raw = bytes(packet)
        wrapped += [(1, bytes(ether() / packet)), (1, bytes(ether() / packet) + b"\x00" * 8),
                    (1, bytes(ether() / Dot1Q(vlan=3) / packet)), (101, raw), (228 if raw[0] >> 4 == 4 else 229, raw),
                    (113, bytes(CookedLinux(proto=0x0800 if raw[0] >> 4 == 4 else 0x86DD) / packet)),
                    (276, (0x0800 if raw[0] >> 4 == 4 else 0x86DD).to_bytes(2, "big") + b"\x00" * 18 + raw),
                    (0, (2).to_bytes(4, "little") + raw)]

    @st.composite
    def damaged(draw):  # type: ignore[no-untyped-def]
        linktype, data = draw(st.sampled_from(wrapped))
        data = bytearray(data)
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 3]))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        data = bytes(data[:draw(st.integers(0, len(data)))]) if draw(st.integers(0, 3)) == 0 else bytes(data)
        return draw(st.sampled_from([linktype] * 20 + [1, 101, 113, 228, 229, 276, 9999])), data
    return damaged()


@settings(max_examples=1500, deadline=None)
@given(_frames_to_decode(), st.integers(0, 2**62))
def test_what_c_decodes_is_what_classify_decodes(frame, timestamp_ns: int) -> None:
    """decode() (and so run()'s segment) against classify, the Python path's one
    definition: whenever C makes a segment, classify makes the same, field for field."""
    linktype, data = frame
    segment = Lanes(1, 0, 0, TcpSegment).decode(linktype, data, timestamp_ns)
    if segment is None:
        return
    assert isinstance(segment, TcpSegment)
    assert _segment_fields(segment) == _segment_fields(classify(linktype, data, timestamp_ns))


def test_chunks_are_bounded() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 0, b"", 2**16)  # inside a long record: no boundary for a while
    frames, seq = [], 0
    for _ in range(300):
        frames.append(_frame(Ether() / _tcp(seq, b"z" * 1400)))
        seq += 1400
    stop, chunks, handled, closed = lanes.run(frames, 0)
    assert handled == 300 and max(len(c[4]) for c in chunks) <= CHUNK_LIMIT
    assert sum(len(c[4]) for c in chunks) == 300 * 1400


def test_touched_reports_each_active_lane_once() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "c", 100, b"", 0)
    lanes.open(B, 443, A, 40000, "s", 7, b"", 0)
    lanes.run([_frame(Ether() / _tcp(100, b"", "A"), 5), _frame(Ether() / _tcp(100, b"", "A"), 8)], 0)
    assert lanes.touched() == [("c", 8)]
    assert lanes.touched() == []
    lanes.run([_frame(Ether() / _tcp(7, b"", "A", src=B, dst=A, sport=443, dport=40000), 9)], 0)
    lanes.close(B, 443, A, 40000)  # a closed lane leaves the list
    assert lanes.touched() == []


def test_a_frame_that_is_not_bytes_goes_to_python() -> None:
    lanes = Lanes(4)
    assert lanes.run([Frame(1, 1, bytearray(b"\x00" * 60), 60)], 0)[:3] == (0, [], 0)


def _opener(calls: list | None = None):  # type: ignore[no-untyped-def,type-arg]
    """A record opener for the tests: "P" + the fragment; None (declined) for a fragment starting with "!"."""
    def open_record(header, fragment):  # type: ignore[no-untyped-def]
        header, fragment = bytes(header), bytes(fragment)
        if calls is not None:
            calls.append((header, fragment))
        return None if fragment[:1] == b"!" else b"P" + fragment
    return open_record


def _stream_frames(stream: bytes, seq: int, size: int, first_ns: int = 1) -> list[Frame]:
    frames = []
    for i in range(0, len(stream), size):
        piece = stream[i:i + size]
        frames.append(_frame(Ether() / _tcp(seq, piece), timestamp_ns=first_ns + i))
        seq += len(piece)
    return frames


def test_an_armed_lane_gathers_and_opens_its_records_across_runs() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    calls: list = []  # type: ignore[type-arg]
    assert lanes.arm(A, 40000, B, 443, _opener(calls), b"")
    r1, r2, r3 = _record(b"x" * 3000), _record(b""), _record(b"z" * 2000)
    stream = r1 + r2 + r3
    frames = _stream_frames(stream, 100, 1000)
    # the first run ends inside r3: the lane holds what it has of it, Python gets nothing to frame
    stop, chunks, handled, closed = lanes.run(frames[:5], 0)
    assert (stop, handled, closed) == (5, 5, None)
    assert chunks == [("h", 3001, [b"P" + b"x" * 3000, b"P"], len(r1) + len(r2), b"", [3001, 3001])]  # the 4th frame
    assert lanes.held_bytes >= len(stream[:5000]) - len(r1) - len(r2)
    stop, chunks, handled, closed = lanes.run(frames[5:], 0)
    assert chunks == [("h", frames[-1].timestamp_ns, [b"P" + b"z" * 2000], len(r3), b"", [frames[-1].timestamp_ns])]
    assert calls == [(r[:5], r[5:]) for r in (r1, r2, r3)]  # the header is the AAD, the fragment a view
    assert lanes.held_bytes == 0
    assert lanes.close(A, 40000, B, 443)[1:] == ((100 + len(stream)) & 0xFFFFFFFF, 6, 6, len(stream),
                                                 frames[-1].timestamp_ns, b"")


def test_consecutive_records_of_a_lane_are_one_chunk_each_at_its_own_time_in_the_frames_order() -> None:
    """Records an armed lane completes in successive segments come in one chunk (times:
    each one's segment) until anything else goes into the run's chunks: another lane's
    records or bytes break it, so the order of everything is the frames' order."""
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "a", 100, b"", 0)
    lanes.open(A, 40001, B, 443, "b", 500, b"", 0)
    lanes.open(A, 40002, B, 443, "c", 900, b"", 0)
    assert lanes.arm(A, 40000, B, 443, _opener(), b"")
    assert lanes.arm(A, 40001, B, 443, _opener(), b"")  # "c" stays unarmed: Python frames its bytes
    a1, a2, a3, a4 = (_record(bytes([65 + i]) * 10) for i in range(4))
    b1, c1 = _record(b"b" * 10), _record(b"c" * 10)

    def seg(port: int, seq: int, data: bytes, ts: int) -> Frame:
        return _frame(Ether() / _tcp(seq, data, sport=port), timestamp_ns=ts)

    frames = [seg(40000, 100, a1, 1), seg(40000, 115, a2, 2), seg(40000, 130, a3, 3),  # one chunk of three
              seg(40001, 500, b1, 4),                                                 # b's
              seg(40000, 145, a4[:7], 5), seg(40000, 152, a4[7:], 6),                 # a again: a new chunk
              seg(40002, 900, c1, 7)]                                                 # c's bytes end a's
    stop, chunks, handled, closed = lanes.run(frames, 0)
    assert (stop, handled, closed) == (7, 7, None)
    assert chunks == [("a", 3, [b"P" + a1[5:], b"P" + a2[5:], b"P" + a3[5:]], 45, b"", [1, 2, 3]),
                      ("b", 4, [b"P" + b1[5:]], 15, b"", [4]),
                      ("a", 6, [b"P" + a4[5:]], 15, b"", [6]),
                      _raw("c", 7, c1)]


def test_arming_takes_the_bytes_python_framed_and_closing_gives_back_what_is_held() -> None:
    lanes = Lanes(4)
    record = _record(b"q" * 3000)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    lanes.run(_stream_frames(record[:1000], 100, 1000), 0)  # Python framed these (the lane was not armed)
    assert not lanes.arm(A, 40000, B, 443, _opener(), b"")  # not at a record boundary: held must say where
    assert not lanes.arm(A, 40000, B, 443, _opener(), record[:999])  # nor somewhere else
    assert lanes.arm(A, 40000, B, 443, _opener(), record[:1000])
    assert not lanes.arm(A, 40000, B, 443, _opener(), record[:1000])  # already armed
    stop, chunks, handled, closed = lanes.run(_stream_frames(record[1000:2000], 1100, 1000), 0)
    assert chunks == []
    assert lanes.close(A, 40000, B, 443)[6] == record[:2000]  # Python frames them again


def test_a_declined_record_and_what_follows_go_to_python_and_end_the_steady_state() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    assert lanes.arm(A, 40000, B, 443, _opener(), b"")
    good, declined, alert, after = _record(b"ok"), _record(b"!key update"), _record(b"a", 21), _record(b"later")
    stream = good + declined + after
    stop, chunks, handled, closed = lanes.run(_stream_frames(stream, 100, len(stream), 7), 0)
    assert chunks == [("h", 7, [b"Pok"], len(good), declined + after, [7])]
    assert lanes.held_bytes == 0
    # no longer armed: the next records are Python's to frame
    stop, chunks, handled, closed = lanes.run(_stream_frames(after, 100 + len(stream), 100, 9), 0)
    assert chunks == [_raw("h", 9, after)]
    # a record that is not application data is not offered to the opener
    assert lanes.arm(A, 40000, B, 443, _opener(), b"")
    seq = 100 + len(stream) + len(after)
    stop, chunks, handled, closed = lanes.run(_stream_frames(alert + after, seq, 100, 11), 0)
    assert chunks == [("h", 11, [], 0, alert + after, [])]


def test_the_run_ends_after_a_declined_record_so_the_lane_is_armed_again_at_once() -> None:
    """A session ticket or KeyUpdate in the middle of a batch: the run stops after its
    frame (resume: its stop is not a frame Python must take), Python frames what was
    handed over and arms the lane, and the next run opens the records in C again,
    instead of handing the rest of the batch over as bytes."""
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    assert lanes.arm(A, 40000, B, 443, _opener(), b"")
    ticket, data = _record(b"!ticket"), _record(b"d" * 500)
    frames = _stream_frames(ticket, 100, 1000, 3) + _stream_frames(data * 4, 100 + len(ticket), 1000, 5)
    stop, chunks, handled, closed = lanes.run(frames, 0)
    assert (stop, handled, closed, lanes.resume) == (1, 1, None, True)
    assert chunks == [("h", 3, [], 0, ticket, [])]
    assert lanes.arm(A, 40000, B, 443, _opener(), b"")  # Python framed the ticket: the steady state again
    stop, chunks, handled, closed = lanes.run(frames, stop)
    assert (stop, handled, closed, lanes.resume) == (len(frames), len(frames) - 1, None, False)
    assert [plaintext for chunk in chunks for plaintext in chunk[2]] == [b"P" + b"d" * 500] * 4


@pytest.mark.parametrize("name", ["tls13-http1", "tls13-keyupdate"])
def test_a_decryptor_arms_its_lanes_again_after_each_declined_record(name: str) -> None:
    """TLS 1.3's session tickets (after the server's Finished) and a KeyUpdate are
    records the opener declines: with lanes from the start, the records of application
    data after them are opened in C as well in one batch of all the frames as in runs
    of one frame each (before, none was in the batch: the lane stayed unarmed to its end)."""
    fixture = next(f for f in FIXTURES if f.name == name)
    frames = fixture.frames()
    _, reference = _events(fixture, frames, fast=False)
    one_run, fast = _events(fixture, frames, fast=True, batches=[len(frames)])
    assert fast == reference
    frame_runs, _ = _events(fixture, frames, fast=True)
    assert one_run.decryptor.records_opened == frame_runs.decryptor.records_opened > 0


@pytest.mark.parametrize("held", [_record(b"x" * 10)[:3].replace(b"\x17", b"\x15"), _record(b"x")])
def test_arm_refuses_held_bytes_that_are_not_the_start_of_a_record_of_application_data(held: bytes) -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, held[:3] if len(held) < 5 else b"", 0 if len(held) < 5 else 1)
    assert not lanes.arm(A, 40000, B, 443, _opener(), held)


def test_the_trailer_is_dropped_in_place_or_from_a_copy_when_the_result_is_shared() -> None:
    """arm(..., trailer): the last bytes of each opener result are not plaintext (TLS
    1.3's inner content type).  A result nothing else holds is shortened in place; one
    the opener keeps (shared) is copied, and stays as it was."""
    kept: list[bytes] = []

    def opener(header, fragment):  # type: ignore[no-untyped-def]
        fragment = bytes(fragment)
        if fragment[:1] == b"k":  # a result the opener keeps a reference to
            kept.append(fragment + b"\x17")
            return kept[-1]
        return fragment + b"\x17"

    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    assert lanes.arm(A, 40000, B, 443, opener, b"", 1)
    r1, r2, r3 = _record(b"x" * 3000), _record(b"kept"), _record(b"")
    stop, chunks, handled, closed = lanes.run(_stream_frames(r1 + r2 + r3, 100, 1000, 5), 0)
    assert [plaintext for chunk in chunks for plaintext in chunk[2]] == [b"x" * 3000, b"kept", b""]
    assert kept == [b"kept\x17"]  # the shared result is untouched


def test_a_result_shorter_than_the_trailer_is_an_error_and_the_trailer_is_bounded() -> None:
    lanes = Lanes(4)
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    with pytest.raises(ValueError):
        lanes.arm(A, 40000, B, 443, _opener(), b"", 17)
    assert lanes.arm(A, 40000, B, 443, _opener(), b"", 2)  # "P" + the fragment: 1 byte for an empty record
    with pytest.raises(ValueError, match="shorter than its trailer"):
        lanes.run(_stream_frames(_record(b""), 100, 100), 0)


def test_arm_needs_a_callable_and_an_open_lane() -> None:
    lanes = Lanes(4)
    assert not lanes.arm(A, 40000, B, 443, _opener(), b"")
    lanes.open(A, 40000, B, 443, "h", 100, b"", 0)
    with pytest.raises(TypeError):
        lanes.arm(A, 40000, B, 443, "not callable", b"")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 101, 113, 228, 229, 276, 0, 9999]), st.binary(max_size=120)),
                max_size=30), st.binary(min_size=4, max_size=4), st.integers(0, 2**32 - 1), st.booleans(),
       st.sampled_from([0, 1]))
def test_any_bytes_neither_crash_nor_leak_a_lane(frames, noise: bytes, seq: int, armed: bool, trailer: int) -> None:
    """Arbitrary frames, some with a lane's addresses and ports so the lane path runs
    (armed or not: the steady state's framing of arbitrary bytes; with a trailer or not)."""
    lanes = Lanes(8)
    lanes.open(A, 40000, B, 443, "h", seq, b"", 0)
    if armed:
        assert lanes.arm(A, 40000, B, 443, _opener(), b"", trailer)
    header = bytes(Ether() / _tcp(seq, b""))
    built = []
    for linktype, data in frames:
        built.append(Frame(1, linktype, data, len(data)))
        built.append(_frame(header[:len(header) - 20 + 4] + noise + data))  # right addresses, damaged TCP
        built.append(Frame(1, 1, header + data, len(header) + len(data)))
    start = 0
    while start < len(built):
        stop, chunks, handled, closed = lanes.run(built, start)
        assert start <= stop <= len(built)
        for handle, _ts, opened, used, chunk, times in chunks:
            assert handle == "h" and isinstance(chunk, bytes)
            assert (opened is None and times is None) or len(times) == len(opened)
            assert (opened is None and used == 0) or (armed and used == sum(len(p) + 4 + trailer for p in opened))
        start = stop + 1
    assert len(lanes) <= 1
    state = lanes.close(A, 40000, B, 443)
    assert state is None or len(state[6]) <= 5 + 18432 + 65535
    assert lanes.held_bytes == 0


def _copies(fixture: Fixture, count: int, head: int) -> list[Frame]:
    """``count`` copies of the fixture's connections, each on client ports of its own
    (the same secrets: the same client randoms): the first ``head`` frames of each copy,
    one copy after the other, then the rest of every copy interleaved frame by frame."""
    packets = [Ether(frame.data) for frame in fixture.frames()]
    servers = {p[TCP].dport for p in packets if p[TCP].flags == "S"}
    streams = []
    for copy in range(count):
        frames = []
        for packet in packets:
            packet = packet.copy()
            tcp = packet[TCP]
            side = "dport" if tcp.sport in servers else "sport"
            setattr(tcp, side, 1024 + (getattr(tcp, side) - 1024 + 97 * (copy + 1)) % 60000)
            del tcp.chksum
            frames.append(bytes(packet))
        streams.append(frames)
    order = [(k, i) for k in range(count) for i in range(min(head, len(streams[k])))]
    order += [(k, i) for i in range(head, max(len(s) for s in streams)) for k in range(count) if i < len(streams[k])]
    out, ts = [], 1_000_000_000
    for k, i in order:
        ts += 1000
        out.append(Frame(ts, 1, streams[k][i], len(streams[k][i])))
    return out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES[:2] + FIXTURES[3:]), st.lists(st.integers(1, 60), max_size=30))
def test_evictions_hit_lanes_in_the_steady_state_as_the_python_path(fixture: Fixture, cuts: list[int]) -> None:
    """More connections at once than max_flows, each started once the one before has
    its keys: established ones are evicted in the middle of their records, their lanes
    armed and holding an incomplete record; the same events as the Python path."""
    frames = _copies(fixture, 20, head=len(fixture.frames()) // 2)
    results = []
    for fast in (False, True):
        out: list = []
        engine = Engine(fixture.store(), EngineSettings(fast_path=fast, max_flows=16, forget_keys=False,
                                                        fast_path_after=EAGER), output=out.append)
        if fast:
            batches, start = [], 0
            for size in cuts:
                batches.append(frames[start:start + size])
                start += size
            batches.append(frames[start:])
            engine.run([batch for batch in batches if batch])
        else:
            engine.run(frames)
        engine.finish()
        results.append([_describe(event) for event in out])
        if fast:
            assert engine.decryptor.records_opened > 0
    assert results[1] == results[0]
    assert sum(1 for e in results[0] if e[0] == "finished" and e[2] == "evicted") > 0
