"""The inline IPS's runtime (``tls-bridge ips --inline``): the kernel's packet queue in,
Suricata in IPS mode beside it, verdicts out.

The gateway forwards; iptables' ``NFQUEUE`` target (this kernel's nft has no
``queue`` expression) hands the monitored connections' packets to this process
(:mod:`bridge.ips.nfqueue`).  The decisions are :class:`bridge.ips.inline.InlineIps`'s;
this module is the thin driver around it: one thread, one ``select`` over the
queue and the interface Suricata's passed frames come out of, a tick every few
milliseconds for budgets and timeouts.  Plaintext goes to Suricata as synthetic
cleartext frames written on ``--suricata-in`` (a veth whose peer is the
af-packet interface of a Suricata running ``copy-mode: ips``); what Suricata
lets through comes back on ``--suricata-out`` (the veth peer of its
``copy-iface``).  Secrets come from key logs and the key feed as for ``tls-bridge
decrypt`` (:class:`bridge.keyfeed.sources.KeySources`).

The command line is :mod:`bridge.cli.ips`.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from bridge.engine import EngineSettings
from bridge.errors import BridgeError
from bridge.ips.inline import InlineIps, InlineSettings, probe_frame
from bridge.ips.nfqueue import NfQueue
from bridge.keyfeed.sources import KeySettings, KeySources
from bridge.outputs import FlowLog, KeyRequester
from bridge.reinject.synthetic import SyntheticOptions

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
TICK = 0.005


@dataclass(frozen=True)
class InlineServiceSettings:
    queue: int
    suricata_in: str
    suricata_out: str
    keylogs: tuple[str, ...] = ()
    feeds: tuple[str, ...] = ()
    server_key: str = ""
    client_cert: str = ""
    keys_insecure: bool = False
    keys_window: float = 600.0
    keys_ttl: float = 600.0
    keys_timeout: float = 10.0
    key_requests: bool = True
    flows: str | None = None
    log: str | None = None
    log_releases: bool = False
    metrics: str | None = None
    queue_max_len: int = 4096
    queue_gso: bool = True  # offload super-packets queued whole (NFQA_CFG_F_GSO)
    inline: InlineSettings = field(default_factory=InlineSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    source_mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    server_mac: bytes = b"\x02\x00\x00\x00\x00\x02"


class _Metrics:
    """The counters as Prometheus metrics (``prometheus-client``'s custom collector)."""

    def __init__(self, core: InlineIps, queue: NfQueue) -> None:
        self.core, self.queue = core, queue

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        counters = self.core.counters
        for name, help_text, value in (
            ("packets", "Packets the kernel queued to the inline IPS.", counters.packets),
            ("accepted", "Packets accepted at once (nothing to hold).", counters.accepted),
            ("held", "Packets held until a verdict.", counters.held),
            ("released", "Held packets released after a verdict or a pass-flow policy.", counters.released),
            ("dropped", "Packets dropped (a drop verdict, a drop-flow policy, a cut connection).", counters.dropped),
            ("unmonitored", "Packets of connections not monitored (not TLS, no SYN seen, not TCP).",
             counters.unmonitored),
            ("fail_open", "Connections released uninspected by a pass-flow policy.", counters.fail_open),
            ("fail_closed", "Connections cut by a drop-flow policy.", counters.fail_closed),
            ("verdicts_passed", "Plaintext Suricata passed.", counters.verdicts_passed),
            ("verdicts_dropped", "Plaintext Suricata dropped.", counters.verdicts_dropped),
            ("decrypt_failures", "Connections whose records failed to decrypt although secrets came (wrong_key...).",
             counters.decrypt_failures),
            ("cuts", "Connections cut (RST to both ends).", counters.cuts),
            ("resent", "Plaintext segments sent to Suricata again: missing at their probe, lost on the way or "
             "dropped (--verdict-retries).", counters.resent),
            ("queue_overruns", "Times the queue socket's buffer overflowed (ENOBUFS).", self.queue.overruns),
        ):
            yield CounterMetricFamily(f"tls_bridge_ips_inline_{name}", help_text, value=value)
        policies = CounterMetricFamily("tls_bridge_ips_inline_policy", "Connections a policy decided, by "
                                       "what (keys, verdict, memcap, decrypt) and policy.", labels=["what", "policy"])
        for name, count in sorted(counters.policy.items()):
            what, _, policy = name.partition(":")
            policies.add_metric([what, policy], count)
        yield policies
        kernel = self.queue.kernel_counters()
        yield CounterMetricFamily("tls_bridge_ips_inline_queue_full_dropped", "Packets the kernel dropped because "
                                  "the queue was full (--queue-maxlen; with --memcap-policy pass-flow it accepts "
                                  "them uninspected instead, uncounted).", value=kernel.get("queue_dropped", 0))
        yield GaugeMetricFamily("tls_bridge_ips_inline_queue_waiting", "Packets waiting in the kernel's queue now.",
                                value=kernel.get("waiting", 0))
        yield GaugeMetricFamily("tls_bridge_ips_inline_held_bytes", "Bytes of packets held now.",
                                value=self.core.held_bytes)
        yield GaugeMetricFamily("tls_bridge_ips_inline_connections", "Connections followed now.",
                                value=self.core.open_connections)
        histogram = HistogramMetricFamily("tls_bridge_ips_inline_hold_seconds",
                                          "How long held packets waited, from the queue to their verdict.")
        histogram.add_metric([], counters.hold_time.cumulative(), counters.hold_time.sum)
        yield histogram


def _mtu(interface: str) -> int:
    """The link's MTU: synthetic segments as large as it carries (a record's plaintext in one
    frame on the 65535-byte veths of deploy/create-inline-interfaces.sh)."""
    try:
        with open(f"/sys/class/net/{interface}/mtu", encoding="ascii") as handle:
            return max(1280, min(65535, int(handle.read())))
    except (OSError, ValueError):
        return 1500


def _packet_socket(interface: str, *, receive: bool) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL) if receive else 0)
        sock.bind((interface, 0))
    except OSError as exc:
        raise BridgeError(f"interface {interface}: {exc.strerror} (it must exist and be up; CAP_NET_RAW)") from exc
    if receive:  # a frame lost here would read as Suricata's drop: a buffer beyond rmem_max (CAP_NET_ADMIN)
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        sock.setblocking(False)
    return sock


