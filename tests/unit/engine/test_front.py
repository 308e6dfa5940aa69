"""The connection front (bridge.engine.lanes, the C module's _front_core.h): pending
connections kept in C until their server answers.  Whatever the clients send —
a flood of ClientHellos, SYNs alone, bytes that are not TLS, hellos split in two,
retransmissions, resets, connections answered later — every connection gets the
same events (per connection, in order) and the same flow log line as on the
Python path (``fast_path=False``), under the same bounds; and the C module's own
contract.  No root."""

from __future__ import annotations

import io
import json
import random
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bridge.capture.frames import Frame
from bridge.engine import Engine, EngineSettings, FlowFinished, FlowStarted, KeysWanted, PlaintextData
from bridge.engine._lanes import FRONT_MAX_FRAMES, Lanes
from bridge.engine.lanes import SENT_HELLO, SENT_NOTHING, SENT_OTHER, FrontEntry, LaneDecryptor
from bridge.keys.keylog import read_keylog
from bridge.keys.store import KeyStore
from bridge.outputs.flowlog import FlowLog, FlowLogSettings
from tests.support.fixtures import FIXTURES
from tests.support.flood import Flood

SERVER = "198.51.100.10"
_HELLO = None


def _hello() -> bytes:
    """curl's ClientHello record (the flood's), as the payload of one segment."""
    global _HELLO
    if _HELLO is None:
        syn, hello = Flood().connection(0, 0)
        packet = Ether(hello.data)
        _HELLO = bytes(packet[TCP].payload)
    return _HELLO


def _frame(packet, timestamp_ns: int) -> Frame:  # type: ignore[no-untyped-def]
    data = bytes(packet)
    return Frame(timestamp_ns, 1, data, len(data))


def _tcp(client: int, flags: str, seq: int, payload: bytes = b"", *, from_server: bool = False, ack: int = 0):  # type: ignore[no-untyped-def]
    host = f"10.9.{client >> 8 & 0xFF}.{client & 0xFF}"
    sport = 20000 + client % 40000
    if from_server:
        return Ether() / IP(src=SERVER, dst=host) / TCP(sport=443, dport=sport, flags=flags, seq=seq, ack=ack) / payload
    return Ether() / IP(src=host, dst=SERVER) / TCP(sport=sport, dport=443, flags=flags, seq=seq, ack=ack) / payload


def _random_hello(rng: random.Random) -> bytes:
    hello = bytearray(_hello())
    hello[11:43] = rng.randbytes(32)
    return bytes(hello)


#: How one connection goes: a list of (frame builder(client, isn, rng), gap in ns).
SHAPES = {
    "syn_hello": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 1, _random_hello(rng))],
    "syn_only": lambda c, isn, rng: [_tcp(c, "S", isn)],
    "syn_retransmitted": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "S", isn),
                                              _tcp(c, "PA", isn + 1, _random_hello(rng))],
    "syn_ack_hello": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "A", isn + 1),
                                          _tcp(c, "PA", isn + 1, _random_hello(rng))],
    "not_tls": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 1, b"GET / HTTP/1.1\r\n\r\n")],
    "hello_split": lambda c, isn, rng: (lambda h: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 1, h[:100]),
                                                   _tcp(c, "PA", isn + 101, h[100:])])(_random_hello(rng)),
    "hello_then_more": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 1, _hello()),
                                            _tcp(c, "PA", isn + 1 + len(_hello()), b"\x17\x03\x03\x00\x01x")],
    "bad_hello": lambda c, isn, rng: [_tcp(c, "S", isn),
                                      _tcp(c, "PA", isn + 1, _hello()[:60] + b"\xff" * (len(_hello()) - 60))],
    "out_of_order": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 50, _random_hello(rng))],
    "client_reset": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 1, _random_hello(rng)),
                                         _tcp(c, "R", isn + 1 + len(_hello()))],
    "answered": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "SA", 7000, from_server=True, ack=isn + 1),
                                     _tcp(c, "PA", isn + 1, _random_hello(rng))],
    "answered_late": lambda c, isn, rng: [_tcp(c, "S", isn), _tcp(c, "PA", isn + 1, _random_hello(rng)),
                                          _tcp(c, "A", 7001, from_server=True, ack=isn + 1 + len(_hello()))],
    "many_acks": lambda c, isn, rng: [_tcp(c, "S", isn)] + [_tcp(c, "A", isn + 1)] * (FRONT_MAX_FRAMES + 1),
    "no_syn": lambda c, isn, rng: [_tcp(c, "PA", isn + 1, _random_hello(rng))],
}


