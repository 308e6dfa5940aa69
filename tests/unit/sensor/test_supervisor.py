"""What ``/metrics`` says of a flood: the workers' reports as Prometheus families
(new connections per second, half-open connections, evictions by reason, memory
against the budget), read back with prometheus-client's own parser."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.sensor.config import load_config
from bridge.sensor.supervisor import Supervisor


def test_flood_counters_are_exported_per_worker():
    config = load_config(None, ["capture.interfaces=['eth1']", "keys.keylogs=['/run/keys.log']", "capture.workers=2",
                                "metrics.listen=''"])
    supervisor = Supervisor(config)
    supervisor.workers[0].counters = {
        "flows": 120_000, "half_open_flows": 4_000, "new_flows_per_second": 51_234.5, "memory_used_bytes": 30 << 20,
        "memory_limit_bytes": 64 << 20, "flows_evicted": 70_000, "flows_summarised": 90_000,
        "evicted": {"half_open": 69_990, "idle": 7, "oldest": 3},
    }
    samples = {}
    for family in text_string_to_metric_families(generate_latest(supervisor.registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    worker0, worker1 = (("worker", "0"),), (("worker", "1"),)
    assert samples[("tls_bridge_half_open_flows", worker0)] == 4_000
    assert samples[("tls_bridge_new_flows_per_second", worker0)] == 51_234
    assert samples[("tls_bridge_memory_used_bytes", worker0)] == 30 << 20
    assert samples[("tls_bridge_memory_limit_bytes", worker0)] == 64 << 20
    assert samples[("tls_bridge_flows_summarised_total", worker0)] == 90_000
    assert samples[("tls_bridge_flows_evicted_total", worker0)] == 70_000
    for reason, count in (("half_open", 69_990), ("idle", 7), ("oldest", 3)):
        assert samples[("tls_bridge_flows_evicted_by_total", (("reason", reason), ("worker", "0")))] == count
    assert samples[("tls_bridge_half_open_flows", worker1)] == 0


def test_the_budget_covers_the_capture_rings():
    import pytest

    from bridge.sensor.config import ConfigError
    from bridge.sensor.worker import capture_ring_bytes

    sources = ["capture.interfaces=['eth1', 'eth2']", "keys.keylogs=['/run/keys.log']"]
    config = load_config(None, [*sources, "capture.buffer_mb=64", "decrypt.memory_limit=268435456"])
    assert capture_ring_bytes(config) == 128 << 20
    with pytest.raises(ConfigError, match=r"\[decrypt\] memory_limit .* the capture rings 268,435,456"):
        load_config(None, [*sources, "capture.buffer_mb=128", "decrypt.memory_limit=268435456"])