def serve(settings: InlineServiceSettings, stop: threading.Event | None = None) -> int:
    """Hold, judge, release until SIGINT/SIGTERM (``stop``)."""
    from bridge.privileges import missing

    lacking = missing("CAP_NET_ADMIN", "CAP_NET_RAW")
    if lacking:
        raise BridgeError(f"the inline IPS needs {', '.join(lacking)} (CAP_NET_ADMIN: the packet queue; CAP_NET_RAW: "
                          "Suricata's interfaces and the resets): run as root or grant them "
                          "(deploy/systemd/tls-bridge-ips-inline.service does)")
    if stop is None:
        import signal

        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())  # type: ignore[union-attr]
    err = sys.stderr
    keys = KeySources(KeySettings(keylogs=list(settings.keylogs), follow=True, feeds=list(settings.feeds),
                                  server_key=settings.server_key, client_cert=settings.client_cert,
                                  insecure=settings.keys_insecure, window=settings.keys_window, ttl=settings.keys_ttl,
                                  sync_timeout=settings.keys_timeout, request=settings.key_requests),
                      report=lambda line: (err.write(line + "\n"), err.flush()))
    log: IO[str] | None = None
    flow_log = None
    queue = None
    sockets: list[socket.socket] = []
    try:
        keys.open()
        mtu = _mtu(settings.suricata_in)
        core = InlineIps(keys.store, settings.inline, engine_settings=settings.engine,
                         synthetic=SyntheticOptions(mtu=mtu, source_mac=settings.source_mac,
                                                    server_mac=settings.server_mac),
                         on_keys_wanted=KeyRequester(keys.receiver) if keys.requests and keys.receiver else None,
                         release_log=settings.log_releases)
        tx = _packet_socket(settings.suricata_in, receive=False)
        rx = _packet_socket(settings.suricata_out, receive=True)
        raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        sockets = [tx, rx, raw4, raw6]
        queue = NfQueue(settings.queue, max_len=settings.queue_max_len, gso=settings.queue_gso,
                        fail_open=settings.inline.memcap_policy == "pass-flow")
        flow_log = FlowLog.appending(settings.flows) if settings.flows else None
        log = None if settings.log is None else sys.stdout if settings.log == "-" else open(  # noqa: SIM115
            settings.log, "a", encoding="utf-8")
        if settings.metrics:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()
            registry.register(_Metrics(core, queue))  # type: ignore[arg-type]
            host, _, port = settings.metrics.rpartition(":")
            start_http_server(int(port), host.strip("[]") or "127.0.0.1", registry)
        policies = settings.inline
        err.write(f"tls-bridge: ips --inline: queue {settings.queue}; plaintext to Suricata on {settings.suricata_in} "
                  f"(MTU {mtu}), "
                  f"back on {settings.suricata_out}; policies: keys {policies.keys_policy} after "
                  f"{policies.hold_budget:g} s, verdict {policies.verdict_policy} after {policies.verdict_timeout:g} s, "
                  f"memcap {policies.memcap_policy}, decrypt errors {policies.decrypt_policy}\n")
        err.flush()
        _loop(core, queue, tx, rx, raw4, raw6, log, flow_log, stop, settings.source_mac, settings.server_mac)
        core.close(time.time())
        _flush(core, queue, tx, raw4, raw6, log, flow_log, settings.source_mac, settings.server_mac)
        c = core.counters
        err.write(f"tls-bridge: ips --inline: {c.packets} packets: {c.accepted} accepted at once, {c.held} held, "
                  f"{c.released} released, {c.dropped} dropped, {c.unmonitored} not monitored; {c.verdicts_passed} "
                  f"verdicts passed, {c.verdicts_dropped} dropped ({c.resent} plaintext segments sent again); {c.cuts} connections cut, {c.fail_open} failed "
                  f"open, {c.decrypt_failures} failed to decrypt\n")
    finally:
        if queue is not None:
            queue.close()
        for sock in sockets:
            sock.close()
        if flow_log is not None:
            flow_log.close()
        if log is not None and log is not sys.stdout:
            log.close()
        keys.stop_following()
        keys.close()
    return 0


