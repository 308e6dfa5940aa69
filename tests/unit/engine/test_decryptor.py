"""The decryptor under a flood: the memory budget, the order of evictions and their
counters, half-open flows, and which connections count as never completed.

On the committed captures (tshark decrypted them when they were made) and the
flood of :mod:`tests.support.flood` (curl's real ClientHello, never answered)."""

from __future__ import annotations

from bridge.engine.decryptor import CHURN, FLOW_BYTES, NS, Decryptor
from bridge.engine.events import FlowFinished, PlaintextData
from bridge.engine.packets import TcpSegment, classify
from bridge.engine.settings import EngineSettings
from bridge.keys.store import KeyStore
from tests.support.fixtures import FIXTURES, Fixture
from tests.support.flood import Flood

T0 = 1_700_000_000 * NS


def _segments(frames, *, at_ns: int | None = None) -> list[TcpSegment]:
    segments = [classify(frame.linktype, frame.data, frame.timestamp_ns) for frame in frames]
    if at_ns is not None:
        shift = at_ns - segments[0].timestamp_ns
        for segment in segments:
            object.__setattr__(segment, "timestamp_ns", segment.timestamp_ns + shift)
    return segments


def _flood(count: int, start_ns: int) -> list[TcpSegment]:
    return _segments(Flood().frames(count, start_ns=start_ns, rate=10_000))


def _store(*fixtures: Fixture) -> KeyStore:
    store = KeyStore()
    for fixture in fixtures:
        for entry in fixture.entries():
            store.add_entry(entry)
    return store


def _run(decryptor: Decryptor, segments: list[TcpSegment], events: list, *, limit: int | None = None) -> None:
    for segment in segments:
        events.extend(decryptor.process(segment))
        if limit is not None:
            assert decryptor.memory_used <= limit


def test_a_flood_is_evicted_half_open_first_and_the_budget_is_never_exceeded() -> None:
    fixture = FIXTURES[1]  # tls12-gcm-h2: one connection
    limit = 300 * 1024
    decryptor = Decryptor(_store(fixture), EngineSettings(memory_limit=limit, recently_closed=0), process_bytes=0)
    real = _segments(fixture.frames(), at_ns=T0)
    events: list = []
    _run(decryptor, real[:8], events, limit=limit)  # its handshake: answered, no longer half-open
    _run(decryptor, _flood(2_000, T0 + NS), events, limit=limit)
    _run(decryptor, real[8:], events, limit=limit)
    events.extend(decryptor.finish())
    stats = decryptor.stats
    assert stats.evicted == {"half_open": stats.flows_evicted, "idle": 0, "oldest": 0}
    assert stats.evicted_for_memory == stats.flows_evicted > 1_000
    assert limit - 4 * FLOW_BYTES < stats.memory_peak <= limit
    finished = [e for e in events if isinstance(e, FlowFinished)]
    (ours,) = [e for e in finished if e.flow.client.startswith("127.0.0.1:")]
    assert ours.status == "decrypted" and ours.ended_by != "evicted" and not ours.never_completed
    (expected,) = fixture.expected
    plaintext = b"".join(e.data for e in events if isinstance(e, PlaintextData) and e.flow.flow_id == ours.flow.flow_id
                         and e.direction == 1)
    assert ours.summary.s2c.bytes == len(plaintext) == expected["s2c"]["bytes"]
    flood = [e for e in finished if not e.flow.client.startswith("127.0.0.1:")]
    assert len(flood) == 2_000 and all(e.never_completed and e.status == "partial" for e in flood)
    assert sum(e.ended_by == "evicted" for e in flood) == stats.flows_evicted
    assert decryptor.memory_used == 0 and decryptor.active_flows == 0


def test_without_half_open_flows_the_idle_go_before_the_active() -> None:
    first, second, third = FIXTURES[1], FIXTURES[0], FIXTURES[3]
    store = _store(first, second, third)
    decryptor = Decryptor(store, EngineSettings(memory_limit=10**9, recently_closed=0, evict_idle=10.0), process_bytes=0)
    events: list = []
    a = _segments(first.frames(), at_ns=T0)
    b = _segments(second.frames(), at_ns=T0 + 20 * NS)
    c = _segments(third.frames(), at_ns=T0 + 25 * NS)
    _run(decryptor, a[:8], events)   # quiet from T0 on: idle at T0 + 25 s
    _run(decryptor, b[:8], events)   # active 5 s before: the oldest, not idle
    charged = decryptor.memory_used
    decryptor.config.memory_limit = charged + FLOW_BYTES  # the third connection's handshake does not fit
    _run(decryptor, c, events)
    assert decryptor.stats.evicted["idle"] == 1 and decryptor.stats.evicted["half_open"] == 0
    (evicted,) = [e for e in events if isinstance(e, FlowFinished) and e.ended_by == "evicted"]
    assert evicted.flow.client == first.expected[0]["client"]
    decryptor.config.memory_limit = decryptor.memory_used  # now no room for anything new either
    _run(decryptor, _segments(FIXTURES[2].frames(), at_ns=T0 + 26 * NS)[:1], events)  # its SYN
    assert decryptor.stats.evicted["oldest"] >= 1
    assert decryptor.memory_used <= decryptor.config.memory_limit


def test_max_flows_evicts_half_open_first_and_never_the_new_flow() -> None:
    fixture = FIXTURES[1]
    decryptor = Decryptor(_store(fixture), EngineSettings(max_flows=16, recently_closed=0), process_bytes=0)
    events: list = []
    _run(decryptor, _segments(fixture.frames(), at_ns=T0)[:8], events)
    _run(decryptor, _flood(40, T0 + NS), events)
    assert decryptor.active_flows == 16 and decryptor.half_open_flows == 15
    assert decryptor.stats.evicted == {"half_open": 25, "idle": 0, "oldest": 0}
    assert decryptor.stats.evicted_for_memory == 0


def test_never_completed_is_a_hello_or_nothing_without_secrets() -> None:
    fixture = FIXTURES[0]
    segments = _segments(fixture.frames(), at_ns=T0)
    with_keys = Decryptor(_store(fixture))
    without = Decryptor(KeyStore())
    hello_only = [s for s in segments if s.dport == 8443][:3]  # SYN, ACK, ClientHello
    events: list = []
    for segment in hello_only:
        events.extend(with_keys.process(segment))
    events.extend(with_keys.finish())
    assert [e.never_completed for e in events if isinstance(e, FlowFinished)] == [False]  # its secrets were there
    events = []
    for segment in segments:
        events.extend(without.process(segment))
    events.extend(without.finish())
    finished = [e for e in events if isinstance(e, FlowFinished)]
    assert len(finished) == 1 and not any(e.never_completed for e in finished)  # a whole handshake, no keys
    events = []
    syn_only = Decryptor(KeyStore())
    events.extend(syn_only.process(segments[0]))
    events.extend(syn_only.finish())
    (finished,) = [e for e in events if isinstance(e, FlowFinished)]
    assert finished.never_completed and finished.status == "not_tls"


def test_a_half_open_flow_costs_its_hello_and_no_record_layer() -> None:
    decryptor = Decryptor(KeyStore())
    for segment in _flood(1, T0):
        decryptor.process(segment)
    (flow,) = decryptor._half_open.values()
    assert tuple(flow.tls._layers) == (None, None) and flow.reassembly[1] is None
    assert flow.stats[0].sha256 is None and flow.tls.client_hello is not None
    assert decryptor.memory_used == decryptor.memory_reserved + FLOW_BYTES + int(flow.tls.client_hello.size * CHURN)


