"""``tls-bridge decrypt``: a capture file or a live interface through the engine.

Parses the arguments into the product's settings (:class:`~bridge.engine.settings.EngineSettings`,
:class:`~bridge.keyfeed.sources.KeySettings`, :class:`~bridge.reinject.sink.ReinjectSettings`),
wires the key sources, the engine and the outputs, and reports progress and a
summary on stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import IO

from bridge.capture.frames import Frame
from bridge.engine.decryptor import budget_problem
from bridge.engine.engine import Engine
from bridge.engine.lanes import LaneDecryptor
from bridge.engine.runtime import tune_runtime
from bridge.engine.settings import EngineSettings
from bridge.errors import BridgeError
from bridge.cli.common import add_client_security_options, is_loopback
from bridge.keyfeed.sources import KeySettings, KeySources
from bridge.options import add_arguments, from_arguments
from bridge.outputs import FlowLog, FlowLogSettings, KeyRequester, Outputs, PlaintextDirWriter
from bridge.reinject.sink import ReinjectSettings, open_reinject


def add_decrypt_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decrypt",
        help="decrypt the TLS connections of a capture or a live interface",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(
            """\
            Reassemble every TCP connection of a capture file (-r) or a live
            interface (-i), decrypt its TLS 1.2/1.3 records with the secrets of an
            RFC 9850 key log (--keylog, the SSLKEYLOGFILE format), and write one
            JSON object per connection to the flow log (--flows).

            Every record is authenticated before its plaintext is used; a wrong
            secret is reported as status "wrong_key", never emitted as garbage.
            Records whose secrets have not arrived yet wait (bounded, at most
            --key-wait seconds of capture time).

            QUIC (v1, v2) is decrypted from the same key logs and feed: each
            connection gets a flow log line (with a "quic" object), and each of its
            HTTP/3 requests becomes a synthetic HTTP/1.1 connection (--http3-as
            http2: HTTP/2) on the QUIC connection's addresses and ports.

            Flow log fields: flow_id, client, server ("ip:port", "[v6]:port"),
            status (decrypted, no_keys, wrong_key, gap, not_tls, unsupported,
            partial, no_handshake), reason, tls_version, cipher_suite, sni, alpn,
            resumed, key_updates, certificates, and per direction c2s/s2c
            {bytes, sha256, records, ...} over the decrypted application data
            (sha256 null with --no-digest). The SHA-256 is computed only when a
            flow log is written: hashing every byte costs more than decrypting it.
            """
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              tls-bridge decrypt -r https.pcapng --keylog sslkeys.log --flows -
              tls-bridge decrypt -i eth1 --keylog /run/app/sslkeys.log --flows flows.jsonl
              tls-bridge decrypt -i eth1 --keys tcp://harvester:5555 --server-key certs/harvester.key \\
                  --client-cert certs/sensor.key_secret --inject tls0 --flows flows.jsonl

            exit status:
              0  the input was read (connections that could not be decrypted are
                 reported in the flow log, not as an error)
              1  unusable input: unreadable or malformed capture, unreadable key log
              2  bad command line
            """
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-r", "--read", metavar="CAPTURE", help="read packets from a pcap/pcapng file ('-' for stdin)")
    source.add_argument("-i", "--interface", metavar="IFACE", help="capture live from IFACE (AF_PACKET; needs CAP_NET_RAW)")
    parser.add_argument("--keylog", metavar="KEYLOG", action="append", default=[],
                        help="RFC 9850 key log file (SSLKEYLOGFILE format); may be repeated")
    parser.add_argument("--flows", metavar="FILE", help="write the flow log (JSON lines) to FILE, '-' for stdout")
    flow_log = parser.add_argument_group(
        "flow log under a flood",
        "Connections whose handshake never completed (the client sent a ClientHello, or nothing, and nothing "
        "more; no secrets; nothing decrypted) are summarised: each minute of capture time a sample of them get "
        "their line, and one line {\"summary\":\"never_completed\",...} counts them all per server, status and "
        "end. Decrypted connections, and those that failed with their secrets at hand, always get their line.",
    )
    add_arguments(flow_log, FlowLogSettings)
    feed = parser.add_argument_group(
        "key feed",
        "Secrets from harvesters over ZeroMQ (see 'tls-bridge keys --help'), alongside or instead of --keylog. "
        "On start the records of the last --keys-window seconds are fetched; with -r the file is read once "
        "they are in, and at its end connections still waiting get --keys-timeout seconds for their secrets.",
    )
    feed.add_argument("--keys", metavar="ENDPOINT", action="append", default=[],
                      help="subscribe to a publisher or broker (tcp://HOST:PORT, ipc://PATH); may be repeated")
    add_client_security_options(feed)
    feed.add_argument("--keys-window", metavar="SECONDS", type=float, default=600.0,
                      help="history fetched on start (default: 600)")
    feed.add_argument("--keys-ttl", metavar="SECONDS", type=float, default=600.0,
                      help="feed secrets not used by a connection are dropped after this long (default: 600)")
    feed.add_argument("--keys-timeout", metavar="SECONDS", type=float, default=10.0,
                      help="how long to wait for the feed's snapshot, and with -r for late secrets (default: 10)")
    feed.add_argument("--keys-insecure", action="store_true",
                      help="subscribe without CurveZMQ (labs only: secrets cross the network in clear)")
    feed.add_argument("--no-key-requests", dest="key_requests", action="store_false",
                      help="do not ask the feed's harvesters for the secrets of new connections (by default, "
                           "when a ClientHello is seen and no secrets for it are here, its client random and "
                           "endpoints are sent, so a harvester that does not watch the traffic itself searches "
                           "for it; and once more if the connection ends before its secrets came)")
    reinject = parser.add_argument_group(
        "re-injection",
        "Every decrypted connection is re-emitted as a synthetic cleartext TCP connection "
        "(handshake, every segment ACKed, FIN/RST as the original ended) for Suricata/Zeek. "
        "Undecryptable connections are not emitted; the flow log's 'synthetic' field names "
        "the synthetic connection.",
    )
    reinject.add_argument("-w", "--write", metavar="FILE", help="write synthetic cleartext frames to a pcap FILE")
    reinject.add_argument("--inject", metavar="IFACE",
                          help="send synthetic frames on IFACE (deployment default: a dummy interface, "
                               "'ip link add tls0 type dummy'; any interface works)")
    reinject.add_argument("--pcap-over-ip", metavar="HOST:PORT",
                          help="serve synthetic frames as PCAP-over-IP (pcap header, then records) to TCP clients")
    reinject.add_argument("--mtu", type=int, default=1500, help="IP MTU of the synthetic segments (default: 1500; jumbo allowed)")
    reinject.add_argument("--server-port", type=int, metavar="PORT", help="rewrite the server port (e.g. 443 to 80)")
    reinject.add_argument("--mark-mac", metavar="MAC", default="02:00:00:00:00:01",
                          help="source MAC of client-side synthetic frames, a marker (default: 02:00:00:00:00:01, "
                               "locally administered; server-side frames use the next address)")
    reinject.add_argument("--vlan", type=int, metavar="ID", help="tag synthetic frames with this 802.1Q VLAN id (a marker)")
    parser.add_argument("--plaintext-dir", metavar="DIR",
                        help="write each connection's decrypted data to DIR/<flow_id>.c2s and .s2c")
    tuning = parser.add_argument_group("decryptor", "Bounds and timers (the [decrypt] section of 'tls-bridge run').")
    add_arguments(tuning, EngineSettings)
    parser.add_argument("-c", "--count", metavar="N", type=int, help="stop after N packets")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    parser.set_defaults(handler=run_decrypt)


