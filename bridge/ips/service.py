"""The reactive IPS (``tls-bridge ips``): Suricata's verdicts on the decrypted copy cut the original
encrypted connection.

Suricata inspects only the synthetic cleartext; the encrypted original passes
through the gateway.  This follows Suricata's eve output (the eve.json file, or a
unix socket Suricata writes to); an alert whose rule asks for a block — metadata
``tls_bridge_action block``, Suricata's own ``blocked``, or a drop/reject rule
(known from the rule text in the alert, eve-log alert ``metadata: {rule: {raw: yes}}``, or from
``--rules`` files: in IDS mode Suricata logs a drop rule's alert as "allowed") —
names the connection (the synthetic one has the original's addresses and ports).
The gateway's interfaces are watched for each connection's sequence numbers, so
the cut is: a TCP RST to each end at the sequence number it expects, sent through
the gateway's stack, and the 4-tuple (both directions) in an nftables set that a
forward-hook chain drops.  Each block is logged with the time from the alerting
packet (Suricata's timestamp) to the cut.

The command line is :mod:`bridge.cli.ips`.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO

from bridge.errors import BridgeError, PacketDecodeError
from bridge.ips.connections import ConnectionTable
from bridge.ips.eve import BlockRequest, block_request, blocking_rules
from bridge.ips.eve_source import follow_file, listen_unix
from bridge.ips.nft import NftBlocklist
from bridge.ips.reset import reset_packets
from bridge.engine.packets import TcpSegment, classify


def _sniff(interface: str, table: ConnectionTable, lock: threading.Lock, stop: threading.Event,
           ready: threading.Event) -> None:
    from bridge.capture.afpacket import AfPacketCapture

    try:
        capture = AfPacketCapture(interface, stop_event=stop, idle_marker=True, poll_interval=0.1)
    finally:
        ready.set()  # its socket is open (or it failed): 'following' is not said before it sees packets
    for frame in capture:
        if frame is None:
            continue
        try:
            segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
        except PacketDecodeError:
            continue
        if isinstance(segment, TcpSegment):
            with lock:
                table.observe(segment)


class Blocker:
    def __init__(self, table: ConnectionTable, lock: threading.Lock, nft: NftBlocklist | None, *, resets: bool,
                 log: IO[str]) -> None:
        self.table, self.lock, self.nft, self.resets, self.log = table, lock, nft, resets, log
        self.blocked: set[tuple[str, int, str, int]] = set()
        self._log_lock = threading.Lock()
        self._raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) if resets else None
        self._raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) if resets else None

    def block(self, request: BlockRequest) -> None:
        if request.key in self.blocked:
            return
        self.blocked.add(request.key)
        a, b = (request.src, request.sport), (request.dst, request.dport)
        sent = 0
        if self.resets:
            with self.lock:
                connection = self.table.get(a, b)
                packets = reset_packets(connection) if connection is not None else []
            for destination, packet in packets:
                raw = self._raw4 if ":" not in destination else self._raw6
                raw.sendto(packet, (destination, 0))  # type: ignore[union-attr]
                sent += 1
        if self.nft is not None:
            self.nft.block(a, b)
        cut = time.time()
        record: dict[str, object] = {
            "event": "cut", "time": round(cut, 6), "src": f"{request.src}:{request.sport}", "dst": f"{request.dst}:{request.dport}",
            "signature_id": request.signature_id, "signature": request.signature, "why": list(request.reasons),
            "resets_sent": sent, "nft": self.nft is not None,
            "alert_to_cut_ms": round((cut - request.alerted_at) * 1000, 3) if request.alerted_at else None,
        }
        if self.resets and not sent:
            record["note"] = "no sequence numbers seen for this connection on the watched interfaces: nft only"
        self.write(record)

    def write(self, record: dict[str, object]) -> None:
        with self._log_lock:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()


def _endpoint_key(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _annotate_from_flows(path: str, blocker: Blocker, stop: threading.Event) -> None:
    """When a cut connection's flow log line is written (the original connection
    ended), log its TLS facts beside the cut: what was blocked, in TLS terms."""
    for line in follow_file(path, stop, from_start=False):
        try:
            record = json.loads(line)
            key = ConnectionTable.key(_endpoint_key(record["client"]), _endpoint_key(record["server"]))
        except (ValueError, KeyError, TypeError):
            continue
        if key in blocker.blocked:
            blocker.write({
                "event": "cut_connection_logged", "client": record["client"], "server": record["server"],
                "sni": record.get("sni"), "tls_version": record.get("tls_version"),
                "cipher_suite": record.get("cipher_suite"), "status": record.get("status"),
                "ended_by": record.get("ended_by"), "key_origin": record.get("key_origin"),
            })


@dataclass(frozen=True)
class IpsSettings:
    eve: str | None = None
    eve_socket: str | None = None
    eve_socket_type: str = "stream"
    interfaces: tuple[str, ...] = ()
    flows: str | None = None
    nft_table: str = "inet tls_bridge"
    nft_set: str = "blocked"
    nft_timeout: str = "1h"
    nft: bool = True
    resets: bool = True
    rules: tuple[str, ...] = ()
    port_map: tuple[str, ...] = ()
    from_start: bool = False
    log: str | None = None


def serve(args: IpsSettings) -> int:
    """Follow the eve output and cut what it asks to block, until SIGINT/SIGTERM or its end."""
    from bridge.privileges import missing

    lacking = missing(*(["CAP_NET_RAW"] if args.resets or args.interfaces else []),
                      *(["CAP_NET_ADMIN"] if args.nft else []))
    if lacking:
        raise BridgeError(f"the IPS needs {', '.join(lacking)} (CAP_NET_RAW: resets and capture; CAP_NET_ADMIN: "
                          "nftables): run as root or grant them (deploy/systemd/tls-bridge-ips.service does)")
    port_map = {}
    for item in args.port_map:
        synthetic, _, original = item.partition("=")
        if not (synthetic.isdigit() and original.isdigit()):
            raise BridgeError(f"--port-map {item!r}: expected SYNTHETIC=ORIGINAL, e.g. 80=443")
        port_map[int(synthetic)] = int(original)
    blocking: set[tuple[int, int]] = set()
    for path in args.rules:
        try:
            blocking |= blocking_rules(open(path, encoding="utf-8", errors="replace").read())
        except OSError as error:
            raise BridgeError(f"--rules {path}: {error.strerror}") from error
    nft = None if not args.nft else NftBlocklist(args.nft_table, args.nft_set, timeout=args.nft_timeout)
    if nft is not None:
        nft.setup()
    table, lock, stop = ConnectionTable(), threading.Lock(), threading.Event()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    sniffing = []
    for interface in args.interfaces:
        sniffing.append(ready := threading.Event())
        threading.Thread(target=_sniff, args=(interface, table, lock, stop, ready), name=f"ips-{interface}",
                         daemon=True).start()
    for ready in sniffing:  # a connection cut before its sniffer saw a segment would get no reset
        ready.wait(30)
    log = sys.stdout if args.log in (None, "-") else open(args.log, "a", encoding="utf-8")
    blocker = Blocker(table, lock, nft, resets=args.resets, log=log)
    if args.flows:
        threading.Thread(target=_annotate_from_flows, args=(args.flows, blocker, stop), daemon=True).start()
    if args.eve_socket:
        source, lines = f"the eve socket {args.eve_socket} ({args.eve_socket_type})", listen_unix(
            args.eve_socket, stop, kind=args.eve_socket_type)
    else:
        source, lines = args.eve, follow_file(args.eve, stop, from_start=args.from_start)
    print(f"tls-bridge: ips: following {source}; watching {', '.join(args.interfaces) or 'no interface'}"
          + (f"; nftables {args.nft_table} @{args.nft_set}4/6" if nft else ""), file=sys.stderr, flush=True)
    alerts = 0
    for line in lines:
        request = block_request(line, port_map=port_map, blocking=blocking)
        if request is not None:
            alerts += 1
            blocker.block(request)
    print(f"tls-bridge: ips: {alerts} blocking alerts, {len(blocker.blocked)} connections cut", file=sys.stderr)
    if log is not sys.stdout:
        log.close()
    return 0


