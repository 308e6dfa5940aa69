"""One sensor worker process: its share of the captured packets (AF_PACKET fanout
by flow hash), its own key sources and store, its engine, its synthetic
connections on the injection interface, its lines in the (shared) flow log.
Counters go to the supervisor once a second.  The same parts as ``tls-bridge
decrypt``, wired from the TOML configuration."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.capture.frames import Frame
from bridge.engine.runtime import tune_runtime
from bridge.engine.engine import Engine
from bridge.engine.lanes import LaneDecryptor
from bridge.keyfeed.sources import KeySettings, KeySources
from bridge.outputs import FlowLog, KeyRequester, Outputs
from bridge.reinject.sink import ReinjectSettings, open_reinject
from bridge.sensor.config import Config

FANOUT_BASE = 0x7B00  # fanout group ids: base + interface index (per interface, per network namespace)


@dataclass(slots=True)
class WorkerCounters:
    worker: int
    pid: int
    packets: int = 0
    tcp_segments: int = 0
    malformed: int = 0
    flows: int = 0
    active_flows: int = 0
    waiting_for_keys: int = 0
    key_wait_expired: int = 0
    flows_evicted: int = 0
    #: Evictions by reason (bridge.engine.decryptor.EVICTION_REASONS).
    evicted: dict[str, int] = field(default_factory=dict)
    half_open_flows: int = 0
    #: New connections per second over the last report's interval.
    new_flows_per_second: float = 0.0
    memory_used_bytes: int = 0
    memory_limit_bytes: int = 0
    #: Never-completed connections counted in the flow log's summary lines only.
    flows_summarised: int = 0
    plaintext_bytes: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    capture_drops: int = 0
    injected_frames: int = 0
    inject_dropped: int = 0
    feed_records: int = 0
    feed_malformed: int = 0
    feed_lost: int = 0
    key_requests: int = 0
    #: Frames the compiled path took (lanes and the connection front), records of application data it opened.
    fast_path_frames: int = 0
    fast_path_records: int = 0
    #: name → Histogram.as_dict() (see bridge.histogram), cumulative since the worker started.
    histograms: dict[str, dict[str, Any]] = field(default_factory=dict)


def _merged(captures: list[Any], stop: threading.Event) -> Iterator[Sequence[Frame] | None]:
    """The captures' frames in batches (a ring block each, read in place by the
    engine's compiled path), ``None`` on a quiet link."""
    if len(captures) == 1:
        yield from captures[0].batches()
        return
    batches: queue.Queue[Sequence[Frame]] = queue.Queue(maxsize=1024)

    def pump(capture: Any) -> None:
        for batch in capture.batches():
            if batch is not None:
                batches.put(batch)

    for capture in captures:
        threading.Thread(target=pump, args=(capture,), daemon=True).start()
    while not stop.is_set():
        try:
            yield batches.get(timeout=0.2)
        except queue.Empty:
            yield None


def reinject_settings(config: Config, index: int) -> ReinjectSettings:
    """The sensor's ``[inject]`` section for worker ``index`` (a pcap per worker: NAME.INDEX.pcap)."""
    inject = config.inject
    pcap = None
    if inject.pcap:
        base, dot, extension = inject.pcap.rpartition(".")
        pcap = f"{base}.{index}.{extension}" if dot else f"{inject.pcap}.{index}"
    return ReinjectSettings(pcap=pcap, interface=inject.interface or None, mtu=inject.mtu,
                            server_port=inject.server_port or None, mark_mac=inject.mark_mac,
                            vlan=inject.vlan or None)


def key_settings(config: Config) -> KeySettings:
    keys = config.keys
    return KeySettings(keylogs=list(keys.keylogs), follow=True, feeds=list(keys.feeds), server_key=keys.server_key,
                       client_cert=keys.client_cert, insecure=keys.insecure, window=keys.window, ttl=keys.ttl,
                       request=keys.request)


