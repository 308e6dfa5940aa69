"""The inline IPS's decisions: the encrypted packet waits for Suricata's verdict on its
plaintext.

Pure (no sockets, the clock injected as ``now``): :class:`InlineIps` is fed the
packets the kernel queued (:meth:`~InlineIps.packet`, raw IP with the queue's
packet id), the frames that came out of Suricata (:meth:`~InlineIps.from_suricata`)
and the time (:meth:`~InlineIps.tick`); it owns the decryption engine
(:class:`bridge.engine.Engine`) and the synthetic cleartext builder
(:class:`bridge.reinject.synthetic.SyntheticFlows`), and leaves what the driver
(:mod:`bridge.ips.inline_service`) must do in :attr:`~InlineIps.out`: verdicts,
frames for Suricata, resets, log lines.

What is held.  Per direction of a monitored connection the TLS record boundaries
are followed (:mod:`bridge.ips.records`).  An endpoint uses a record only once
all of it arrived (records are authenticated whole), so the segment carrying a
record's last byte is the one held; the segments before it pass at once, and
every later segment of that direction queues behind a held one (the order on
the wire is kept; retransmissions of a held segment queue behind it too).
Handshake records pass at once, as do TLS 1.3's encrypted handshake records
(their secrets are here and no application data came out of them).

What decides.  The segment goes to the engine; the application data it
completes comes out as plaintext, is sent to Suricata (an IPS: af-packet
``copy-mode: ips``) as synthetic cleartext TCP, followed by a probe (a UDP
datagram on a reserved link-local address).  Suricata handles one interface's
packets in order, so when the probe comes out every data segment before it has
been judged: those that came out passed (the held packets are released); one
that did not was dropped (a ``drop`` or ``reject`` rule) or lost on the way (a
ring or a queue full on a loaded host): the segments missing are sent again with
a new probe, up to ``verdict_retries`` times (Suricata drops a flow once a drop
rule matched it: what it dropped stays missing); missing still, the held packets
are dropped and the connection is cut, a RST to each end at the sequence number it
expects (:mod:`bridge.ips.reset`).

Policies, as Suricata names its exception policies: ``pass-flow`` (release, the
connection is not inspected any more: ``uninspected`` in the flow log) or
``drop-flow`` (drop and cut), separately for secrets that did not come within
the hold budget (``keys``), Suricata not answering within the verdict timeout
(``verdict``), and holding memory over its bounds, per connection or in total
(``memcap``); a connection over its budget follows the policy and never blocks
the others.  Connections not monitored — not TLS, or picked up without their
SYN — pass untouched.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.capture.frames import LINKTYPE_RAW, Frame
from bridge.engine import (
    Engine,
    EngineSettings,
    FlowFinished,
    FlowStarted,
    KeysWanted,
    PlaintextData,
)
from bridge.engine.packets import (
    ACK,
    FIN,
    RST,
    SYN,
    TcpSegment,
    classify,
    format_endpoint,
)
from bridge.errors import BridgeError, PacketDecodeError
from bridge.histogram import Histogram
from bridge.ips.connections import Side, TrackedConnection
from bridge.ips.nfqueue import NF_ACCEPT, NF_DROP
from bridge.ips.records import APPLICATION_DATA, TLS13, RecordBoundaries
from bridge.ips.reset import reset_packets
from bridge.keys.store import KeyStore
from bridge.reinject.synthetic import SyntheticFlows, SyntheticOptions
from bridge.tls.state import Direction

MASK = 0xFFFFFFFF
POLICIES = ("pass-flow", "drop-flow")
#: seconds a packet is held: from the queue hop (~0.1 ms) to a missing-keys budget
HOLD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

PROBE_SOURCE = bytes([169, 254, 13, 1])
PROBE_DESTINATION = bytes([169, 254, 13, 2])
PROBE_PORT = 13013
_PROBE_MAGIC = b"tls-bridge-probe"


class InlineSettingsError(BridgeError):
    """An inline IPS setting is out of its bounds."""


@dataclass(frozen=True)
class InlineSettings:
    hold_budget: float = 2.0  # seconds held packets wait for their connection's secrets
    verdict_timeout: float = 1.0  # seconds Suricata has to judge a record's plaintext
    keys_policy: str = "drop-flow"
    verdict_policy: str = "drop-flow"
    memcap_policy: str = "drop-flow"
    decrypt_policy: str = "drop-flow"  # secrets present, but a record failed to decrypt (wrong_key, ...)
    flow_memcap: int = 4 << 20  # bytes of packets held per connection
    memcap: int = 256 << 20  # bytes of packets held in all
    max_flows: int = 100_000
    idle_timeout: float = 300.0
    recently_closed: int = 65_536  # closed connections remembered (a cut one keeps dropping)
    resets: bool = True
    #: times a data segment missing at its probe is sent to Suricata again before it counts
    #: as dropped (a frame lost in a full ring is not a verdict)
    verdict_retries: int = 2

    def __post_init__(self) -> None:
        for name in ("keys_policy", "verdict_policy", "memcap_policy", "decrypt_policy"):
            if getattr(self, name) not in POLICIES:
                raise InlineSettingsError(f"{name.replace('_', '-')}: {getattr(self, name)!r}, expected "
                                          f"{' or '.join(POLICIES)}")
        if not 0 <= self.verdict_retries <= 10:
            raise InlineSettingsError(f"--verdict-retries: {self.verdict_retries}, expected 0 to 10")
        for name in ("hold_budget", "verdict_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise InlineSettingsError(f"--{name.replace('_', '-')} must be positive")
        if self.flow_memcap < 65536 or self.memcap < self.flow_memcap:
            raise InlineSettingsError("--flow-memcap must be at least 65536 bytes, and --memcap at least "
                                      "--flow-memcap")


@dataclass(slots=True)
class InlineCounters:
    packets: int = 0
    accepted: int = 0  # at once: nothing to hold
    held: int = 0
    released: int = 0
    dropped: int = 0
    unmonitored: int = 0  # packets of connections not monitored (not TLS, no SYN seen, not TCP)
    fail_open: int = 0  # connections released uninspected by a pass-flow policy
    fail_closed: int = 0  # connections cut by a drop-flow policy
    verdicts_passed: int = 0
    verdicts_dropped: int = 0
    decrypt_failures: int = 0  # connections whose records could not be decrypted although secrets were there
    cuts: int = 0
    probes: int = 0
    resent: int = 0  # data segments sent to Suricata again: missing at their probe (lost, or dropped)
    policy: dict[str, int] = field(default_factory=dict)  # "keys:pass-flow" → connections
    hold_time: Histogram = field(default_factory=lambda: Histogram(HOLD_BUCKETS))


@dataclass(slots=True)
class Out:
    """What the driver does next, drained by it."""

    verdicts: list[tuple[int, int]] = field(default_factory=list)  # (packet id, NF_ACCEPT/NF_DROP)
    to_suricata: list[bytes] = field(default_factory=list)  # Ethernet frames
    resets: list[tuple[str, bytes]] = field(default_factory=list)  # (destination, IP packet)
    log: list[dict[str, object]] = field(default_factory=list)  # releases, cuts, policies
    flows: list[dict[str, object]] = field(default_factory=list)  # flow log lines

    def clear(self) -> None:
        self.verdicts, self.to_suricata, self.resets, self.log, self.flows = [], [], [], [], []


class _Group:
    """The held packets one verdict decides: Suricata's on some plaintext, or the
    arrival of the connection's secrets."""

    __slots__ = ("conn", "created", "decided_at", "kind", "number", "probe", "retries", "state", "unseen", "why")

    def __init__(self, number: int, conn: _Conn, kind: str, now: float) -> None:
        self.number, self.conn, self.kind, self.created = number, conn, kind, now
        self.state = "pending"  # passed, dropped
        #: data segments not out of Suricata yet: their key (src, sport, dst, dport, seq) → frame,
        #: kept to be sent again if they are missing at the probe
        self.unseen: dict[tuple, bytes] = {}
        self.retries = 0
        self.probe = -1
        self.decided_at: float | None = None
        self.why = ""