class Progress:
    """A line on stderr every few seconds: terse, overwritten in a terminal."""

    def __init__(self, engine: Engine, stream: IO[str], *, interval: float = 2.0) -> None:
        self.engine = engine
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
        counters = self.engine.counters
        decryptor = self.engine.decryptor
        elapsed = max(now - self.started, 1e-9)
        return (
            f"{counters.frames} packets ({counters.frames / elapsed:,.0f}/s), "
            f"{decryptor.stats.flows} connections, {decryptor.active_flows} open, "
            f"{decryptor.waiting_flows} waiting for keys, "
            f"{decryptor.stats.plaintext_bytes / 1e6:,.1f} MB plaintext"
        )

    def summary(self) -> str:
        counters = self.engine.counters
        stats = self.engine.decryptor.stats
        elapsed = time.monotonic() - self.started
        statuses = ", ".join(f"{count} {status}" for status, count in sorted(stats.statuses.items())) or "none"
        text = (
            f"tls-bridge: {counters.frames} packets ({counters.tcp_segments} TCP, {counters.not_tcp} other, "
            f"{counters.malformed} malformed), {stats.flows} connections: {statuses}; "
            f"{stats.plaintext_bytes:,} bytes plaintext in {elapsed:.2f} s"
        )
        if stats.flows_evicted:
            reasons = ", ".join(f"{count} {reason.replace('_', '-')}" for reason, count in stats.evicted.items() if count)
            text += (f"; {stats.flows_evicted} connections evicted ({reasons}; {stats.evicted_for_memory} for "
                     f"--memory-limit, the rest for --max-flows)")
        decryptor = self.engine.decryptor
        text += (f"; memory: peak {stats.memory_peak / 2**20:,.1f} MiB of "
                 f"{decryptor.config.memory_limit / 2**20:,.0f} MiB")
        if isinstance(decryptor, LaneDecryptor):
            text += (f"; compiled path: {decryptor.lane_frames:,} of the {counters.tcp_segments:,} TCP frames, "
                     f"{decryptor.records_opened:,} records")
        quic = self.engine.quic_stats
        if quic is not None and quic.flows:
            statuses = ", ".join(f"{count} {status}" for status, count in sorted(quic.statuses.items()))
            text += f"; QUIC: {quic.flows} connections: {statuses}; {quic.requests} HTTP/3 requests"
        return text


