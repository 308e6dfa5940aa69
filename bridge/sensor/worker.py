"""One sensor worker process: its share of the captured packets (AF_PACKET fanout
by flow hash), its own key store fed by the key feed and key logs, its decryptor,
its synthetic connections on the injection interface, its lines in the flow log.
Counters go to the supervisor once a second."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from bridge.capture.frames import Frame
from bridge.decrypt_command import KeyRequester, Pipeline
from bridge.decryptor import Decryptor, DecryptorConfig, Event, FlowFinished
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
    plaintext_bytes: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    capture_drops: int = 0
    injected_frames: int = 0
    inject_dropped: int = 0
    feed_records: int = 0
    feed_malformed: int = 0
    feed_lost: int = 0
    key_requests: int = 0
    #: name → Histogram.as_dict() (see bridge.histogram), cumulative since the worker started.
    histograms: dict[str, dict[str, Any]] = field(default_factory=dict)


class AppendingFlowLog:
    """The shared flow log: every worker appends whole lines with one write(2) each
    (O_APPEND keeps concurrent lines whole)."""

    def __init__(self, path: str) -> None:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)

    def __call__(self, event: Event) -> None:
        if isinstance(event, FlowFinished):
            import json

            os.write(self.fd, (json.dumps(event.record, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def _merged(captures: list[Any], stop: threading.Event) -> Iterator[Frame | None]:
    if len(captures) == 1:
        yield from captures[0]
        return
    frames: queue.Queue[Frame | None] = queue.Queue(maxsize=65536)

    def pump(capture: Any) -> None:
        for frame in capture:
            if frame is not None:
                frames.put(frame)

    for capture in captures:
        threading.Thread(target=pump, args=(capture,), daemon=True).start()
    while not stop.is_set():
        try:
            yield frames.get(timeout=0.2)
        except queue.Empty:
            yield None


def _reinject(config: Config, index: int):  # type: ignore[no-untyped-def]
    from bridge.reinject.outputs import FrameOutput, InterfaceOutput, PcapFileOutput
    from bridge.reinject.sink import ReinjectSink
    from bridge.reinject.synthetic import SyntheticFlows, SyntheticOptions

    outputs: list[FrameOutput] = []
    if config.inject.interface:
        outputs.append(InterfaceOutput(config.inject.interface))
    if config.inject.pcap:
        base, dot, extension = config.inject.pcap.rpartition(".")
        outputs.append(PcapFileOutput(f"{base}.{index}.{extension}" if dot else f"{config.inject.pcap}.{index}"))
    if not outputs:
        return None
    mac = bytes(int(part, 16) for part in config.inject.mark_mac.replace("-", ":").split(":"))
    options = SyntheticOptions(mtu=config.inject.mtu, server_port=config.inject.server_port or None,
                               source_mac=mac, server_mac=mac[:5] + bytes([(mac[5] + 1) & 0xFF]),
                               vlan=config.inject.vlan or None)
    return ReinjectSink(SyntheticFlows(options), outputs)


def run_worker(config_data: dict[str, dict[str, Any]], index: int, connection: Any) -> None:
    """The worker's main (a process of its own): runs until SIGTERM or SIGINT."""
    from bridge.capture.afpacket import AfPacketCapture
    from bridge.keylog_follow import KeyLogFollower, into_store
    from bridge.keystore import KeyStore

    config = Config.from_dict(config_data)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    store = KeyStore()
    followers = [KeyLogFollower(path, into_store(store)).start() for path in config.keys.keylogs]
    receiver = _feed(config, store)
    flow_log = AppendingFlowLog(config.output.flows)
    reinject = _reinject(config, index)
    request_keys = receiver is not None and config.keys.request
    sinks: list[Any] = (([KeyRequester(receiver)] if request_keys else [])
                        + ([reinject] if reinject is not None else []) + [flow_log])
    decryptor = Decryptor(store, DecryptorConfig(max_flows=config.decrypt.max_flows,
                                                 idle_timeout=config.decrypt.idle_timeout,
                                                 key_wait=config.decrypt.key_wait, request_keys=request_keys))
    pipeline = Pipeline(decryptor, sinks)
    captures = [AfPacketCapture(interface, snaplen=config.capture.snaplen,
                                buffer_bytes=config.capture.buffer_mb << 20, stop_event=stop, idle_marker=True,
                                fanout_group=FANOUT_BASE + number if config.capture.workers > 1 else None)
                for number, interface in enumerate(config.capture.interfaces)]
    counters = WorkerCounters(index, os.getpid())
    last_report = 0.0

    def report() -> None:
        nonlocal last_report
        now = time.monotonic()
        if now - last_report < 1.0:
            return
        last_report = now
        _fill(counters, pipeline, captures, reinject, receiver)
        try:
            connection.send(asdict(counters))
        except (BrokenPipeError, OSError):
            stop.set()  # the supervisor is gone

    def frames() -> Iterator[Frame | None]:
        for frame in _merged(captures, stop):
            yield frame
            if frame is None:
                report()

    try:
        pipeline.run(frames(), report)
    finally:
        for follower in followers:
            follower.stop()
        pipeline.finish()
        if reinject is not None:
            reinject.close()
        if receiver is not None:
            receiver.close()
        last_report = 0.0
        report()
        flow_log.close()


def _feed(config: Config, store: Any):  # type: ignore[no-untyped-def]
    if not config.keys.feeds:
        return None
    from bridge.keyfeed.receiver import KeyFeedReceiver
    from bridge.keyfeed.security import load_client
    from bridge.keyfeed.subscriber import SubscriberConfig

    client = None if config.keys.insecure else load_client(config.keys.server_key, config.keys.client_cert)
    receiver = KeyFeedReceiver(store, SubscriberConfig(endpoints=list(config.keys.feeds), window=config.keys.window),
                               client, ttl=config.keys.ttl)
    return receiver.start(sync_timeout=10.0)


def _fill(counters: WorkerCounters, pipeline: Pipeline, captures: list[Any], reinject: Any, receiver: Any) -> None:
    packets, decryptor = pipeline.counters, pipeline.decryptor
    counters.packets = packets.frames
    counters.tcp_segments = packets.tcp_segments
    counters.malformed = packets.malformed
    stats = decryptor.stats
    counters.flows = stats.flows
    counters.active_flows = decryptor.active_flows
    counters.waiting_for_keys = decryptor.waiting_flows
    counters.key_wait_expired = stats.key_wait_expired
    counters.flows_evicted = stats.flows_evicted
    counters.plaintext_bytes = stats.plaintext_bytes
    counters.statuses = dict(stats.statuses)
    counters.histograms = {"key_lag_seconds": stats.key_lag.as_dict(), "record_hold_seconds": stats.record_hold.as_dict()}
    counters.capture_drops = sum(capture.drops for capture in captures)
    if reinject is not None:
        counters.injected_frames = sum(output.stats.frames for output in reinject.outputs)
        counters.inject_dropped = sum(output.stats.dropped for output in reinject.outputs)
    if receiver is not None:
        counters.feed_records = receiver.stats.records
        counters.feed_malformed = receiver.stats.malformed
        counters.feed_lost = receiver.subscriber.tracker.stats.lost
        counters.key_requests = receiver.stats.key_requests
