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
forward-hook chain drops.  A loaded gateway may see a sequence number late: once
the block is in place and the watch has caught up, an end whose number moved gets
another RST, and for a few seconds any segment of the cut connection (a challenge
ACK answering a RST that missed) is answered with the RST its sender expects.
Each block is logged with the time from the alerting
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
from bridge.ips.connections import ConnectionTable, endpoint
from bridge.ips.eve import BlockRequest, block_request, blocking_rules
from bridge.ips.eve_source import follow_file, listen_unix
from bridge.ips.nft import NftBlocklist
from bridge.ips.reset import reset_answering, reset_packets
from bridge.engine.packets import TcpSegment, classify


#: after a cut, a segment of the connection seen within this many seconds is answered with
#: a RST at the sequence number its sender acknowledges, at most this many per connection
CHASE_SECONDS = 5.0
CHASE_RESETS = 8
#: how long a cut waits for the sniffers to have seen what passed before the block
CATCH_UP_SECONDS = 0.5


class Sniffer:
    """One watched interface: its segments keep the table's sequence numbers; a segment of a
    cut connection gets the exact RST its sender expects (see :class:`Chase`)."""

    def __init__(self, interface: str, table: ConnectionTable, lock: threading.Lock, chase: Chase | None,
                 stop: threading.Event) -> None:
        self.interface, self.table, self.lock, self.chase, self.stop = interface, table, lock, chase, stop
        self.ready = threading.Event()
        #: every frame the kernel took before this time (ns, the wall clock) has been seen
        self.seen_until_ns = 0

    def run(self) -> None:
        from bridge.capture.afpacket import AfPacketCapture

        try:
            capture = AfPacketCapture(self.interface, stop_event=self.stop, idle_marker=True, poll_interval=0.02)
        finally:
            self.ready.set()  # its socket is open (or it failed): 'following' is not said before it sees packets
        table, lock, chase = self.table, self.lock, self.chase
        for frame in capture:
            if frame is None:  # nothing waiting: all the kernel took so far is seen
                self.seen_until_ns = time.time_ns()
                continue
            self.seen_until_ns = frame.timestamp_ns
            try:
                segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
            except PacketDecodeError:
                continue
            if isinstance(segment, TcpSegment):
                with lock:
                    table.observe(segment)
                if chase is not None and chase.active:
                    chase.answer(segment)


class Chase:
    """The cut connections still answered: a RST to each segment's sender at the sequence
    number it acknowledges.  The first RSTs aim at what the sniffers saw last, which a
    loaded gateway may not have seen yet (a RST behind the receiver's window is ignored)
    or the receiver may not have received yet (one ahead of it gets a challenge ACK):
    the challenge ACK, or any later segment, names the exact number."""

    def __init__(self, sender: ResetSender) -> None:
        self.sender = sender
        self._lock = threading.Lock()
        self._cut: dict[tuple[str, int, str, int], list[float]] = {}  # key → [deadline, resets left]
        self.active = False
        self.answered = 0
        self._next_prune = 0.0

    def add(self, key: tuple[str, int, str, int]) -> None:
        with self._lock:
            self._cut[key] = [time.monotonic() + CHASE_SECONDS, CHASE_RESETS]
            self.active = True

    def answer(self, segment: TcpSegment) -> None:
        key = ConnectionTable.key(endpoint(segment.src, segment.sport), endpoint(segment.dst, segment.dport))
        with self._lock:
            now = time.monotonic()
            if now >= self._next_prune:
                self._next_prune = now + 1.0
                for old in [k for k, (deadline, _) in self._cut.items() if deadline < now]:
                    del self._cut[old]
                self.active = bool(self._cut)
            entry = self._cut.get(key)
            if entry is None or entry[0] < now or entry[1] <= 0:
                return
            reply = reset_answering(segment)  # built only for a cut connection's segment
            if reply is None:
                return
            entry[1] -= 1
            self.answered += 1
        self.sender.send(*reply)