class _Held:
    __slots__ = ("arrived", "data", "end", "group", "packet_id", "seq_end", "size", "start")

    def __init__(self, packet_id: int, start: int, end: int, seq_end: int, size: int, arrived: float,
                 data: bytes | None = None) -> None:
        self.packet_id, self.start, self.end, self.seq_end = packet_id, start, end, seq_end
        self.size, self.arrived, self.data = size, arrived, data
        self.group: _Group | None = None


class _Side:
    __slots__ = ("app_records", "future", "isn", "keywait", "queue", "records", "released_next")

    def __init__(self) -> None:
        self.isn: int | None = None
        self.records = RecordBoundaries()
        self.queue: deque[_Held] = deque()
        self.future: list[_Held] = []  # after a hole: not framed yet (their bytes are kept in .data)
        self.released_next: int | None = None  # absolute sequence number after what passed
        self.keywait: _Group | None = None
        self.app_records = 0  # records of content type application_data (23) that ended


class _Conn:
    __slots__ = (
        "client",
        "decrypted",
        "dropped",
        "dropped_groups",
        "flow_id",
        "held",
        "held_bytes",
        "key",
        "keys_seen",
        "last_seen",
        "max_hold",
        "passed_groups",
        "policies",
        "reason",
        "released",
        "server",
        "sides",
        "started",
        "state",
        "summary",
        "synthetic_port",
    )

    def __init__(self, key: tuple, client: tuple[bytes, int], server: tuple[bytes, int], now: float) -> None:
        self.key, self.client, self.server = key, client, server
        self.state = "monitoring"  # unmonitored, uninspected, cut
        self.reason: str | None = None
        self.sides = (_Side(), _Side())
        self.flow_id: int | None = None
        self.held_bytes = 0
        self.last_seen = self.started = now
        self.summary: FlowFinished | None = None
        self.decrypted = False
        self.keys_seen = False  # its secrets were in the store (the engine forgets them when it ends the flow)
        self.policies: list[str] = []
        self.held = self.released = self.dropped = self.passed_groups = self.dropped_groups = 0
        self.max_hold = 0.0
        self.synthetic_port: int | None = None  # the synthetic copy's client port, when not the original's

    def endpoint(self, which: tuple[bytes, int]) -> str:
        return format_endpoint(which[0], which[1])

    def busy(self) -> bool:
        return any(side.queue or side.future for side in self.sides)