def _frames(args: argparse.Namespace) -> Iterator[Frame | list[Frame] | None]:
    if args.read is not None:
        from bridge.capture.pcapfile import read_capture, read_capture_stream

        if args.read == "-":
            return read_capture_stream(sys.stdin.buffer).batches()
        return read_capture(args.read).batches()
    from bridge.capture.afpacket import AfPacketCapture

    return AfPacketCapture(args.interface, ignore_outgoing=is_loopback(args.interface), idle_marker=True).batches()


def _limit(frames: Iterator[Frame | list[Frame] | None], count: int | None) -> Iterator[Frame | list[Frame] | None]:
    """The first ``count`` frames (-c) of frames or lists of frames."""
    if count is None:
        yield from frames
        return
    seen = 0
    for item in frames:
        if item is None:
            yield item
            continue
        if seen >= count:
            return
        if item.__class__ is not Frame:  # a list of frames, a FrameBatch
            item = [item[index] for index in range(min(len(item), count - seen))]
            seen += len(item)
        else:
            seen += 1
        yield item


class _Terminated(Exception):
    """SIGTERM: stop capturing, finish every connection, write the logs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def run_decrypt(args: argparse.Namespace) -> int:
    err = sys.stderr
    live = args.interface is not None
    if live:
        signal.signal(signal.SIGTERM, _on_sigterm)
    settings = from_arguments(EngineSettings, args)
    if settings.digest and not args.flows:
        # nothing would read the flow log's SHA-256 (hashing costs about what decrypting does)
        settings = replace(settings, digest=False)
    problem = budget_problem(settings)
    if problem is not None:
        err.write(f"tls-bridge: error: --{problem.replace('_', '-', 1)}\n")
        return 2
    tune_runtime()
    keys = KeySources(KeySettings(keylogs=args.keylog, follow=live, feeds=args.keys, server_key=args.server_key or "",
                                  client_cert=args.client_cert or "", insecure=args.keys_insecure,
                                  window=args.keys_window, ttl=args.keys_ttl, sync_timeout=args.keys_timeout,
                                  request=args.key_requests),
                      report=lambda line: (err.write(line + "\n"), err.flush()))
    outputs: Outputs | None = None
    try:
        keys.open()
        reinject = open_reinject(ReinjectSettings(pcap=args.write, interface=args.inject,
                                                  pcap_over_ip=args.pcap_over_ip, mtu=args.mtu,
                                                  server_port=args.server_port, mark_mac=args.mark_mac,
                                                  vlan=args.vlan))
        flow_settings = from_arguments(FlowLogSettings, args)
        outputs = Outputs(flow_log=FlowLog.to_file(args.flows, flow_settings) if args.flows else None,
                          reinject=reinject,
                          plaintext=PlaintextDirWriter(args.plaintext_dir) if args.plaintext_dir else None,
                          requests=KeyRequester(keys.receiver) if keys.requests and keys.receiver else None)
        engine = Engine(keys.store, settings, output=outputs, request_keys=keys.requests)
        progress = Progress(engine, err)
        frames = _frames(args)
        if live and not args.quiet:
            err.write(f"tls-bridge: capturing on {args.interface}; Ctrl-C or SIGTERM to stop\n")
            err.flush()
        try:
            engine.run(_limit(frames, args.count), None if args.quiet else progress)
        except (KeyboardInterrupt, _Terminated):
            if not live:
                raise
            err.write("\ntls-bridge: stopping\n" if not args.quiet else "")
        finally:
            keys.stop_following()
            if keys.receiver is not None and not live:
                engine.await_late_keys(args.keys_timeout)
            engine.finish()
            outputs.close()
        for warning in getattr(frames, "warnings", None) or []:
            err.write(f"tls-bridge: warning: {warning}\n")
    except BridgeError as exc:
        err.write(f"tls-bridge: error: {exc}\n")
        return 1
    except OSError as exc:
        err.write(f"tls-bridge: error: {exc.filename or ''}: {exc.strerror}\n")
        return 1
    finally:
        keys.close()
    if not args.quiet:
        if progress._tty:
            err.write("\r\x1b[K")
        err.write(progress.summary() + "\n")
        if outputs.reinject is not None:
            err.write(f"tls-bridge: {outputs.reinject.summary()}\n")
        if keys.receiver_summary:
            err.write(f"tls-bridge: {keys.receiver_summary}\n")
    return 0