class ResetSender:
    """Raw IP sockets: the gateway's own stack routes the RSTs."""

    def __init__(self) -> None:
        self._raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, destination: str, packet: bytes) -> None:
        (self._raw4 if ":" not in destination else self._raw6).sendto(packet, (destination, 0))


class Blocker:
    """A cut: a RST to each end at once, at what the sniffers saw last; the 4-tuple into
    the nftables set (nothing more passes); once the sniffers have seen everything that
    passed before it, a RST again to an end whose sequence number moved meanwhile; and
    the connection chased (:class:`Chase`) for :data:`CHASE_SECONDS`."""

    def __init__(self, table: ConnectionTable, lock: threading.Lock, nft: NftBlocklist | None, *, resets: bool,
                 log: IO[str], sniffers: list[Sniffer] | None = None) -> None:
        self.table, self.lock, self.nft, self.resets, self.log = table, lock, nft, resets, log
        self.sniffers = sniffers or []
        self.blocked: set[tuple[str, int, str, int]] = set()
        self._log_lock = threading.Lock()
        self.chase = Chase(ResetSender()) if resets else None  # the resets' sockets with it

    def _resets(self, request: BlockRequest) -> list[tuple[str, bytes]]:
        with self.lock:
            connection = self.table.get((request.src, request.sport), (request.dst, request.dport))
            return reset_packets(connection) if connection is not None else []

    def _catch_up(self, since_ns: int) -> bool:
        """Wait until every sniffer saw what the kernel took before ``since_ns``."""
        deadline = time.monotonic() + CATCH_UP_SECONDS
        while any(s.seen_until_ns < since_ns for s in self.sniffers):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def block(self, request: BlockRequest) -> None:
        if request.key in self.blocked:
            return
        self.blocked.add(request.key)
        a, b = (request.src, request.sport), (request.dst, request.dport)
        first: list[tuple[str, bytes]] = []
        if self.chase is not None:  # resets on
            self.chase.add(request.key)
            first = self._resets(request)
            for destination, packet in first:
                self.chase.sender.send(destination, packet)
        if self.nft is not None:
            self.nft.block(a, b)
        cut = time.time()
        record: dict[str, object] = {
            "event": "cut", "time": round(cut, 6), "src": f"{request.src}:{request.sport}", "dst": f"{request.dst}:{request.dport}",
            "signature_id": request.signature_id, "signature": request.signature, "why": list(request.reasons),
            "resets_sent": len(first), "nft": self.nft is not None,
            "alert_to_cut_ms": round((cut - request.alerted_at) * 1000, 3) if request.alerted_at else None,
        }
        if self.resets and not first:
            record["note"] = "no sequence numbers seen for this connection on the watched interfaces: nft only"
        self.write(record)
        if self.chase is not None and self.nft is not None and first:
            caught_up = self._catch_up(time.time_ns())
            again = [reset for reset in self._resets(request) if reset not in first]
            for destination, packet in again:
                self.chase.sender.send(destination, packet)
            if again or not caught_up:
                # an end's sequence number moved between what the watch had seen and the block
                self.write({"event": "reset_again", "time": round(time.time(), 6), "src": record["src"],
                            "dst": record["dst"], "resets_sent": len(again), "caught_up": caught_up})

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
    log = sys.stdout if args.log in (None, "-") else open(args.log, "a", encoding="utf-8")
    blocker = Blocker(table, lock, nft, resets=args.resets, log=log)
    for interface in args.interfaces:
        sniffer = Sniffer(interface, table, lock, blocker.chase, stop)
        blocker.sniffers.append(sniffer)
        threading.Thread(target=sniffer.run, name=f"ips-{interface}", daemon=True).start()
    for sniffer in blocker.sniffers:  # a connection cut before its sniffer saw a segment would get no reset
        sniffer.ready.wait(30)
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