def _key(seg: TcpSegment) -> tuple:
    return _pair_key((seg.src, seg.sport), (seg.dst, seg.dport))


def _pair_key(a: tuple[bytes, int], b: tuple[bytes, int]) -> tuple:
    """A connection's key from its two (address, port) sides, either way round."""
    return (a, b) if a <= b else (b, a)


def _unwrap(relative32: int, frontier: int) -> int:
    """A 32-bit stream offset as the offset nearest ``frontier`` (streams over 4 GiB)."""
    delta = (relative32 - frontier) & MASK
    return frontier + (delta - (1 << 32) if delta >= 1 << 31 else delta)


def probe_frame(number: int, source_mac: bytes, destination_mac: bytes) -> bytes:
    payload = _PROBE_MAGIC + struct.pack("!Q", number)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0,
                               PROBE_SOURCE, PROBE_DESTINATION))
    from bridge.reinject.synthetic import internet_checksum

    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    udp = struct.pack("!HHHH", PROBE_PORT, PROBE_PORT, 8 + len(payload), 0)
    return destination_mac + source_mac + b"\x08\x00" + bytes(ip) + udp + payload


def parse_output_frame(frame: bytes) -> tuple[str, object] | None:
    """What came out of Suricata: ("probe", number), ("data", (src, sport, dst, dport, seq)),
    or None (anything else)."""
    if len(frame) < 14:
        return None
    ethertype, offset = (frame[12] << 8) | frame[13], 14
    if ethertype == 0x8100 and len(frame) >= 18:
        ethertype, offset = (frame[16] << 8) | frame[17], 18
    if ethertype == 0x0800 and len(frame) >= offset + 20:
        ihl = (frame[offset] & 15) * 4
        proto = frame[offset + 9]
        src, dst = frame[offset + 12:offset + 16], frame[offset + 16:offset + 20]
        total = (frame[offset + 2] << 8) | frame[offset + 3]
        l4, end = offset + ihl, min(len(frame), offset + total)
    elif ethertype == 0x86DD and len(frame) >= offset + 40:
        proto = frame[offset + 6]
        src, dst = frame[offset + 8:offset + 24], frame[offset + 24:offset + 40]
        l4, end = offset + 40, min(len(frame), offset + 40 + ((frame[offset + 4] << 8) | frame[offset + 5]))
    else:
        return None
    if proto == 17 and src == PROBE_SOURCE and end - l4 >= 8 + len(_PROBE_MAGIC) + 8:
        body = frame[l4 + 8:end]
        if body.startswith(_PROBE_MAGIC):
            return "probe", struct.unpack_from("!Q", body, len(_PROBE_MAGIC))[0]
        return None
    if proto != 6 or end - l4 < 20:
        return None
    sport, dport, seq = struct.unpack_from("!HHI", frame, l4)
    if end - l4 - (frame[l4 + 12] >> 4) * 4 <= 0:
        return None
    return "data", (bytes(src), sport, bytes(dst), dport, seq)