def run_worker(config_data: dict[str, dict[str, Any]], index: int, connection: Any) -> None:
    """The worker's main (a process of its own): runs until SIGTERM or SIGINT."""
    from bridge.capture.afpacket import AfPacketCapture

    config = Config.from_dict(config_data)
    tune_runtime()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    keys = KeySources(key_settings(config)).open()
    receiver = keys.receiver
    reinject = open_reinject(reinject_settings(config, index))
    flow_log = FlowLog.appending(config.output.flows, settings=config.output)
    outputs = Outputs(flow_log=flow_log, reinject=reinject,
                      requests=KeyRequester(receiver) if keys.requests and receiver is not None else None)
    engine = Engine(keys.store, config.decrypt, output=outputs, request_keys=keys.requests)
    # The capture rings are the worker's memory too: the budget ([decrypt] memory_limit) covers them.
    engine.decryptor.process_bytes += capture_ring_bytes(config)
    captures = [AfPacketCapture(interface, snaplen=config.capture.snaplen,
                                buffer_bytes=config.capture.buffer_mb << 20, stop_event=stop, idle_marker=True,
                                fanout_group=FANOUT_BASE + number if config.capture.workers > 1 else None)
                for number, interface in enumerate(config.capture.interfaces)]
    counters = WorkerCounters(index, os.getpid())
    last_report = 0.0
    rate = _Rate()

    def report() -> None:
        nonlocal last_report
        now = time.monotonic()
        if now - last_report < 1.0:
            return
        last_report = now
        _fill(counters, engine, captures, reinject, receiver)
        counters.new_flows_per_second = rate(counters.flows, now)
        counters.flows_summarised = flow_log.summarised
        try:
            connection.send(asdict(counters))
        except (BrokenPipeError, OSError):
            stop.set()  # the supervisor is gone

    def frames() -> Iterator[Sequence[Frame] | None]:
        for batch in _merged(captures, stop):
            yield batch
            if batch is None:
                report()

    try:
        engine.run(frames(), report)
    finally:
        keys.stop_following()
        engine.finish()
        if reinject is not None:
            reinject.close()
        keys.close()
        last_report = 0.0
        report()
        flow_log.close()


class _Rate:
    """Per second, between two readings of a counter."""

    def __init__(self) -> None:
        self.value = 0
        self.at: float | None = None

    def __call__(self, value: int, now: float) -> float:
        rate = 0.0 if self.at is None or now <= self.at else (value - self.value) / (now - self.at)
        self.value, self.at = value, now
        return rate


def capture_ring_bytes(config: Config) -> int:
    """The AF_PACKET rings of a worker's captures (mapped into it: its RSS once used)."""
    return len(config.capture.interfaces) * (config.capture.buffer_mb << 20)


def _fill(counters: WorkerCounters, engine: Engine, captures: list[Any], reinject: Any, receiver: Any) -> None:
    packets, decryptor = engine.counters, engine.decryptor
    counters.packets = packets.frames
    counters.tcp_segments = packets.tcp_segments
    counters.malformed = packets.malformed
    stats = decryptor.stats
    counters.flows = stats.flows
    counters.active_flows = decryptor.active_flows
    counters.waiting_for_keys = decryptor.waiting_flows
    counters.key_wait_expired = stats.key_wait_expired
    counters.flows_evicted = stats.flows_evicted
    counters.evicted = dict(stats.evicted)
    counters.half_open_flows = decryptor.half_open_flows
    counters.memory_used_bytes = decryptor.memory_used
    counters.memory_limit_bytes = decryptor.config.memory_limit
    counters.plaintext_bytes = stats.plaintext_bytes
    counters.statuses = dict(stats.statuses)
    quic = engine.quic_stats  # QUIC connections count as connections too
    if quic is not None:
        counters.flows += quic.flows
        counters.plaintext_bytes += quic.plaintext_bytes
        for status, count in quic.statuses.items():
            counters.statuses[status] = counters.statuses.get(status, 0) + count
    counters.histograms = {"key_lag_seconds": stats.key_lag.as_dict(), "record_hold_seconds": stats.record_hold.as_dict()}
    if isinstance(decryptor, LaneDecryptor):
        counters.fast_path_frames = decryptor.lane_frames
        counters.fast_path_records = decryptor.records_opened
    counters.capture_drops = sum(capture.drops for capture in captures)
    if reinject is not None:
        counters.injected_frames = sum(output.stats.frames for output in reinject.outputs)
        counters.inject_dropped = sum(output.stats.dropped for output in reinject.outputs)
    if receiver is not None:
        counters.feed_records = receiver.stats.records
        counters.feed_malformed = receiver.stats.malformed
        counters.feed_lost = receiver.subscriber.tracker.stats.lost
        counters.key_requests = receiver.stats.key_requests