def _flood(shapes: list[str], seed: int = 1, *, spacing_ns: int = 20_000) -> list[Frame]:
    """Connections of the given shapes, their frames interleaved as a busy link interleaves them."""
    rng = random.Random(seed)
    streams = []
    for client, shape in enumerate(shapes):
        isn = rng.randrange(1 << 32)
        streams.append([packet for packet in SHAPES[shape](client, isn, rng)])
    frames: list[Frame] = []
    clock = 1_700_000_000 * 10**9
    active = list(range(len(streams)))
    positions = [0] * len(streams)
    while active:
        index = rng.choice(active[:8])  # a few connections in flight at once
        frames.append(_frame(streams[index][positions[index]], clock))
        clock += spacing_ns
        positions[index] += 1
        if positions[index] == len(streams[index]):
            active.remove(index)
    return frames


def _run(frames: list[Frame], *, fast: bool, keys=KeyStore, batches: int = 0,
         log: FlowLogSettings | None = None, **config):  # type: ignore[no-untyped-def]
    """(per connection: its events in order, the flow log's lines, the engine)."""
    per_flow: dict[int, list] = defaultdict(list)
    stream = io.StringIO()
    flow_log = FlowLog(stream=stream, settings=log or FlowLogSettings(never_completed="each"))

    def output(event) -> None:  # type: ignore[no-untyped-def]
        per_flow[event.flow.flow_id].append(_describe(event))
        if isinstance(event, FlowFinished):
            flow_log.finished(event)

    config.setdefault("fast_path_after", 0)  # lanes as soon as a direction can be one: with the front's connections
    engine = Engine(keys(), EngineSettings(fast_path=fast, **config), output=output)
    if batches:
        engine.run([frames[i:i + batches] for i in range(0, len(frames), batches)])
    else:
        engine.run(frames)
    engine.finish()
    flow_log.flush_summary()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return dict(per_flow), lines, engine


def _describe(event):  # type: ignore[no-untyped-def]
    if isinstance(event, PlaintextData):
        return ("data", int(event.direction), event.timestamp_ns, event.data)
    if isinstance(event, FlowFinished):
        return ("finished", event.ended_by, event.status, event.ts_end, event.never_completed,
                event.summary.to_record())
    if isinstance(event, FlowStarted):
        return ("started", event.flow)
    if isinstance(event, KeysWanted):
        return ("keys", event.client_random, event.ended)
    raise AssertionError(event)


def _same(frames: list[Frame], *, exact: bool = True, **kwargs):  # type: ignore[no-untyped-def]
    """The fast path's events and flow log are the Python path's.  Not ``exact`` (when
    connections are evicted for max_flows while some were promoted from the front: a
    promoted connection joins the Python path's half-open ones in the activity order
    at its promotion, not at its SYN, so another one of the same age may go first):
    the same connections, each started and finished once, and the events of those
    evicted on neither path the same."""
    reference, reference_lines, python = _run(frames, fast=False, **kwargs)
    fast, fast_lines, engine = _run(frames, fast=True, **kwargs)
    stats, reference_stats = engine.decryptor.stats, python.decryptor.stats
    assert engine.counters == python.counters
    if not exact:  # (a SYN retransmitted after its connection was evicted starts another one)
        for flow in fast.values():
            assert flow[0][0] == "started" and [event[0] for event in flow].count("finished") == 1
        assert stats.segments == reference_stats.segments
        assert stats.flows == len(fast) and reference_stats.flows == len(reference)
        for flow_id in fast.keys() & reference.keys():
            if fast[flow_id][-1][1] != "evicted" and reference[flow_id][-1][1] != "evicted":
                assert [e for e in fast[flow_id] if e[0] == "data"] == [e for e in reference[flow_id] if e[0] == "data"]
        return engine, fast, fast_lines
    assert fast == reference
    key = lambda line: (line.get("flow_id", 0), json.dumps(line, sort_keys=True))  # noqa: E731
    assert sorted(fast_lines, key=key) == sorted(reference_lines, key=key)
    for name in ("flows", "flows_evicted", "evicted", "evicted_for_memory", "flows_idle", "statuses", "segments"):
        assert getattr(stats, name) == getattr(reference_stats, name), name
    return engine, fast, fast_lines


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_as_the_python_path(shape: str) -> None:
    engine, events, lines = _same(_flood([shape] * 30 + ["syn_hello"] * 30))
    decryptor = engine.decryptor
    assert isinstance(decryptor, LaneDecryptor)
    assert len(events) == 60 and all(flow[0][0] == "started" and flow[-1][0] == "finished" for flow in events.values())
    assert decryptor.lanes.front_pending == 0 and decryptor.lanes.front_bytes == 0