def _loop(core: InlineIps, queue: NfQueue, tx: socket.socket, rx: socket.socket, raw4: socket.socket,
          raw6: socket.socket, log: IO[str] | None, flow_log: FlowLog | None, stop: threading.Event,
          source_mac: bytes, server_mac: bytes) -> None:
    next_tick = 0.0
    readable = [queue, rx]
    while not stop.is_set():
        ready, _, _ = select.select(readable, [], [], TICK)
        now = time.time()
        if rx in ready:
            while True:
                try:
                    data, address = rx.recvfrom(1 << 16)
                except BlockingIOError:
                    break
                if address[2] != PACKET_OUTGOING:
                    core.from_suricata(data, now)
        if queue in ready:
            for packet in queue.receive():
                core.packet(packet.packet_id, packet.payload, now)
        if now >= next_tick:
            core.tick(now)
            next_tick = now + TICK
        _flush(core, queue, tx, raw4, raw6, log, flow_log, source_mac, server_mac)


def _flush(core: InlineIps, queue: NfQueue, tx: socket.socket, raw4: socket.socket, raw6: socket.socket,
           log: IO[str] | None, flow_log: FlowLog | None, source_mac: bytes, server_mac: bytes) -> None:
    out = core.out
    for frame in out.to_suricata:
        _send(tx, frame)
    number = core.probe()
    if number is not None:
        _send(tx, probe_frame(number, source_mac, server_mac))
    if out.verdicts:
        queue.send_verdicts(out.verdicts)
    for destination, packet in out.resets:
        with contextlib.suppress(OSError):
            (raw6 if ":" in destination else raw4).sendto(packet, (destination, 0))
    if log is not None and out.log:
        log.write("".join(json.dumps(record) + "\n" for record in out.log))
        log.flush()
    if flow_log is not None:
        for record in out.flows:
            flow_log.write(record)
    out.clear()


def _send(sock: socket.socket, frame: bytes) -> None:
    for _ in range(100):
        try:
            sock.send(frame)
            return
        except BlockingIOError:
            select.select([], [sock], [], 0.01)
        except OSError as exc:
            if exc.errno != 105:  # ENOBUFS: the interface's queue is full, a moment later
                raise
            time.sleep(0.001)
