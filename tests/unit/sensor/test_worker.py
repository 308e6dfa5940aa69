"""A worker's report under a flood: its engine's half-open connections, evictions by
reason, memory against the budget, new connections per second."""

from __future__ import annotations

from bridge.engine.engine import Engine
from bridge.engine.settings import EngineSettings
from bridge.keys.store import KeyStore
from bridge.sensor.worker import WorkerCounters, _fill, _Rate
from tests.support.flood import Flood


def test_the_report_counts_a_flood():
    settings = EngineSettings(memory_limit=96 << 20, recently_closed=0)
    engine = Engine(KeyStore(), settings)
    engine.decryptor.process_bytes = 95 << 20  # room for a few hundred connections
    engine.run(Flood().frames(3_000, start_ns=1_700_000_000 * 10**9, rate=10_000))
    counters = WorkerCounters(0, 1)
    _fill(counters, engine, [], None, None)
    decryptor = engine.decryptor
    assert counters.flows == 3_000 and counters.half_open_flows == decryptor.half_open_flows > 100
    assert counters.evicted == {"half_open": 3_000 - counters.half_open_flows, "idle": 0, "oldest": 0}
    assert counters.flows_evicted == 3_000 - counters.half_open_flows
    assert counters.memory_used_bytes == decryptor.memory_used <= counters.memory_limit_bytes == 96 << 20


def test_new_connections_per_second_between_two_reports():
    rate = _Rate()
    assert rate(1_000, 10.0) == 0.0  # the first report has nothing to compare with
    assert rate(31_000, 12.0) == 15_000.0
    assert rate(31_000, 13.0) == 0.0