def test_a_flood_never_becomes_python_flows() -> None:
    """The feature: SYN + ClientHello never answered stays at the front until its end."""
    frames = _flood(["syn_hello"] * 500)
    engine = Engine(KeyStore(), EngineSettings(), output=lambda event: None)
    engine.run(frames)
    decryptor = engine.decryptor
    assert decryptor.half_open_flows == decryptor.lanes.front_pending == 500
    assert not decryptor._half_open and not decryptor._flows and decryptor.front_promoted == 0
    assert decryptor.lane_frames == len(frames)
    assert 500 * 500 < decryptor.lanes.front_bytes < 500 * 1024  # the frames (SYN and hello) and a little
    engine.finish()
    assert decryptor.lanes.front_pending == 0 and decryptor.lanes.front_bytes == 0
    assert decryptor.stats.statuses == {"partial": 500} and decryptor.stats.flows == 500


def test_answered_connections_are_promoted_at_the_server_s_first_frame() -> None:
    frames = _flood(["answered"] * 20 + ["answered_late"] * 20)
    engine, _, _ = _same(frames)
    assert engine.decryptor.front_promoted == 40


def test_the_summary_and_its_sample_as_the_python_path() -> None:
    frames = _flood(["syn_hello"] * 300 + ["syn_only"] * 100 + ["not_tls"] * 20, seed=3)
    _, _, lines = _same(frames, log=FlowLogSettings(never_completed_sample=7))
    summary = [line for line in lines if line.get("summary") == "never_completed"]
    assert summary and sum(line["connections"] for line in summary) == 400
    assert sum(line["sampled"] for line in summary) == 7


def test_real_connections_inside_a_flood_decrypt_as_on_the_python_path() -> None:
    flood = Flood()
    real = [frame for fixture in FIXTURES[:4] for frame in fixture.frames()]
    frames: list[Frame] = []
    for index in range(2000):
        frames.extend(flood.connection(index, 1_700_000_000 * 10**9 + index * 10_000))
        if index % 10 == 0 and real:
            frame = real.pop(0)
            frames.append(Frame(frames[-1].timestamp_ns, frame.linktype, frame.data, frame.orig_len))
    for frame in real:
        frames.append(Frame(frames[-1].timestamp_ns, frame.linktype, frame.data, frame.orig_len))
    def keys() -> KeyStore:  # a store each (the secrets of a finished connection are forgotten)
        store = KeyStore()
        for fixture in FIXTURES[:4]:
            for entry in read_keylog(fixture.keylog):
                store.add_entry(entry)
        return store

    engine, events, _ = _same(frames, keys=keys)
    decrypted = [flow for flow in events.values() if any(event[0] == "data" for event in flow)]
    assert len(decrypted) >= 4


def test_a_client_random_with_secrets_gets_its_line_through_the_python_path() -> None:
    frames = _flood(["syn_hello"] * 10)
    random_ = next(bytes(Ether(f.data)[TCP].payload)[11:43] for f in frames if bytes(Ether(f.data)[TCP].payload))
    def keys() -> KeyStore:
        store = KeyStore()
        store.add(random_, "CLIENT_TRAFFIC_SECRET_0", b"\x01" * 32)
        return store

    engine, events, lines = _same(frames, keys=keys)
    full = [line for line in lines if line.get("client_random") == random_.hex()]
    assert len(full) == 1


@pytest.mark.parametrize("max_flows", [5, 50])
def test_max_flows_evicts_half_open_connections_as_the_python_path(max_flows: int) -> None:
    frames = _flood(["syn_hello"] * 200 + ["answered"] * 10 + ["syn_only"] * 50)
    engine, _, _ = _same(frames, max_flows=max_flows, exact=False)
    stats = engine.decryptor.stats
    assert stats.evicted["half_open"] > 100 and stats.flows == 260