class InlineIps:
    """Queued packets and Suricata's output in; verdicts, frames, resets and logs out (:attr:`out`)."""

    def __init__(self, keys: KeyStore, settings: InlineSettings | None = None, *,
                 engine_settings: EngineSettings | None = None,
                 synthetic: SyntheticOptions | None = None,
                 on_keys_wanted: Callable[[KeysWanted], None] | None = None,
                 release_log: bool = False) -> None:
        self.settings = settings or InlineSettings()
        self.keys = keys
        self.counters = InlineCounters()
        self.out = Out()
        self.release_log = release_log
        self._events: list[object] = []
        self.engine = Engine(keys, engine_settings or EngineSettings(), output=self._events.append,
                             request_keys=on_keys_wanted is not None)
        self.synthetic = SyntheticFlows(synthetic or SyntheticOptions())
        self._on_keys_wanted = on_keys_wanted
        self._conns: OrderedDict[tuple, _Conn] = OrderedDict()
        self._by_flow: dict[int, _Conn] = {}
        self._closed: OrderedDict[tuple, str] = OrderedDict()  # key → "cut" or "closed"
        #: 4-tuples whose synthetic copy Suricata dropped: it keeps such a flow (dropping
        #: everything) until its flow timeout, so a new connection on the same 4-tuple
        #: gets its synthetic copy another client port
        self._cut_tuples: OrderedDict[tuple, None] = OrderedDict()
        self._port_cursor = 0
        self._expected: dict[tuple, _Group] = {}  # a synthetic data segment (src, sport, dst, dport, seq) → group
        self._awaiting_probe: deque[_Group] = deque()
        self._pending: dict[int, _Group] = {}
        self._groups = 0
        self._probe_next = 0
        self._probe_due = False
        self._finishing: set[_Conn] = set()
        self.held_bytes = 0
        self._next_idle_scan = 0.0
        self._now = 0.0  # the time of the latest call (groups made while routing start then)
        self._step_groups: dict[tuple[int, int], _Group] = {}
        self._orphans: dict[int, dict[str, object]] = {}  # flow id → the IPS facts of a connection dropped early

    # --- packets from the queue -----------------------------------------------------------

    def packet(self, packet_id: int, data: bytes, now: float) -> None:
        self._now = now
        counters = self.counters
        counters.packets += 1
        try:
            seg = classify(LINKTYPE_RAW, data, int(now * 1e9))
        except PacketDecodeError:
            seg = None
        if seg is None or seg.__class__ is not TcpSegment:
            self._accept_now(packet_id, unmonitored=True)
            return
        key = _key(seg)  # type: ignore[arg-type]
        conn = self._conns.get(key)
        flags = seg.flags  # type: ignore[union-attr]
        if conn is None:
            closed = self._closed.get(key)
            if flags & SYN and not flags & ACK:
                conn = self._new(key, seg, now)  # type: ignore[arg-type]
            elif closed == "cut":
                self._drop_now(packet_id)
                return
            else:  # picked up mid-way (its SYN came before us), or the last ACKs of a closed one
                self._accept_now(packet_id, unmonitored=closed is None)
                return
        else:
            self._conns.move_to_end(key)
        conn.last_seen = now
        if conn.state == "cut":
            self._drop_now(packet_id)
            return
        self._segment(conn, packet_id, seg, data, now)  # type: ignore[arg-type]

    def _new(self, key: tuple, seg: TcpSegment, now: float) -> _Conn:
        conn = _Conn(key, (seg.src, seg.sport), (seg.dst, seg.dport), now)
        if key in self._cut_tuples:
            self._port_cursor = (self._port_cursor + 7919) % 64511  # a stride through 1024..65534
            conn.synthetic_port = 1024 + self._port_cursor
        self._conns[key] = conn
        self._closed.pop(key, None)
        while len(self._conns) > self.settings.max_flows:
            _, old = self._conns.popitem(last=False)
            self._policy(old, self.settings.memcap_policy, "memcap", "max-flows: least recently active", now)
            self._finish(old, now)
        return conn

    def _segment(self, conn: _Conn, packet_id: int, seg: TcpSegment, data: bytes, now: float) -> None:
        direction = Direction.C2S if (seg.src, seg.sport) == conn.client else Direction.S2C
        side = conn.sides[direction]
        flags = seg.flags
        frame = Frame(int(now * 1e9), LINKTYPE_RAW, data, len(data))
        if conn.state != "monitoring":  # unmonitored, uninspected: the engine still follows it (the flow log)
            self._accept_now(packet_id, unmonitored=conn.state == "unmonitored")
            self._feed(frame)
            return
        if flags & SYN:
            side.isn = (seg.seq + 1) & MASK
            side.released_next = side.isn
            self._accept_now(packet_id)
            self._feed(frame)
            return
        payload = seg.payload
        if side.isn is None or (not payload and not flags & FIN) or flags & RST:
            if side.isn is None and payload:
                self._unmonitor(conn, "no SYN seen in this direction", now)
            self._accept_now(packet_id)
            self._feed(frame)
            return
        start = _unwrap((seg.seq - side.isn) & MASK, side.records.offset)
        end = start + len(payload)
        held = _Held(packet_id, start, end, (seg.seq + len(payload) + (1 if flags & FIN else 0)) & MASK,
                     len(data), now)
        if not payload:  # a FIN: after the data before it
            if side.queue or side.future:
                self._hold(conn, side, held)
            else:
                self._accept_now(packet_id)
                side.released_next = held.seq_end
            self._feed(frame)
            return
        if start > side.records.offset:  # after a hole: framed when the hole is filled
            held.data = data
            self._hold_future(conn, side, held)
        else:
            self._in_order(conn, direction, held, payload, frame, now)
            while side.future and side.future[0].start <= side.records.offset and conn.state == "monitoring":
                later = side.future.pop(0)
                later_seg = classify(LINKTYPE_RAW, later.data, int(now * 1e9))
                raw, later.data = later.data, None
                self._in_order(conn, direction, later, later_seg.payload,  # type: ignore[union-attr]
                               Frame(int(now * 1e9), LINKTYPE_RAW, raw, len(raw)), now, counted=True)
        self._check_memory(conn, now)
        self._pump(conn, now)

    def _in_order(self, conn: _Conn, direction: Direction, held: _Held, payload: bytes, frame: Frame, now: float,
                  *, counted: bool = False) -> None:
        side = conn.sides[direction]
        frontier = side.records.offset
        ends: list[tuple[int, int]] = []
        if held.end > frontier:
            ends = side.records.feed(memoryview(payload)[frontier - held.start:])
            if side.records.broken or not side.records.looks_like_tls:
                self._feed(frame)
                if counted:
                    self._release(conn, held, now)
                else:
                    self._accept_now(held.packet_id)
                self._unmonitor(conn, "not TLS", now)
                return
        # Secrets seen in the store before the engine is given what arrived are secrets the
        # engine has: a record it then leaves without plaintext is not application data.
        known = self._keys_known(conn)
        if self.keys.has_arrivals:
            self.engine.keys_arrived()
            self._route()
        self._feed(frame)
        app = self._application_data(conn, direction, ends)
        if app and known and self._decrypt_failed(conn, now, side, held, counted):
            return
        created = self._step_groups.get((id(conn), direction))
        if created is not None:
            held.group = created
        elif app and not known:
            if side.keywait is None or side.keywait.state != "pending":
                side.keywait = self._new_group(conn, "keys", now)
            held.group = side.keywait
        if held.group is None and not side.queue and not counted:
            self._accept_now(held.packet_id)
            side.released_next = held.seq_end
            return
        if counted:
            side.queue.append(held)
        else:
            self._hold(conn, side, held)

    # --- the engine ---------------------------------------------------------------------------

    def _feed(self, frame: Frame) -> None:
        self.engine.run((frame,))
        self._route()

    def _route(self) -> None:
        """The engine's events: plaintext to Suricata (a verdict group per connection and
        direction), finished connections to the flow log."""
        events, self._events[:] = list(self._events), []
        self._step_groups = {}
        if not events:
            return
        for event in events:
            cls = event.__class__
            if cls is PlaintextData:
                conn = self._by_flow.get(event.flow.flow_id)  # type: ignore[attr-defined]
                frames = self.synthetic.handle(self._synthetic_event(conn, event))
                self.out.to_suricata.extend(f.data for f in frames)
                if conn is None or conn.state != "monitoring":
                    continue
                conn.decrypted = True
                group_key = (id(conn), event.direction)  # type: ignore[attr-defined]
                group = self._step_groups.get(group_key)
                if group is None:
                    group = self._step_groups[group_key] = self._new_group(conn, "verdict", self._now)
                    side = conn.sides[event.direction]  # type: ignore[attr-defined]
                    if side.keywait is not None and side.keywait.state == "pending":  # their records decrypted now
                        for held in side.queue:
                            if held.group is side.keywait:
                                held.group = group
                        self._settle(side.keywait, "passed", self._now, "secrets arrived")
                        side.keywait = None
                for out_frame in frames:
                    parsed = parse_output_frame(out_frame.data)
                    if parsed is not None and parsed[0] == "data":
                        self._expected[parsed[1]] = group  # type: ignore[index]
                        group.unseen[parsed[1]] = out_frame.data  # type: ignore[index]
            elif cls is FlowStarted:
                # found by its addresses: the engine may start a connection while routing another's
                # packet (one its compiled front held, ended to make room for this one)
                info = event.flow  # type: ignore[attr-defined]
                started = self._conns.get(_pair_key((info.client_ip, info.client_port),
                                                    (info.server_ip, info.server_port)))
                if started is not None and started.flow_id is None:
                    started.flow_id = info.flow_id
                    self._by_flow[info.flow_id] = started
            elif cls is FlowFinished:
                flow_id = event.flow.flow_id  # type: ignore[attr-defined]
                conn = self._by_flow.pop(flow_id, None)
                self.out.to_suricata.extend(f.data for f in self.synthetic.handle(self._synthetic_event(conn, event)))
                if conn is None:
                    annotations: dict[str, object] = {"synthetic": self.synthetic.describe(flow_id)}
                    if flow_id in self._orphans:
                        annotations["ips"] = self._orphans.pop(flow_id)
                    self.out.flows.append(event.summary.to_record(**annotations))  # type: ignore[attr-defined]
                else:
                    conn.summary = event  # type: ignore[assignment]
                    self._finishing.add(conn)
            elif cls is KeysWanted and self._on_keys_wanted is not None:
                self._on_keys_wanted(event)  # type: ignore[arg-type]
        for group in self._step_groups.values():
            if not group.unseen:  # plaintext without data segments: nothing to judge
                self._settle(group, "passed", group.created, "no data")
            else:
                self._awaiting_probe.append(group)
                group.probe = self._probe_next
                self._probe_due = True

    def _application_data(self, conn: _Conn, direction: Direction, ends: list[tuple[int, int]]) -> bool:
        """Whether records that ended may carry application data.  TLS 1.3 protects its
        handshake in records of type application_data too: the server's flight
        (EncryptedExtensions .. Finished) ends before the client's first such record,
        which is the client's Finished; they pass at once, so the handshake never waits
        for secrets a harvester reads once it is done.  (Early data and client
        certificates are not told apart: they wait like application data.)"""
        count = sum(1 for _, kind in ends if kind == APPLICATION_DATA)
        if not count:
            return False
        side, other = conn.sides[direction], conn.sides[1 - direction]
        before = side.app_records
        side.app_records += count
        if conn.sides[Direction.S2C].records.server_version != TLS13:
            return True
        if direction == Direction.S2C:
            return conn.sides[Direction.C2S].app_records > 0  # after the client's Finished
        if before == 0 and other.app_records > 0:  # this one's first: the client's Finished
            return count > 1
        return True

    @staticmethod
    def _synthetic_event(conn: _Conn | None, event):  # type: ignore[no-untyped-def]
        """The event as the synthetic copy is built from it: another client port when the
        connection reuses a 4-tuple whose copy Suricata dropped."""
        if conn is None or conn.synthetic_port is None:
            return event
        return dataclasses.replace(event, flow=dataclasses.replace(event.flow, client_port=conn.synthetic_port))

    def _decrypt_failed(self, conn: _Conn, now: float, side: _Side | None = None, held: _Held | None = None,
                        counted: bool = False) -> bool:
        """Secrets were there but the engine could not decrypt (``wrong_key``, a record it
        cannot parse, an unsupported cipher): the records cannot be judged, so the decrypt
        policy decides — never a pass as if Suricata had seen them.  ``held``: the packet
        that brought the record, held first so that the policy decides it too."""
        if conn.flow_id is None or not self._keys_known(conn):  # without secrets: the missing-keys policy's case
            return False
        failure = self.engine.decryptor.failure(conn.flow_id)
        if failure is None and conn.summary is not None and conn.summary.status not in ("decrypted", None):
            failure = conn.summary.status, conn.summary.summary.reason  # the engine ended it meanwhile
        if failure is None:
            return False
        status, reason = failure
        if status == "no_keys":  # the engine gave up waiting: the missing-keys policy's case
            return False
        if held is not None and side is not None:
            if counted:  # counted as held when it came after a hole
                side.queue.append(held)
            else:
                self._hold(conn, side, held)
        self.counters.decrypt_failures += 1
        self._policy(conn, self.settings.decrypt_policy, "decrypt", f"decryption failed: {status} ({reason})", now)
        return True

    def _keys_known(self, conn: _Conn) -> bool:
        if conn.decrypted or conn.keys_seen:
            return True
        random = conn.sides[Direction.C2S].records.client_random
        conn.keys_seen = random is not None and self.keys.lookup(random) is not None
        return conn.keys_seen

    # --- holding and releasing --------------------------------------------------------------------

    def _new_group(self, conn: _Conn, kind: str, now: float) -> _Group:
        self._groups += 1
        group = _Group(self._groups, conn, kind, now)
        self._pending[group.number] = group
        return group

    def _hold(self, conn: _Conn, side: _Side, held: _Held) -> None:
        side.queue.append(held)
        self._count_held(conn, held)

    def _hold_future(self, conn: _Conn, side: _Side, held: _Held) -> None:
        index = len(side.future)
        while index and side.future[index - 1].start > held.start:
            index -= 1
        side.future.insert(index, held)
        self._count_held(conn, held)

    def _count_held(self, conn: _Conn, held: _Held) -> None:
        conn.held += 1
        conn.held_bytes += held.size
        self.held_bytes += held.size
        self.counters.held += 1

    def _accept_now(self, packet_id: int, *, unmonitored: bool = False) -> None:
        self.out.verdicts.append((packet_id, NF_ACCEPT))
        if unmonitored:
            self.counters.unmonitored += 1
        else:
            self.counters.accepted += 1

    def _drop_now(self, packet_id: int) -> None:
        self.out.verdicts.append((packet_id, NF_DROP))
        self.counters.dropped += 1

    def _unheld(self, conn: _Conn, held: _Held, now: float) -> None:
        conn.held_bytes -= held.size
        self.held_bytes -= held.size
        seconds = now - held.arrived
        conn.max_hold = max(conn.max_hold, seconds)
        self.counters.hold_time.observe(seconds)

    def _release(self, conn: _Conn, held: _Held, now: float) -> None:
        self.out.verdicts.append((held.packet_id, NF_ACCEPT))
        self._unheld(conn, held, now)
        conn.released += 1
        self.counters.released += 1

    def _pump(self, conn: _Conn, now: float) -> None:
        """Release each direction's queue from its head while nothing ahead waits."""
        if conn.state == "monitoring" and (conn.sides[0].queue or conn.sides[1].queue) and self._decrypt_failed(
                conn, now):
            return  # a record failed to decrypt: what is held cannot all have been judged
        for direction, side in enumerate(conn.sides):
            queue = side.queue
            released: list[_Held] = []
            while queue and (queue[0].group is None or queue[0].group.state == "passed"):
                held = queue.popleft()
                self._release(conn, held, now)
                side.released_next = held.seq_end
                released.append(held)
            if released and self.release_log:
                decided = {}
                for held in released:
                    group = held.group
                    if group is not None and group.number not in decided:
                        decided[group.number] = {"group": group.number, "kind": group.kind, "verdict": group.state,
                                                 "at": round(group.decided_at or 0.0, 6), "why": group.why}
                self.out.log.append({
                    "event": "release", "time": round(now, 6), "client": conn.endpoint(conn.client),
                    "server": conn.endpoint(conn.server), "direction": "c2s" if direction == 0 else "s2c",
                    "packets": len(released), "offsets": [released[0].start, released[-1].end],
                    "seq": [(side.isn + released[0].start) & MASK if side.isn is not None else None,
                            released[-1].seq_end],
                    "verdicts": list(decided.values())})
        if conn in self._finishing and not conn.busy():
            self._finish(conn, now)

    def _settle(self, group: _Group, state: str, now: float, why: str) -> None:
        if group.state != "pending":
            return
        group.state, group.decided_at, group.why = state, now, why
        self._pending.pop(group.number, None)
        if group.kind == "verdict":
            if state == "passed":
                self.counters.verdicts_passed += 1
                group.conn.passed_groups += 1
            else:
                self.counters.verdicts_dropped += 1
                group.conn.dropped_groups += 1

    # --- Suricata's output ---------------------------------------------------------------------

    def from_suricata(self, frame: bytes, now: float) -> None:
        self._now = now
        parsed = parse_output_frame(frame)
        if parsed is None:
            return
        kind, value = parsed
        if kind == "data":
            group = self._expected.pop(value, None)  # type: ignore[arg-type]
            if group is None:
                return
            group.unseen.pop(value, None)  # type: ignore[call-overload]
            if not group.unseen and group.state == "pending":
                self._settle(group, "passed", now, "suricata passed")
                if group.conn.state == "monitoring":
                    self._pump(group.conn, now)
            return
        number = value
        again = []
        while self._awaiting_probe and self._awaiting_probe[0].probe <= number:  # type: ignore[operator]
            group = self._awaiting_probe.popleft()
            if group.state != "pending":
                continue
            if group.retries < self.settings.verdict_retries and group.conn.state == "monitoring":
                # not judged, or lost before or after Suricata: once more, behind a new probe
                group.retries += 1
                self.counters.resent += len(group.unseen)
                self.out.to_suricata.extend(group.unseen.values())
                again.append(group)
                continue
            self._forget_expected(group)
            self._settle(group, "dropped", now, "suricata dropped")
            self._cut(group.conn, now, "suricata dropped the plaintext")
        if again:
            for group in again:
                group.probe = self._probe_next
                self._awaiting_probe.append(group)
            self._probe_due = True

    def _forget_expected(self, group: _Group) -> None:
        for key in group.unseen:
            if self._expected.get(key) is group:
                del self._expected[key]
        group.unseen.clear()

    def probe(self) -> int | None:
        """The number of the probe to send after this round's frames (None: none due)."""
        if not self._probe_due:
            return None
        self._probe_due = False
        number = self._probe_next
        self._probe_next += 1
        self.counters.probes += 1
        return number

    # --- policies, cuts ----------------------------------------------------------------------------

    def _policy(self, conn: _Conn, policy: str, what: str, why: str, now: float) -> None:
        if conn.state != "monitoring":
            return
        name = f"{what}:{policy}"
        self.counters.policy[name] = self.counters.policy.get(name, 0) + 1
        conn.policies.append(f"{name} ({why})")
        self.out.log.append({"event": "policy", "time": round(now, 6), "client": conn.endpoint(conn.client),
                             "server": conn.endpoint(conn.server), "policy": name, "why": why})
        if policy == "pass-flow":
            self.counters.fail_open += 1
            self._release_all(conn, now, "uninspected", why)
        else:
            self.counters.fail_closed += 1
            self._cut(conn, now, why)

    def _unmonitor(self, conn: _Conn, why: str, now: float) -> None:
        if conn.state == "monitoring":
            self._release_all(conn, now, "unmonitored", why)

    def _release_all(self, conn: _Conn, now: float, state: str, why: str) -> None:
        conn.state, conn.reason = state, why
        for side in conn.sides:
            for held in (*side.queue, *side.future):
                if held.group is not None:
                    self._forget_expected(held.group)
                    self._settle(held.group, "passed", now, why)
                self._release(conn, held, now)
                side.released_next = held.seq_end
            side.queue.clear()
            side.future.clear()
        if conn in self._finishing:
            self._finish(conn, now)

    def _cut(self, conn: _Conn, now: float, why: str) -> None:
        if conn.state == "cut":
            return
        conn.state, conn.reason = "cut", why
        self.counters.cuts += 1
        self._cut_tuples[conn.key] = None
        self._cut_tuples.move_to_end(conn.key)
        while len(self._cut_tuples) > self.settings.recently_closed:
            self._cut_tuples.popitem(last=False)
        longest = 0.0
        for side in conn.sides:
            for held in (*side.queue, *side.future):
                if held.group is not None:
                    self._forget_expected(held.group)
                    self._settle(held.group, "dropped", now, why)
                longest = max(longest, now - held.arrived)
                self.out.verdicts.append((held.packet_id, NF_DROP))
                self._unheld(conn, held, now)
                conn.dropped += 1
                self.counters.dropped += 1
            side.queue.clear()
            side.future.clear()
        sent = 0
        client, server = conn.sides
        if self.settings.resets and client.released_next is not None and server.released_next is not None:
            tracked = TrackedConnection({
                (str(ipaddress.ip_address(conn.client[0])), conn.client[1]): Side(client.released_next),
                (str(ipaddress.ip_address(conn.server[0])), conn.server[1]): Side(server.released_next)})
            packets = reset_packets(tracked)
            self.out.resets.extend(packets)
            sent = len(packets)
            for _destination, packet in packets:  # the engine sees the connection end as the endpoints do
                self._feed(Frame(int(now * 1e9), LINKTYPE_RAW, packet, len(packet)))
        self.out.log.append({"event": "cut", "time": round(now, 6), "client": conn.endpoint(conn.client),
                             "server": conn.endpoint(conn.server), "why": why, "resets_sent": sent,
                             "dropped_packets": conn.dropped, "held_ms": round(longest * 1000, 3)})
        if conn in self._finishing:
            self._finish(conn, now)

    def _check_memory(self, conn: _Conn, now: float) -> None:
        settings = self.settings
        if conn.held_bytes > settings.flow_memcap:
            self._policy(conn, settings.memcap_policy, "memcap", f"over {settings.flow_memcap} bytes held", now)
        elif self.held_bytes > settings.memcap:
            self._policy(conn, settings.memcap_policy, "memcap", f"all connections over {settings.memcap} bytes held",
                         now)

    # --- time ----------------------------------------------------------------------------------

    def keys_arrived(self, now: float) -> None:
        """Secrets came into the key store: what waited for them is decrypted and judged."""
        self._now = now
        ready = self._keys_ready()
        self.engine.keys_arrived()
        self._route()
        self._after_keys(ready, now)

    def _keys_ready(self) -> list[_Group]:
        """Groups waiting for secrets the store has now: after the engine's next look at the
        store, their records are decrypted (plaintext regroups them) or were not application data."""
        return [g for g in self._pending.values() if g.kind == "keys" and self._keys_known(g.conn)]

    def _after_keys(self, ready: list[_Group], now: float) -> None:
        for group in ready:
            conn = group.conn
            if conn.state == "monitoring" and group.state == "pending" and self._decrypt_failed(conn, now):
                continue  # the policy decided its packets
            if conn.state == "monitoring" and group.state == "pending":
                self._settle(group, "passed", now, "secrets arrived; no application data in the records held")
                for side in conn.sides:
                    if side.keywait is group:
                        side.keywait = None
                self._pump(conn, now)

    def tick(self, now: float) -> None:
        """Budgets and timeouts; call it often (every few milliseconds)."""
        self._now = now
        ready = self._keys_ready()
        self.engine.idle(int(now * 1e9))
        self._route()
        self._after_keys(ready, now)
        settings = self.settings
        for group in list(self._pending.values()):
            if group.state != "pending" or group.conn.state != "monitoring":
                self._pending.pop(group.number, None)  # its connection was released or cut meanwhile
                continue
            if group.kind == "keys" and now - group.created > settings.hold_budget:
                self._policy(group.conn, settings.keys_policy, "keys",
                             f"no secrets within {settings.hold_budget:g} s", now)
            elif group.kind == "verdict" and now - group.created > settings.verdict_timeout:
                self._policy(group.conn, settings.verdict_policy, "verdict",
                             f"no verdict within {settings.verdict_timeout:g} s", now)
        awaiting = self._awaiting_probe
        while awaiting and awaiting[0].state != "pending":  # decided by a policy meanwhile (Suricata silent)
            awaiting.popleft()
        if now >= self._next_idle_scan:
            self._next_idle_scan = now + 1.0
            for conn in list(self._conns.values()):
                for side in conn.sides:
                    if side.future and now - side.future[0].arrived > settings.hold_budget:
                        self._policy(conn, settings.verdict_policy, "verdict", "a hole not filled in time", now)
                if now - conn.last_seen > settings.idle_timeout:
                    self._finish(conn, now)
        for conn in list(self._finishing):
            if not conn.busy():
                self._finish(conn, now)

    def _finish(self, conn: _Conn, now: float) -> None:
        """The connection is over: its flow log line, with what the IPS did."""
        if conn.busy():  # idle with packets held: they follow the verdict policy
            self._policy(conn, self.settings.verdict_policy, "verdict", "idle with packets held", now)
        self._finishing.discard(conn)
        if self._conns.get(conn.key) is conn:
            del self._conns[conn.key]
        self._closed[conn.key] = "cut" if conn.state == "cut" else "closed"
        while len(self._closed) > self.settings.recently_closed:
            self._closed.popitem(last=False)
        for side in conn.sides:
            if side.keywait is not None:
                self._pending.pop(side.keywait.number, None)
        ips = self.describe(conn)
        if conn.summary is not None:
            flow_id = conn.summary.flow.flow_id
            self.out.flows.append(conn.summary.summary.to_record(synthetic=self.synthetic.describe(flow_id), ips=ips))
        elif conn.flow_id is not None and self._by_flow.pop(conn.flow_id, None) is conn:
            self._orphans[conn.flow_id] = ips  # written with the engine's line when it ends the connection
            while len(self._orphans) > self.settings.max_flows:
                self._orphans.pop(next(iter(self._orphans)))
        else:
            self.out.flows.append({"client": conn.endpoint(conn.client), "server": conn.endpoint(conn.server),
                                   "status": None, "ips": ips})

    @staticmethod
    def describe(conn: _Conn) -> dict[str, object]:
        verdict = {"cut": "dropped", "uninspected": "uninspected", "unmonitored": "unmonitored"}.get(
            conn.state, "passed")
        return {"mode": "inline", "verdict": verdict, "reason": conn.reason, "policies": conn.policies,
                "held_packets": conn.held, "released_packets": conn.released, "dropped_packets": conn.dropped,
                "records_passed": conn.passed_groups, "records_dropped": conn.dropped_groups,
                "max_hold_ms": round(conn.max_hold * 1000, 3)}

    def close(self, now: float) -> None:
        """End: every connection is finished (held packets follow the verdict policy)."""
        self.engine.finish()
        self._route()
        for conn in list(self._conns.values()):
            self._finish(conn, now)
        self.out.to_suricata.extend(f.data for f in self.synthetic.close(int(now * 1e9)))

    @property
    def open_connections(self) -> int:
        return len(self._conns)
