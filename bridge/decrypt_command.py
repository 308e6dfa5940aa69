"""``tls-bridge decrypt``: the driver around :class:`~bridge.decryptor.Decryptor`.

Reads frames (capture file or AF_PACKET), decodes TCP, feeds the decryptor,
writes the flow log and optional plaintext files, reports progress and a summary
on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from bridge.capture.frames import Frame
from bridge.decryptor import NS, Decryptor, DecryptorConfig, Event, FlowFinished, KeysWanted, PlaintextData
from bridge.errors import BridgeError, PacketDecodeError
from bridge.keylog import KeyLogStats, read_keylog
from bridge.keylog_follow import KeyLogFollower, into_store
from bridge.keyfeed.commands import client_security
from bridge.keyfeed import wire
from bridge.keyfeed.receiver import KeyFeedReceiver
from bridge.keyfeed.security import check_endpoint
from bridge.keyfeed.subscriber import SubscriberConfig
from bridge.keystore import KeyStore
from bridge.reinject.outputs import FrameOutput, InterfaceOutput, PcapFileOutput, PcapOverIpOutput
from bridge.reinject.sink import ReinjectSink
from bridge.reinject.synthetic import SyntheticFlows, SyntheticOptions
from bridge.packets import TcpSegment, classify


@dataclass(slots=True)
class PacketCounters:
    frames: int = 0
    tcp_segments: int = 0
    not_tcp: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)


EventSink = Callable[[Event], None]


class Pipeline:
    """Frames → TCP segments → decryptor events → sinks.  Used by the CLI and tests."""

    def __init__(self, decryptor: Decryptor, sinks: list[EventSink]) -> None:
        self.decryptor = decryptor
        self.sinks = sinks
        self.counters = PacketCounters()
        self._next_tick_ns = 0

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            for sink in self.sinks:
                sink(event)

    def frame(self, frame: Frame) -> None:
        self.run((frame,))

    def _malformed(self, exc: PacketDecodeError) -> None:
        counters = self.counters
        counters.malformed += 1
        reason = str(exc).split(":")[0][:60]
        counters.malformed_reasons[reason] = counters.malformed_reasons.get(reason, 0) + 1

    def idle(self, now_ns: int) -> None:
        """No packet for a while (live): decrypt what waited for keys that arrived
        since, and expire idle connections, on the capture clock (wall time)."""
        events = self.decryptor.keys_arrived()
        if now_ns >= self._next_tick_ns:
            events.extend(self.decryptor.tick(now_ns))
            self._next_tick_ns = now_ns + NS
        if events:
            self._dispatch(events)

    def run(self, frames: Iterable[Frame | None], progress: Callable[[], None] | None = None) -> None:
        """The packet loop: the hot path, written with locals on purpose."""
        counters = self.counters
        process = self.decryptor.process
        tick = self.decryptor.tick
        dispatch = self._dispatch
        next_tick_ns = self._next_tick_ns
        frame_count = tcp_count = not_tcp = 0
        try:
            for frame in frames:
                if frame is None:  # a quiet live link: timed work, counters brought up to date
                    self._next_tick_ns = next_tick_ns
                    self.idle(time.time_ns())
                    next_tick_ns = self._next_tick_ns
                    counters.frames += frame_count
                    counters.tcp_segments += tcp_count
                    counters.not_tcp += not_tcp
                    frame_count = tcp_count = not_tcp = 0
                    continue
                frame_count += 1
                try:
                    segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
                except PacketDecodeError as exc:
                    self._malformed(exc)
                    continue
                if segment.__class__ is not TcpSegment:
                    not_tcp += 1
                    continue
                tcp_count += 1
                events = process(segment)  # type: ignore[arg-type]
                timestamp_ns = segment.timestamp_ns  # type: ignore[union-attr]
                if timestamp_ns >= next_tick_ns:
                    events.extend(tick(timestamp_ns))
                    next_tick_ns = timestamp_ns + NS
                if events:
                    dispatch(events)
                if not frame_count & 255 and self.decryptor.keys.has_arrivals:
                    dispatch(self.decryptor.keys_arrived())
                if progress is not None and not frame_count & 4095:
                    counters.frames += frame_count
                    counters.tcp_segments += tcp_count
                    counters.not_tcp += not_tcp
                    frame_count = tcp_count = not_tcp = 0
                    progress()
        finally:
            counters.frames += frame_count
            counters.tcp_segments += tcp_count
            counters.not_tcp += not_tcp
            self._next_tick_ns = next_tick_ns

    def keys_arrived(self) -> None:
        self._dispatch(self.decryptor.keys_arrived())

    def finish(self) -> None:
        self._dispatch(self.decryptor.finish())


class FlowLogWriter:
    """One JSON object per line per finished connection, flushed at once: live,
    readers (Zeek's Input framework, the IPS) follow the file."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: Event) -> None:
        if isinstance(event, FlowFinished):
            self.stream.write(json.dumps(event.record, separators=(",", ":")) + "\n")
            self.stream.flush()


class KeyRequester:
    """:class:`~bridge.decryptor.KeysWanted` → a ``want`` request on the key feed:
    harvesters that did not see the connection begin search for it."""

    def __init__(self, receiver: KeyFeedReceiver) -> None:
        self.receiver = receiver

    def __call__(self, event: Event) -> None:
        if isinstance(event, KeysWanted):
            flow = event.flow
            self.receiver.request_keys(wire.KeyRequest(
                event.client_random, (flow.client_ip, flow.client_port), (flow.server_ip, flow.server_port),
                event.ended))


class PlaintextDirWriter:
    """Decrypted data of each connection as ``DIR/<flow_id>.c2s`` / ``.s2c``."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._files: dict[tuple[int, int], IO[bytes]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, PlaintextData):
            key = (event.flow.flow_id, int(event.direction))
            handle = self._files.get(key)
            if handle is None:
                name = f"{event.flow.flow_id}.{event.direction.name.lower()}"
                handle = self._files[key] = open(os.path.join(self.directory, name), "wb")
            handle.write(event.data)
        elif isinstance(event, FlowFinished):
            for direction in (0, 1):
                handle = self._files.pop((event.flow.flow_id, direction), None)
                if handle is not None:
                    handle.close()


class Progress:
    """A line on stderr every few seconds: terse, overwritten in a terminal."""

    def __init__(self, pipeline: Pipeline, stream: IO[str], *, interval: float = 2.0) -> None:
        self.pipeline = pipeline
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self._last = self.started
        self._tty = stream.isatty()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        line = self.line(now)
        self.stream.write(("\r" + line + "\x1b[K") if self._tty else line + "\n")
        self.stream.flush()

    def line(self, now: float) -> str:
        counters = self.pipeline.counters
        decryptor = self.pipeline.decryptor
        elapsed = max(now - self.started, 1e-9)
        return (
            f"{counters.frames} packets ({counters.frames / elapsed:,.0f}/s), "
            f"{decryptor.stats.flows} connections, {decryptor.active_flows} open, "
            f"{decryptor.waiting_flows} waiting for keys, "
            f"{decryptor.stats.plaintext_bytes / 1e6:,.1f} MB plaintext"
        )

    def summary(self) -> str:
        counters = self.pipeline.counters
        stats = self.pipeline.decryptor.stats
        elapsed = time.monotonic() - self.started
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(stats.statuses.items())) or "none"
        text = (
            f"tls-bridge: {counters.frames} packets ({counters.tcp_segments} TCP, {counters.not_tcp} other, "
            f"{counters.malformed} malformed), {stats.flows} connections: {statuses}; "
            f"{stats.plaintext_bytes:,} bytes plaintext in {elapsed:.2f} s"
        )
        if stats.flows_evicted:
            text += f"; {stats.flows_evicted} connections evicted (--max-flows)"
        return text


def _load_keylogs(paths: list[str], store: KeyStore, err: IO[str]) -> None:
    for path in paths:
        stats = KeyLogStats()
        try:
            entries = read_keylog(path, stats)
        except OSError as exc:
            raise BridgeError(f"cannot read key log {path}: {exc.strerror}") from None
        for entry in entries:
            store.add_entry(entry)
        for warning in stats.warnings:
            err.write(f"tls-bridge: warning: {path}: {warning}\n")
        if stats.malformed > len(stats.warnings):
            err.write(f"tls-bridge: warning: {path}: {stats.malformed} malformed lines in all\n")
        if stats.unknown_labels:
            err.write(f"tls-bridge: {path}: {stats.unknown_labels} lines with unknown labels ignored\n")


def _frames(args: argparse.Namespace) -> Iterator[Frame | None]:
    if args.read is not None:
        from bridge.capture.pcapfile import read_capture, read_capture_stream

        if args.read == "-":
            return iter(read_capture_stream(sys.stdin.buffer))
        return iter(read_capture(args.read))
    from bridge.capture.afpacket import AfPacketCapture

    # On a loopback device every packet is seen leaving and arriving: keep one copy, as libpcap does.
    return iter(AfPacketCapture(args.interface, ignore_outgoing=_is_loopback(args.interface), idle_marker=True))


def _is_loopback(interface: str) -> bool:
    try:
        with open(f"/sys/class/net/{interface}/type", encoding="ascii") as handle:
            return handle.read().strip() == "772"  # ARPHRD_LOOPBACK
    except OSError:
        return False


def _limit(frames: Iterator[Frame | None], count: int | None) -> Iterator[Frame | None]:
    if count is None:
        yield from frames
        return
    seen = 0
    for frame in frames:
        if frame is not None:
            if seen >= count:
                return
            seen += 1
        yield frame


class _Terminated(Exception):
    """SIGTERM: stop capturing, finish every connection, write the logs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def _parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise BridgeError(f"--mark-mac {text!r} is not a MAC address like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise BridgeError(f"--mark-mac {text!r} is not a MAC address") from None


def _reinject_sink(args: argparse.Namespace) -> ReinjectSink | None:
    outputs: list[FrameOutput] = []
    try:
        if args.write:
            outputs.append(PcapFileOutput(args.write))
        if args.inject:
            outputs.append(InterfaceOutput(args.inject))
        if args.pcap_over_ip:
            host, _, port = args.pcap_over_ip.rpartition(":")
            if not host or not port.isdigit():
                raise BridgeError(f"--pcap-over-ip {args.pcap_over_ip!r} is not HOST:PORT")
            outputs.append(PcapOverIpOutput(host.strip("[]"), int(port)))
    except BridgeError:
        for output in outputs:
            output.close()
        raise
    if not outputs:
        return None
    client_mac = _parse_mac(args.mark_mac)
    server_mac = client_mac[:5] + bytes([(client_mac[5] + 1) & 0xFF])
    options = SyntheticOptions(
        mtu=args.mtu, server_port=args.server_port, source_mac=client_mac, server_mac=server_mac, vlan=args.vlan
    )
    return ReinjectSink(SyntheticFlows(options), outputs)


def _key_feed(args: argparse.Namespace, store: KeyStore, err: IO[str]) -> KeyFeedReceiver | None:
    if not args.keys:
        return None
    client = client_security(args, insecure=args.keys_insecure)
    config = SubscriberConfig(endpoints=[check_endpoint(e) for e in args.keys], window=args.keys_window,
                              snapshot_timeout=args.keys_timeout)

    def warn(text: str) -> None:
        err.write(f"tls-bridge: warning: key feed: {text}\n")
        err.flush()

    receiver = KeyFeedReceiver(store, config, client, ttl=args.keys_ttl, on_failure=warn)
    return receiver.start(sync_timeout=args.keys_timeout)


def _await_late_keys(pipeline: Pipeline, timeout: float) -> None:
    """End of a capture file read with a live feed: connections still waiting for
    their secrets get ``timeout`` more seconds (wall clock) before they are logged."""
    deadline = time.monotonic() + timeout
    while pipeline.decryptor.waiting_flows and time.monotonic() < deadline:
        time.sleep(0.05)
        pipeline.keys_arrived()


def run_decrypt(args: argparse.Namespace) -> int:
    err = sys.stderr
    store = KeyStore()
    receiver: KeyFeedReceiver | None = None
    config = DecryptorConfig(max_flows=args.max_flows, idle_timeout=args.idle_timeout, key_wait=args.key_wait)
    flows_stream: IO[str] | None = None
    reinject: ReinjectSink | None = None
    followers: list[KeyLogFollower] = []
    live = args.interface is not None
    if live:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if live:
            # Live: key logs are still being written; follow them like tail -f.
            followers = [KeyLogFollower(path, into_store(store)).start() for path in args.keylog]
        else:
            _load_keylogs(args.keylog, store, err)
        receiver = _key_feed(args, store, err)
        config.request_keys = receiver is not None and args.key_requests
        if args.flows == "-":
            flows_stream = sys.stdout
        elif args.flows:
            flows_stream = open(args.flows, "w", encoding="utf-8")
        sinks: list[EventSink] = [KeyRequester(receiver)] if config.request_keys and receiver is not None else []
        reinject = _reinject_sink(args)
        if reinject is not None:
            sinks.append(reinject)  # before the flow log: it annotates the records
        if flows_stream is not None:
            sinks.append(FlowLogWriter(flows_stream))
        if args.plaintext_dir:
            sinks.append(PlaintextDirWriter(args.plaintext_dir))
        pipeline = Pipeline(Decryptor(store, config), sinks)
        progress = Progress(pipeline, err)
        frames = _frames(args)
        if live and not args.quiet:
            err.write(f"tls-bridge: capturing on {args.interface}; Ctrl-C or SIGTERM to stop\n")
            err.flush()
        try:
            pipeline.run(_limit(frames, args.count), None if args.quiet else progress)
        except (KeyboardInterrupt, _Terminated):
            if not live:
                raise
            err.write("\ntls-bridge: stopping\n" if not args.quiet else "")
        finally:
            for follower in followers:
                follower.stop()
            if receiver is not None and not live:
                _await_late_keys(pipeline, args.keys_timeout)
            pipeline.finish()
            if reinject is not None:
                reinject.close()
        reader_warnings = getattr(frames, "warnings", None) or []
        for warning in reader_warnings:
            err.write(f"tls-bridge: warning: {warning}\n")
    except BridgeError as exc:
        err.write(f"tls-bridge: error: {exc}\n")
        return 1
    except OSError as exc:
        err.write(f"tls-bridge: error: {exc.filename or ''}: {exc.strerror}\n")
        return 1
    finally:
        if receiver is not None:
            receiver.close()
        if flows_stream is not None and flows_stream is not sys.stdout:
            flows_stream.close()
    if not args.quiet:
        if progress._tty:
            err.write("\r\x1b[K")
        err.write(progress.summary() + "\n")
        if reinject is not None:
            err.write(f"tls-bridge: {reinject.summary()}\n")
        if receiver is not None:
            err.write(f"tls-bridge: {receiver.summary()}\n")
    return 0