def test_the_memory_budget_holds_with_the_front() -> None:
    """memory_used (the front's bytes included) never passes memory_limit; evictions for memory counted."""
    from bridge.engine.decryptor import PROCESS_BYTES
    limit = PROCESS_BYTES + 65_536 * 360 + 200 * 1024  # room for about 200 pending connections
    frames = _flood(["syn_hello"] * 2000, seed=5)
    seen = []
    engine = Engine(KeyStore(), EngineSettings(memory_limit=limit), output=lambda event: None)
    for start in range(0, len(frames), 50):
        engine.run([frames[start:start + 50]])
        seen.append(engine.decryptor.memory_used)
    decryptor = engine.decryptor
    assert max(seen) <= limit and decryptor.stats.memory_peak <= limit
    assert decryptor.stats.evicted_for_memory > 1000
    assert decryptor.lanes.front_bytes <= 200 * 1024 and decryptor.lanes.front_pending > 100
    engine.finish()
    assert decryptor.stats.flows == 2000


def test_idle_connections_at_the_front_expire_as_on_the_python_path() -> None:
    frames = _flood(["syn_hello"] * 20 + ["syn_only"] * 20, spacing_ns=200_000_000)  # 8 s in all
    frames += [_frame(_tcp(999, "S", 5), frames[-1].timestamp_ns + 30 * 10**9)]
    engine, events, _ = _same(frames, idle_timeout=5.0)
    assert sum(flow[-1][1] == "idle" for flow in events.values()) >= 30


@pytest.mark.parametrize("recently_closed", [0, 7, 65_536])
def test_late_frames_of_connections_ended_at_the_front_as_on_the_python_path(recently_closed: int) -> None:
    """Ended at the front (evicted for max_flows here), a connection is remembered as
    recently closed, with the Python path's (one first-in-first-out set in C): its late
    frames start no connection, unless forgotten (recently_closed of them are kept)."""
    clients = 20
    hellos = [_tcp(c, "PA", 1001, _hello()) for c in range(clients)]
    clock = 1_700_000_000 * 10**9
    frames = []
    for c in range(clients):
        for packet in (_tcp(c, "S", 1000), hellos[c]):
            frames.append(_frame(packet, clock))
            clock += 1_000_000
    for c in range(clients):  # late: the hello again, the server's SYN-ACK, a client's data
        for packet in (hellos[c], _tcp(c, "SA", 5000, from_server=True, ack=1001), _tcp(c, "PA", 1001 + len(_hello()), b"x")):
            frames.append(_frame(packet, clock))
            clock += 1_000_000
    engine, events, _ = _same(frames, max_flows=4, recently_closed=recently_closed)
    decryptor = engine.decryptor
    assert decryptor.lanes.closed_count == min(recently_closed, len(events))
    late = len(events) - clients  # connections the late frames started
    if recently_closed >= clients:
        assert late == 0
    else:
        assert late > 0


def test_the_recently_closed_are_first_in_first_out() -> None:
    lanes = Lanes(16, 0, 3)
    keys = [(A, 40000 + i, B, 443) for i in range(5)]
    for key in keys[:3]:
        lanes.closed_add(*key)
    lanes.closed_add(*keys[0])  # remembered already: keeps its place
    assert lanes.closed_count == 3
    lanes.closed_add(*keys[3])
    assert [lanes.closed_has(*key) for key in keys] == [False, True, True, True, False]
    assert lanes.closed_has(B, 443, A, 40002)  # either way round
    assert not lanes.closed_has(A, 40002, B, 444)
    with pytest.raises(ValueError):
        lanes.closed_add(A, 1, bytes(16), 2)
    off = Lanes(16)
    off.closed_add(*keys[0])
    assert off.closed_count == 0 and not off.closed_has(*keys[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=40), st.integers(0, 2**16),
       st.sampled_from([0, 1, 7, 1000]), st.sampled_from([3, 1000]), st.sampled_from([0, 2, 65_536]))
def test_any_mix_as_the_python_path(shapes: list[str], seed: int, batches: int, max_flows: int,
                                    recently_closed: int) -> None:
    _same(_flood(shapes, seed), batches=batches, max_flows=max_flows, recently_closed=recently_closed,
          exact=max_flows >= len(shapes))


# --- the C module's contract ------------------------------------------------------------------

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])


def _c_frame(flags: str, seq: int, payload: bytes = b"", *, reverse: bool = False, ts: int = 1) -> Frame:
    src, dst, sport, dport = (B, A, 443, 40000) if reverse else (A, B, 40000, 443)
    packet = Ether() / IP(src=".".join(map(str, src)), dst=".".join(map(str, dst))) / TCP(
        sport=sport, dport=dport, flags=flags, seq=seq) / payload
    return _frame(packet, ts)


def _lanes(max_pending: int = 10, max_bytes: int = 1 << 20) -> Lanes:
    lanes = Lanes(16, 64)
    lanes.front_limits(max_pending, max_bytes)
    return lanes


def test_off_without_a_front_capacity_or_limits() -> None:
    lanes = Lanes(16)
    assert lanes.front_capacity == 0 and lanes.run([_c_frame("S", 1)], 0)[:3] == (0, [], 0)
    assert lanes.take_front() is None and lanes.front_own(A, 1, B, 2) is False
    lanes = _lanes(max_pending=0)
    assert lanes.run([_c_frame("S", 1)], 0)[:3] == (0, [], 0)


def test_a_syn_and_hello_are_held_then_promoted_by_the_server() -> None:
    lanes = _lanes()
    frames = [_c_frame("S", 99, ts=5), _c_frame("PA", 100, _hello(), ts=6), _c_frame("SA", 7, reverse=True, ts=9)]
    stop, chunks, handled, closed = lanes.run(frames, 0)
    assert (stop, chunks, handled, closed) == (2, [], 2, None)
    promoted, ended, created = lanes.take_front()
    entry = FrontEntry(*promoted)
    assert ended == [] and created == 1 and lanes.front_pending == 0 and lanes.front_bytes == 0
    assert (entry.flow_id, entry.client_ip, entry.client_port, entry.server_ip, entry.server_port) == (1, A, 40000, B, 443)
    assert (entry.first_ns, entry.last_ns, entry.sent) == (5, 6, SENT_HELLO)
    assert entry.client_random == _hello()[11:43]
    assert entry.stored_frames() == [(1, 5, frames[0].data), (1, 6, frames[1].data)]
    # promoted: the connection is Python's now (its frames pass), until disowned
    assert lanes.run([frames[1]], 0)[:3] == (0, [], 0) and lanes.take_front() is None
    lanes.front_disown(A, 40000, B, 443)
    assert lanes.run([_c_frame("S", 1)], 0)[2] == 1


@pytest.mark.parametrize("frame,sent", [
    (_c_frame("PA", 100, b"hello"), SENT_OTHER),
    (_c_frame("A", 100), SENT_NOTHING),
])
def test_what_the_client_sent_is_classified(frame: Frame, sent: int) -> None:
    lanes = _lanes()
    lanes.run([_c_frame("S", 99), frame], 0)
    (entry,) = lanes.front_end(5, 0)
    assert FrontEntry(*entry).sent == sent and FrontEntry(*entry).client_random is None


@pytest.mark.parametrize("frame", [
    _c_frame("PA", 101, b"x"),  # out of order
    _c_frame("F", 100),
    _c_frame("R", 100),
    _c_frame("S", 98),  # another SYN
    _c_frame("A", 5, reverse=True),
])
def test_anything_else_promotes(frame: Frame) -> None:
    lanes = _lanes()
    stop = lanes.run([_c_frame("S", 99), frame], 0)[0]
    assert stop == 1 and lanes.take_front()[0] is not None


def test_python_s_connections_are_left_to_python() -> None:
    lanes = _lanes()
    assert lanes.front_own(A, 40000, B, 443) is True
    assert lanes.run([_c_frame("S", 1)], 0)[:3] == (0, [], 0)


def test_limits_end_the_least_recently_active() -> None:
    lanes = _lanes(max_pending=3)
    frames = [_frame(_tcp(client, "S", 1), client * 10**9) for client in range(5)]
    lanes.run(frames, 0)
    _, ended, created = lanes.take_front()
    assert created == 5 and [FrontEntry(*entry).client_port for entry in ended] == [20000, 20001]
    assert [FrontEntry(*entry).why for entry in ended] == [0, 0] and lanes.front_pending == 3
    lanes.front_limits(100, lanes.front_bytes)  # no byte to spare: each new one ends one
    lanes.run([_frame(_tcp(9, "S", 1), 9 * 10**9)], 0)
    _, ended, _ = lanes.take_front()
    assert [FrontEntry(*entry).why for entry in ended] == [1] and lanes.front_pending == 3
    expired = lanes.front_expire(4 * 10**9)
    assert [FrontEntry(*entry).client_port for entry in expired] == [20003]
    assert lanes.front_pending == 2 and len(lanes.front_end(10, 0)) == 2 and lanes.front_bytes == 0


def test_flow_ids_come_from_one_sequence() -> None:
    lanes = _lanes()
    assert lanes.allocate_id() == 1
    lanes.run([_c_frame("S", 1)], 0)
    assert lanes.allocate_id() == 3
    (entry,) = lanes.front_end(1, 0)
    assert entry[0] == 2


def test_an_entry_holds_a_bounded_number_of_frames() -> None:
    lanes = _lanes()
    frames = [_c_frame("S", 1)] + [_c_frame("A", 2)] * (FRONT_MAX_FRAMES + 3)
    stop = lanes.run(frames, 0)[0]
    assert stop == FRONT_MAX_FRAMES and len(FrontEntry(*lanes.take_front()[0]).stored_frames()) == FRONT_MAX_FRAMES


def test_limits_are_asked_for_by_the_first_frame_that_may_need_them() -> None:
    """run(frames, start, limits): limits() is called once in a run, at its first SYN or
    pending client frame, never for frames the front gives straight back to Python."""
    lanes = Lanes(16, 64)
    asked: list[int] = []

    def limits() -> tuple[int, int, int]:
        asked.append(lanes.front_pending)
        return 10, 1 << 20, 1 << 62

    assert lanes.run([_c_frame("A", 5), _c_frame("PA", 6, b"x")], 0, limits)[:3] == (0, [], 0)
    assert asked == []  # an ACK of no connection: Python's, no limits needed
    frames = [_frame(_tcp(client, "S", 1), client) for client in range(3)] + [_c_frame("A", 5)]
    assert lanes.run(frames, 0, limits)[:3] == (3, [], 3)
    assert asked == [0] and lanes.front_pending == 3  # once, before the first entry
    assert lanes.run([_frame(_tcp(0, "A", 2), 9)], 0, limits)[2] == 1 and asked == [0, 3]  # a stored client frame
    with pytest.raises(TypeError):
        lanes.run([_frame(_tcp(5, "S", 1), 9)], 0, lambda: (1, 2))
    with pytest.raises(ZeroDivisionError):
        lanes.run([_frame(_tcp(5, "S", 1), 9)], 0, lambda: 1 / 0)
    with pytest.raises(TypeError):
        lanes.run([], 0, 42)


def test_the_limits_bytes_leave_the_tables_twice() -> None:
    """limits()'s max_bytes is what is left of the budget; the C module takes its tables'
    bytes (as the run began) twice from it, as run_lanes did before asking lazily."""
    lanes = Lanes(16, 64)
    tables = lanes.table_bytes
    assert lanes.run([_frame(_tcp(1, "S", 1), 1)], 0, lambda: (10, 2 * tables, 0))[2] == 0
    assert lanes.front_pending == 0  # no byte to spare: Python's
    assert lanes.run([_frame(_tcp(1, "S", 1), 1)], 0, lambda: (10, 2 * tables + 4096, 0))[2] == 1
    assert lanes.front_pending == 1
    assert lanes.run([_frame(_tcp(2, "S", 1), 2)], 0, lambda: (10, -(1 << 63), 0))[2] == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["S", "A", "PA", "SA", "R", "F", ""]), st.integers(0, 3),
                          st.integers(0, 2**32 - 1), st.binary(max_size=64), st.booleans()), max_size=40),
       st.integers(0, 6), st.integers(0, 8000), st.booleans())
def test_any_frames_neither_crash_nor_leak(steps, max_pending: int, max_bytes: int, lazy: bool) -> None:  # type: ignore[no-untyped-def]
    lanes = _lanes(max_pending, max_bytes)
    frames = [_frame(_tcp(client, flags, seq, payload, from_server=server), i)
              for i, (flags, client, seq, payload, server) in enumerate(steps)]
    # lazy: the limits asked for by the run (run_lanes' way), the same bounds
    limits = (lambda: (max_pending, max_bytes + 2 * lanes.table_bytes, 1 << 62)) if lazy else None
    start = 0
    while start < len(frames):
        stop = lanes.run(frames, start, limits)[0]
        taken = lanes.take_front()
        assert lanes.front_pending <= max_pending and lanes.front_bytes <= max(max_bytes, 0)
        if taken is not None and taken[0] is not None:
            FrontEntry(*taken[0]).stored_frames()
        start = stop + 1
    lanes.front_end(100, 0)
    assert lanes.front_pending == 0 and lanes.front_bytes == 0
