"""The decryptor: TCP segments in, per-connection events out.

Sans-I/O: :meth:`Decryptor.process` takes one decoded :class:`~bridge.engine.packets.TcpSegment`
and returns the events it caused (:mod:`bridge.engine.events`); time is the
segments' capture time (``now`` for :meth:`Decryptor.tick`).  Capture, key
feeds and outputs are drivers around it (:class:`bridge.engine.engine.Engine`).

Per connection: a flow (both directions, client = SYN sender, else the
ClientHello sender), a :class:`~bridge.engine.tcp.StreamReassembler` per
direction, and a :class:`~bridge.tls.connection.TlsConnection`, to which the
decryptor gives the connection's secrets from the key store: when its client
random becomes known, when a key log names it by a handle, and when secrets
arrive (:meth:`Decryptor.keys_arrived`).

Bounded memory whatever an attacker sends: at most ``max_flows`` flows, out-of-order
bytes per direction, and the records waiting for keys (per direction and in total,
see :class:`~bridge.tls.connection.PendingBudget`), each waiting at most ``key_wait``
seconds of capture time; and the whole decryptor within ``memory_limit`` bytes.

Memory: each flow is charged what it makes the process grow by (:data:`FLOW_BYTES`
for its objects, its ClientHello, its record layers, the bytes buffered for
reassembly, framing and records waiting for secrets, × :data:`CHURN`;
:meth:`Decryptor.memory_used`), plus a reserve for the process itself
(:data:`PROCESS_BYTES`, and what a front end adds to ``process_bytes``: the
sensor's capture rings) and the ``recently_closed`` set.  When a segment leaves the total above the limit (or a new
flow exceeds ``max_flows``), flows are evicted — finished and logged with
``ended_by: evicted`` — in this order until it fits:

1. ``half_open``: flows whose server has sent no data (a SYN, a ClientHello that
   was never answered: what a flood is made of), least recently active first;
2. ``idle``: the least recently active flow, when it has been quiet for
   ``evict_idle`` seconds;
3. ``oldest``: else the least recently active flow.

Every eviction is counted by reason (:attr:`DecryptorStats.evicted`).  A flow is
sized for the common case: the second direction's reassembly, the record layers
and the SHA-256 of the plaintext are made when first needed.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from bridge.engine.events import Event, FlowFinished, FlowInfo, FlowStarted, KeysWanted, PlaintextData
from bridge.engine.packets import ACK, FIN, RST, SYN, TcpSegment
from bridge.engine.settings import EngineSettings
from bridge.engine.summary import DirectionSummary, FlowSummary
from bridge.engine.tcp import Gap, ReassemblyStats, StreamReassembler
from bridge.histogram import Histogram
from bridge.keys.store import KeyStore
from bridge.tls import handshake as hs
from bridge.tls.certificates import describe_chain
from bridge.tls.connection import NOTHING, PendingBudget, SessionCache, Status, TlsConnection
from bridge.tls.sniff import CLIENT_HELLO, SERVER_HELLO, hello_type
from bridge.tls.state import Direction

NS = 1_000_000_000
_LRU_GRANULARITY_NS = NS // 10
_CONTROL_FLAGS = SYN | FIN | RST
_EMPTY_SHA256 = hashlib.sha256().hexdigest()

#: What the budget charges is what the process's RSS grows by, not what the objects
#: hold: flows that come and go leave the allocator's pools partly used, about half as
#: much again (measured under a flood at steady state: RSS / charged bytes).  Every
#: variable charge is multiplied by it; the constants below include it.
CHURN = 1.5
#: A flow's objects (the flow, its identity, its lookup and activity entries, one
#: direction's reassembly, the TLS connection, the key-lag entry) without its
#: ClientHello and buffers: 1,870 bytes by tracemalloc over half-open flows on
#: CPython 3.11, about 2,000 by RSS (bench/bench_flood.py measures both), × CHURN.
FLOW_BYTES = 3072
#: A direction's reassembly made for the server's bytes (315 by tracemalloc) × CHURN.
REASSEMBLER_BYTES = 512
#: One remembered closed connection (its 4-tuple in an ordered dict: 229 by tracemalloc) × CHURN.
CLOSED_BYTES = 360
#: The process before any flow (interpreter, the bridge's modules, capture and output
#: buffers: 43 MB peak RSS for ``decrypt -r`` of a one-connection capture), reserved
#: from the budget so that the process's RSS, not only the flows', stays within it.
PROCESS_BYTES = 48 * 1024 * 1024
#: Eviction reasons, in the order they are tried.
EVICTION_REASONS = ("half_open", "idle", "oldest")

__all__ = ["EVICTION_REASONS", "FLOW_BYTES", "NS", "Decryptor", "DecryptorStats"]


@dataclass(slots=True)
class DecryptorStats:
    segments: int = 0
    flows: int = 0
    flows_evicted: int = 0
    flows_idle: int = 0
    #: Flows evicted (max_flows or memory_limit), by reason (EVICTION_REASONS).
    evicted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVICTION_REASONS, 0))
    #: Of those, evicted because the memory budget was reached.
    evicted_for_memory: int = 0
    #: Highest memory_used after a segment (and the evictions it caused), bytes.
    memory_peak: int = 0
    ignored_segments: int = 0
    plaintext_bytes: int = 0
    key_wait_expired: int = 0
    keys_wanted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    #: Seconds from a connection's ClientHello seen to its first secret in the key
    #: store (0 when it was there already); connections that never got one are not in it.
    key_lag: Histogram = field(default_factory=Histogram)
    #: Seconds each record waited for its connection's secrets before it was decrypted.
    record_hold: Histogram = field(default_factory=Histogram)


class _DirectionStats:
    __slots__ = ("sha256", "bytes", "fin", "packets")

    def __init__(self) -> None:
        #: Of the plaintext, made with the first byte of it.
        self.sha256: hashlib._Hash | None = None
        self.bytes = 0
        self.fin = False
        self.packets = 0


class _Flow:
    __slots__ = (
        "info", "keys", "reassembly", "tls", "stats", "last_ns", "ended_by", "syn_seen", "oriented",
        "waiting_since_ns", "tls_active", "closing", "lru_ns", "reset_at_ns", "keys_requested", "end_reported",
        "hello_seen", "handles_given", "half_open", "charged", "evicted_for",
    )

    def __init__(self, info: FlowInfo, tls: TlsConnection, max_out_of_order: int, syn_seen: bool,
                 first: Direction) -> None:
        self.info = info
        #: Each direction's reassembly, made with its first segment (:func:`_reassembler`).
        self.reassembly: list[StreamReassembler | None] = [None, None]
        self.reassembly[first] = StreamReassembler(max_buffered=max_out_of_order)
        self.tls = tls
        self.stats = (_DirectionStats(), _DirectionStats())
        self.last_ns = self.lru_ns = info.first_timestamp_ns
        self.ended_by: str | None = None
        self.syn_seen = syn_seen
        self.oriented = syn_seen
        self.waiting_since_ns: int | None = None
        self.tls_active = True
        #: How the connection ended while its records still wait for secrets.
        self.closing: str | None = None
        #: When a RST arrived while data sent before it was still missing.
        self.reset_at_ns: int | None = None
        self.keys_requested = False
        self.end_reported = False
        self.hello_seen = False
        #: Key handles already looked up in the store for this connection.
        self.handles_given: tuple[bytes, ...] = ()
        #: The server has sent no data yet.
        self.half_open = True
        #: Bytes charged to the memory budget.
        self.charged = 0
        #: Which bound evicted it ("max flows", "memory limit").
        self.evicted_for = "max flows"


def _reassembler(flow: _Flow, direction: Direction, max_out_of_order: int) -> StreamReassembler:
    reassembler = flow.reassembly[direction]
    if reassembler is None:
        reassembler = flow.reassembly[direction] = StreamReassembler(max_buffered=max_out_of_order)
    return reassembler

class Decryptor:
    def __init__(
        self, keys: KeyStore, config: EngineSettings | None = None, *, request_keys: bool = False,
        clock: Callable[[], float] = time.monotonic, process_bytes: int = PROCESS_BYTES
    ) -> None:
        """``request_keys``: emit :class:`KeysWanted` for connections whose secrets
        are not in the store (a key feed carries the requests).  ``clock``
        (seconds) times the key lag and the records' waits, on the machine's
        clock: secrets arrive in real time, whatever the capture's.
        ``process_bytes``: the part of ``memory_limit`` the process itself takes."""
        self.config = config or EngineSettings()
        self._digest = self.config.digest
        self.request_keys = request_keys
        self.clock = clock
        self.keys = keys
        self.sessions = SessionCache()
        self.budget = PendingBudget(limit=self.config.max_pending_total)
        self.stats = DecryptorStats()
        #: (src, sport, dst, dport) → its flow: the client's tuple, and the server's
        #: once it sent data (a half-open flow's server segments are found reversed)
        self._by_tuple: dict[tuple[bytes, int, bytes, int], _Flow] = {}
        #: flow_id → flow, least recently active first: flows whose server has sent
        #: data, and those (half-open) whose server has not.
        self._flows: OrderedDict[int, _Flow] = OrderedDict()
        self._half_open: OrderedDict[int, _Flow] = OrderedDict()
        #: The client's tuples of recently finished flows (either way round matches).
        self._closed: OrderedDict[tuple[bytes, int, bytes, int], None] = OrderedDict()
        self._waiting: dict[bytes, _Flow] = {}
        #: Waiting flows by the key handles their secrets may arrive under (RSA key log lines).
        self._waiting_handles: dict[bytes, _Flow] = {}
        #: Client random → when its ClientHello was seen, for connections without secrets yet.
        self._lagging: dict[bytes, float] = {}
        #: Flows reset while data sent before the RST was missing (see rst_grace).
        self._resetting: dict[int, _Flow] = {}
        self._next_id = 1
        self._now_ns = 0
        #: Bytes charged to the flows (see the module's docstring), and the reserve
        #: for the recently-closed set.
        self._charged = 0
        #: The process before any flow, reserved from the budget (see PROCESS_BYTES).
        self.process_bytes = process_bytes
        self._on_held = self.stats.record_hold.observe  # one bound method for every connection
        keys.take_arrivals()  # what is in the store now is found by lookup anyway

    def allocate_flow_id(self) -> int:
        """The next flow id: one sequence for every connection the engine logs (TCP,
        QUIC, a QUIC connection's synthetic requests)."""
        flow_id = self._next_id
        self._next_id += 1
        return flow_id

    def failure(self, flow_id: int) -> tuple[str, str] | None:
        """Why an open connection's decryption stopped — (flow log status, reason), e.g.
        ("wrong_key", "c2s record failed to authenticate") — or None while it goes on
        (the inline IPS must not let a record it could not read pass as judged)."""
        flow = self._flows.get(flow_id) or self._half_open.get(flow_id)
        if flow is None or flow.tls.failure is None:
            return None
        status, reason = flow.tls.failure
        return status.value, reason

    @property
    def active_flows(self) -> int:
        return len(self._flows) + len(self._half_open)

    @property
    def half_open_flows(self) -> int:
        """Flows whose server has sent no data yet."""
        return len(self._half_open)

    @property
    def waiting_flows(self) -> int:
        return len(self._waiting)

    @property
    def memory_reserved(self) -> int:
        """The part of the budget no flow gets: the process itself and the recently-closed set."""
        return self.process_bytes + self.config.recently_closed * CLOSED_BYTES

    @property
    def memory_used(self) -> int:
        """Bytes charged against ``memory_limit``: the flows' and the reserve."""
        return self._charged + self.memory_reserved

    # --- packets ---------------------------------------------------------------

    def process(self, segment: TcpSegment) -> list[Event]:
        self.stats.segments += 1
        timestamp_ns = segment.timestamp_ns
        if timestamp_ns > self._now_ns:
            self._now_ns = timestamp_ns
        events: list[Event] = []
        key = (segment.src, segment.sport, segment.dst, segment.dport)
        flow = self._by_tuple.get(key)
        if flow is None:
            flow = self._by_tuple.get((segment.dst, segment.dport, segment.src, segment.sport))
        if flow is None:
            flow = self._new_flow(segment, key, events)
            if flow is None:
                self.stats.ignored_segments += 1
                return events
        info = flow.info
        direction = Direction.C2S if segment.sport == info.client_port and segment.src == info.client_ip \
            else Direction.S2C
        flow.last_ns = timestamp_ns
        if timestamp_ns - flow.lru_ns > _LRU_GRANULARITY_NS:
            self._touch(flow, timestamp_ns)
        if segment.flags & _CONTROL_FLAGS or flow.closing is not None or flow.reset_at_ns is not None:
            self._segment(flow, direction, segment, events)
        else:
            # Fast path: a data (or bare ACK) segment of an open connection.
            flow.stats[direction].packets += 1
            payload = segment.payload
            if payload:
                if direction and flow.half_open:
                    self._answered(flow)
                reassembler = flow.reassembly[direction] or _reassembler(
                    flow, direction, self.config.max_out_of_order_bytes)
                chunks = reassembler.segment(segment.seq, payload)
                if chunks and flow.tls_active:
                    self._deliver(flow, direction, chunks, timestamp_ns, events)  # charges the flow
                elif flow.ended_by is None:
                    self._charge(flow)
        self._within_budget(flow, events)
        return events

    def _touch(self, flow: _Flow, timestamp_ns: int) -> None:
        """Activity order for idle expiry and eviction (kept to within 100 ms)."""
        (self._half_open if flow.half_open else self._flows).move_to_end(flow.info.flow_id)
        flow.lru_ns = timestamp_ns

    def _within_budget(self, flow: _Flow, events: list[Event]) -> None:
        """After ``flow`` took bytes: evict until the memory budget holds; the peak."""
        used = self._charged + self.memory_reserved
        if used > self.config.memory_limit:
            self._make_room(events, flow)
            used = self._charged + self.memory_reserved
        if used > self.stats.memory_peak:
            self.stats.memory_peak = used

    def _remember_closed(self, client_key: tuple[bytes, int, bytes, int]) -> None:
        """A flow ended: its late packets start no new flow (the last ``recently_closed``
        flows are remembered, first in first out)."""
        closed = self._closed
        closed[client_key] = None
        while len(closed) > self.config.recently_closed:
            closed.popitem(last=False)

    def _recently_closed(self, segment: TcpSegment, key: tuple[bytes, int, bytes, int]) -> bool:
        """``segment`` (of no flow, ``key`` its tuple) is of a remembered finished flow."""
        closed = self._closed
        return key in closed or (segment.dst, segment.dport, segment.src, segment.sport) in closed

    def _new_flow(
        self, segment: TcpSegment, key: tuple[bytes, int, bytes, int], events: list[Event]
    ) -> _Flow | None:
        flags = segment.flags
        is_syn = bool(flags & SYN)
        if not is_syn and not segment.payload:
            return None  # a bare ACK/FIN/RST of a flow we do not know
        if not (is_syn and not flags & ACK) and self._recently_closed(segment, key):
            return None  # late packet of a finished connection
        if is_syn:
            sender_is_client = not flags & ACK
        else:
            sender_is_client = _payload_from_client(segment)
        if sender_is_client:
            client, server = (segment.src, segment.sport), (segment.dst, segment.dport)
        else:
            client, server = (segment.dst, segment.dport), (segment.src, segment.sport)
        info = FlowInfo(
            self.allocate_flow_id(), segment.ip_version, client[0], client[1], server[0], server[1],
            segment.timestamp_ns
        )
        tls = TlsConnection(
            sessions=self.sessions,
            budget=self.budget,
            max_pending_per_direction=self.config.max_pending_per_direction,
            clock=self.clock,
            on_held=self._on_held,
        )
        flow = _Flow(info, tls, self.config.max_out_of_order_bytes, is_syn,
                     Direction.C2S if sender_is_client else Direction.S2C)
        self.stats.flows += 1
        self._by_tuple[(client[0], client[1], server[0], server[1])] = flow
        self._half_open[info.flow_id] = flow
        flow.charged = FLOW_BYTES
        self._charged += FLOW_BYTES
        events.append(FlowStarted(info))
        while self.active_flows > self.config.max_flows:
            self._evict(self._victim(flow), events)
        return flow

    def _answered(self, flow: _Flow) -> None:
        """The server's first data: the flow is no longer half-open."""
        flow.half_open = False
        info = flow.info
        self._by_tuple[(info.server_ip, info.server_port, info.client_ip, info.client_port)] = flow
        flow_id = info.flow_id
        del self._half_open[flow_id]
        self._flows[flow_id] = flow

    # --- memory -------------------------------------------------------------------

    def _charge(self, flow: _Flow) -> None:
        """Charge the flow what it holds now."""
        held = flow.tls.held_bytes
        client, server = flow.reassembly
        if client is not None:
            held += client.buffered
        if server is not None:
            held += server.buffered
        charge = FLOW_BYTES + int(held * CHURN)
        if client is not None and server is not None:
            charge += REASSEMBLER_BYTES
        self._charged += charge - flow.charged
        flow.charged = charge

    def _victim(self, keep: _Flow | None = None) -> tuple[_Flow, str] | None:
        """The next flow to evict and why (see the module's docstring); never ``keep``."""
        for flow in self._half_open.values():
            if flow is not keep:
                return flow, "half_open"
            break
        else:
            flow = None
        for candidate in self._flows.values():
            if candidate is keep:
                continue
            quiet_ns = self._now_ns - candidate.lru_ns
            return candidate, "idle" if quiet_ns >= self.config.evict_idle * NS else "oldest"
        if flow is not None:  # keep is the only half-open flow: the second one
            iterator = iter(self._half_open.values())
            next(iterator)
            for candidate in iterator:
                return candidate, "half_open"
        return None

    def _evict(self, victim: tuple[_Flow, str] | None, events: list[Event], bound: str = "max flows") -> None:
        if victim is None:
            return
        flow, reason = victim
        flow.evicted_for = bound
        self.stats.flows_evicted += 1
        self.stats.evicted[reason] += 1
        self._finish(flow, "evicted", events)

    def _make_room(self, events: list[Event], current: _Flow) -> None:
        """Evict until the charged memory fits the budget; the flow whose segment
        this is goes last."""
        limit = self.config.memory_limit - self.memory_reserved
        while self._charged > limit and (self._half_open or self._flows):
            victim = self._victim(current)
            if victim is None:
                victim = (current, "half_open" if current.half_open else "oldest")
            self.stats.evicted_for_memory += 1
            self._evict(victim, events, "memory limit")

    # --- segments ------------------------------------------------------------------

    def _segment(self, flow: _Flow, direction: Direction, segment: TcpSegment, events: list[Event]) -> None:
        flags = segment.flags
        flow.stats[direction].packets += 1
        if flow.closing is not None:
            return  # over; only its secrets are awaited
        if direction and flow.half_open and segment.payload:
            self._answered(flow)
        reassembler = flow.reassembly[direction] or _reassembler(flow, direction, self.config.max_out_of_order_bytes)
        if flags & SYN:
            reassembler.syn(segment.seq)
            return
        if flags & RST:
            # What was sent before the RST: the sender's data up to its sequence
            # number, and the peer's data up to what the sender acknowledged.
            reassembler.note_sent_until(segment.seq)
            if flags & ACK and flow.reassembly[1 - direction] is not None:
                flow.reassembly[1 - direction].note_sent_until(segment.ack)  # type: ignore[union-attr]
            if flow.reset_at_ns is None and self._data_missing(flow):
                flow.reset_at_ns = segment.timestamp_ns  # reordered: let the rest arrive (rst_grace)
                self._resetting[flow.info.flow_id] = flow
            elif flow.reset_at_ns is None:
                self._finish(flow, "rst", events)
            return
        fin = flags & FIN
        if segment.payload or fin:
            chunks = reassembler.segment(segment.seq, segment.payload, fin=bool(fin))
            if chunks and flow.tls_active:
                self._deliver(flow, direction, chunks, segment.timestamp_ns, events)  # charges the flow
            elif flow.ended_by is None:
                self._charge(flow)
        if fin:
            flow.stats[direction].fin = True
        if flow.reset_at_ns is not None:
            if not self._data_missing(flow):
                self._finish(flow, "rst", events)
            return
        client, server = flow.reassembly
        if client is not None and server is not None and client.fin_offset is not None \
                and server.fin_offset is not None and client.complete and server.complete:
            self._finish(flow, "fin", events)

    @staticmethod
    def _data_missing(flow: _Flow) -> bool:
        """Bytes known to have been sent (before a hole, a FIN or a RST) have not all arrived."""
        return any(reassembler is not None and reassembler.missing() for reassembler in flow.reassembly)

    def _deliver(
        self, flow: _Flow, direction: Direction, chunks: list[bytes | Gap], timestamp_ns: int, events: list[Event]
    ) -> None:
        tls = flow.tls
        if not flow.tls_active:
            return
        changed = False
        for chunk in chunks:
            if chunk.__class__ is Gap:
                tls.gap(direction, chunk.size)  # type: ignore[union-attr]
                changed = True
                continue
            output = tls.receive(direction, chunk, timestamp_ns)  # type: ignore[arg-type]
            if output is NOTHING:
                continue
            changed = True
            for data in output:
                self._emit(flow, data.direction, data.data, data.timestamp_ns, events)
        if not flow.hello_seen:
            self._hello_seen(flow, events)
        if changed:
            if tls.waiting_for_keys and (flow.waiting_since_ns is None or tls.key_handles != flow.handles_given):
                # It begins to wait (or may now be found by another handle): what the store has is given first.
                if self._give_secrets(flow):
                    for data in tls.retry():
                        self._emit(flow, data.direction, data.data, data.timestamp_ns, events)
            if flow.waiting_since_ns is not None or tls.waiting_for_keys:
                self._track_waiting(flow)
            flow.tls_active = not tls.stopped
        if flow.ended_by is None:
            self._charge(flow)

    def _emit(self, flow: _Flow, direction: Direction, data: bytes, timestamp_ns: int, events: list[Event]) -> None:
        stats = flow.stats[direction]
        if self._digest:
            if stats.sha256 is None:
                stats.sha256 = hashlib.sha256()
            stats.sha256.update(data)
        stats.bytes += len(data)
        self.stats.plaintext_bytes += len(data)
        events.append(PlaintextData(flow.info, direction, data, timestamp_ns))

    def _hello_seen(self, flow: _Flow, events: list[Event]) -> None:
        """Once the ClientHello is parsed: start the key lag clock, and ask for
        secrets the store does not have (with ``request_keys``).  Asking this
        early gives a harvester the server's whole handshake to find the
        connection in memory, before it can close."""
        random = flow.tls.client_random
        if random is None:
            return
        flow.hello_seen = True
        secrets = self.keys.lookup(random)
        known = secrets is not None
        if known:
            self.stats.key_lag.observe(0.0)
            flow.tls.provide(secrets.secrets)
            if flow.tls.waiting_for_keys:  # records that came with the hello
                for data in flow.tls.retry():
                    self._emit(flow, data.direction, data.data, data.timestamp_ns, events)
        else:
            self._lagging[random] = self.clock()
        if not self.request_keys:
            return
        flow.keys_requested = True
        if not known:
            self.stats.keys_wanted += 1
            events.append(KeysWanted(flow.info, random))

    def _give_secrets(self, flow: _Flow) -> bool:
        """The store's secrets for the connection, by client random and by handle: True if any."""
        random = flow.tls.client_random
        secrets = self.keys.lookup(random) if random is not None else None
        if secrets is not None:
            flow.tls.provide(secrets.secrets)
        return self._give_handles(flow) or secrets is not None

    def _give_handles(self, flow: _Flow) -> bool:
        """Secrets a key log names by one of the connection's handles (an RSA line
        by its encrypted pre-master, a session ID): True if any was given."""
        handles = flow.tls.key_handles
        flow.handles_given = handles
        given = False
        for handle in handles:
            secret = self.keys.lookup_handle(handle)
            if secret is not None:
                flow.tls.provide_handle(handle, secret)
                given = True
        return given

    def _report_end(self, flow: _Flow, events: list[Event]) -> None:
        flow.end_reported = True
        random = flow.tls.client_random
        if random is not None and self.keys.lookup(random) is None and not flow.tls.decrypted_any:
            events.append(KeysWanted(flow.info, random, ended=True))

    def _track_waiting(self, flow: _Flow) -> None:
        random = flow.tls.client_random
        if flow.tls.waiting_for_keys and random is not None:
            if flow.waiting_since_ns is None:
                flow.waiting_since_ns = self._now_ns
            self._waiting[random] = flow
            for handle in flow.tls.key_handles:
                self._waiting_handles[handle] = flow
        elif flow.waiting_since_ns is not None:
            flow.waiting_since_ns = None
            if random is not None:
                self._waiting.pop(random, None)
            self._drop_handles(flow)

    def _drop_handles(self, flow: _Flow) -> None:
        for handle in flow.tls.key_handles:
            if self._waiting_handles.get(handle) is flow:
                del self._waiting_handles[handle]

    # --- keys and time -----------------------------------------------------------

    def keys_arrived(self) -> list[Event]:
        """Decrypt what waited for secrets that arrived since the last call."""
        events: list[Event] = []
        for random in self.keys.take_arrivals():
            hello_at = self._lagging.pop(random, None)
            if hello_at is not None:
                self.stats.key_lag.observe(self.clock() - hello_at)
            flow = self._waiting.get(random)
            if flow is not None:
                secrets = self.keys.lookup(random)
                if secrets is not None:
                    flow.tls.provide(secrets.secrets)
            else:
                flow = self._waiting_handles.get(random)
                if flow is None:
                    continue
                hello_at = self._lagging.pop(flow.tls.client_random or b"", None)  # an RSA key log line
                if hello_at is not None:
                    self.stats.key_lag.observe(self.clock() - hello_at)
                self._give_handles(flow)
            for data in flow.tls.retry():
                self._emit(flow, data.direction, data.data, data.timestamp_ns, events)
            self._track_waiting(flow)
            if flow.closing is not None and not flow.tls.waiting_for_keys:
                self._finish(flow, flow.closing, events)
        return events

    def tick(self, now_ns: int | None = None) -> list[Event]:
        """Expire idle flows and key waits; call about once a second of capture time."""
        now_ns = max(self._now_ns, now_ns or 0)
        self._now_ns = now_ns
        events = self.keys_arrived()
        wait_ns = int(self.config.key_wait * NS)
        for random, flow in list(self._waiting.items()):
            if flow.waiting_since_ns is not None and now_ns - flow.waiting_since_ns > wait_ns:
                flow.tls.expire_pending(f"secrets did not arrive within {self.config.key_wait:g} s")
                self.stats.key_wait_expired += 1
                self._track_waiting(flow)
                self._waiting.pop(random, None)
                self._drop_handles(flow)
                if flow.closing is not None:
                    self._finish(flow, flow.closing, events)
        grace_ns = int(self.config.rst_grace * NS)
        for flow in list(self._resetting.values()):
            if flow.reset_at_ns is not None and now_ns - flow.reset_at_ns > grace_ns:
                self._finish(flow, "rst", events)
        idle_ns = int(self.config.idle_timeout * NS)
        for flows in (self._half_open, self._flows):
            while flows:
                oldest = next(iter(flows.values()))
                if now_ns - oldest.lru_ns <= idle_ns:
                    break
                self.stats.flows_idle += 1
                self._finish(oldest, "idle", events)
        return events

    def finish_batches(self) -> Iterator[list[Event]]:
        """:meth:`finish`, its events in lists (one here)."""
        yield self.finish()

    def finish(self) -> list[Event]:
        """End of input: every flow still open is finished."""
        events = self.keys_arrived()
        flows = sorted([*self._half_open.values(), *self._flows.values()], key=lambda flow: flow.lru_ns)
        for flow in flows:
            self._finish(flow, "rst" if flow.reset_at_ns is not None else "end_of_capture", events)
        return events

    # --- flow end -------------------------------------------------------------------

    def _finish(self, flow: _Flow, ended_by: str, events: list[Event]) -> None:
        if flow.ended_by is not None:
            return
        if flow.keys_requested and not flow.end_reported:
            self._report_end(flow, events)
        if flow.reset_at_ns is not None:
            self._resetting.pop(flow.info.flow_id, None)
            flow.reset_at_ns = None
        if flow.closing is None and ended_by != "evicted":
            for direction in (Direction.C2S, Direction.S2C):
                reassembler = flow.reassembly[direction]
                chunks = reassembler.flush() if reassembler is not None else None
                if chunks:
                    self._deliver(flow, direction, chunks, flow.last_ns, events)
        tls = flow.tls
        waiting = tls.waiting_for_keys
        if waiting and ended_by in ("fin", "rst") and flow.closing is None:
            # Closed before its secrets arrived: the records wait (bounded by the
            # pending budget, at most key_wait) and the flow is logged after.
            flow.closing = ended_by
            return
        flow.ended_by = ended_by
        if waiting:
            tls.expire_pending("connection ended before its secrets arrived")
        tls.release()
        info = flow.info
        random = tls.client_random
        key_origin = None
        has_keys = False
        if self._waiting_handles:
            self._drop_handles(flow)
        if random is not None:
            self._waiting.pop(random, None)
            self._lagging.pop(random, None)
            keyset = self.keys.lookup(random)
            if keyset is not None:
                key_origin = keyset.origin
                has_keys = True
            if self.config.forget_keys and (keyset is not None or tls.connection_handles):
                self.keys.forget(random, tls.connection_handles)
        (self._half_open if flow.half_open else self._flows).pop(info.flow_id)
        self._charged -= flow.charged
        flow.charged = 0
        client_key = (info.client_ip, info.client_port, info.server_ip, info.server_port)
        self._by_tuple.pop(client_key, None)
        self._by_tuple.pop((info.server_ip, info.server_port, info.client_ip, info.client_port), None)
        self._remember_closed(client_key)
        outcome = flow_status(flow, ended_by)
        status = outcome[0].value
        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        events.append(FlowFinished(info, ended_by, never_completed=not has_keys and tls.only_client_hello,
                                   status=status, ts_end=_iso(flow.last_ns),
                                   build=partial(flow_summary, flow, ended_by, key_origin, outcome, self._digest)))


def budget_problem(settings: EngineSettings, *, rings: int = 0) -> str | None:
    """Why ``memory_limit`` leaves too little for connections (at least 16 MiB), if it
    does; ``rings``: the bytes of the capture rings the process maps (the sensor's)."""
    reserved = PROCESS_BYTES + settings.recently_closed * CLOSED_BYTES + rings
    if settings.memory_limit - reserved >= 16 * 1024 * 1024:
        return None
    return (f"memory_limit {settings.memory_limit:,} bytes leaves less than 16 MiB for connections: the process "
            f"takes {PROCESS_BYTES:,}, {settings.recently_closed:,} recently closed connections "
            f"{settings.recently_closed * CLOSED_BYTES:,}" + (f", the capture rings {rings:,}" if rings else "")
            + " (lower recently_closed or buffer_mb, or raise memory_limit)")


def _payload_from_client(segment: TcpSegment) -> bool:
    """Orientation without a SYN: a ClientHello comes from the client, a
    ServerHello from the server; otherwise the higher port is the client's."""
    kind = hello_type(segment.payload)
    if kind == CLIENT_HELLO:
        return True
    if kind == SERVER_HELLO:
        return False
    return segment.sport >= segment.dport


_NO_REASSEMBLY = ReassemblyStats()


def _iso(timestamp_ns: int) -> float:
    """Seconds, to the microsecond: ``round(timestamp_ns / 1e9, 6)``, and for a whole
    number of microseconds (most captures) the same float without round(), which
    costs half a microsecond (a flood's every connection pays it)."""
    microseconds, rest = divmod(timestamp_ns, 1000)
    if rest:
        return round(timestamp_ns / NS, 6)
    return microseconds / 1_000_000


def flow_status(flow: _Flow, ended_by: str) -> tuple[Status, str]:
    """The flow log's status and reason of a finished flow."""
    tls = flow.tls
    status, reason = tls.status()
    if not flow.syn_seen and tls.client_hello is None:
        status, reason = Status.NO_HANDSHAKE, "connection picked up mid-stream: no handshake seen"
    client, server = (r.stats if r is not None else _NO_REASSEMBLY for r in flow.reassembly)
    if status is Status.NOT_TLS and not client.bytes_delivered and not server.bytes_delivered:
        reason = f"evicted ({flow.evicted_for} reached) before any payload" if ended_by == "evicted" \
            else "no payload seen"
    gaps = client.gap_bytes + server.gap_bytes
    if gaps and status is Status.DECRYPTED:
        status, reason = Status.GAP, f"{gaps} bytes missing after the last decrypted record"
    return status, reason


def flow_summary(flow: _Flow, ended_by: str, key_origin: dict[str, object] | None = None,
                 outcome: tuple[Status, str] | None = None, digest: bool = True) -> FlowSummary:
    """What the flow log says of a finished flow (``outcome``: its :func:`flow_status`;
    ``digest``: the plaintext's SHA-256 was computed, else the summary has none)."""
    tls = flow.tls
    status, reason = outcome if outcome is not None else flow_status(flow, ended_by)
    reassembly = [r.stats if r is not None else _NO_REASSEMBLY for r in flow.reassembly]
    client_hello = tls.client_hello
    server_hello = tls.server_hello
    info = flow.info
    directions = []
    key_updates = 0
    for direction in (Direction.C2S, Direction.S2C):
        stats = flow.stats[direction]
        records, decrypted, skipped, alerts, updates = tls.direction_counts(direction)
        key_updates += updates
        reassembled = reassembly[direction]
        directions.append(DirectionSummary(
            bytes=stats.bytes, sha256=(stats.sha256.hexdigest() if stats.sha256 is not None else _EMPTY_SHA256)
            if digest else None,
            packets=stats.packets, records=records, decrypted_records=decrypted, skipped_records=skipped,
            alerts=alerts, key_updates=updates, gap_bytes=reassembled.gap_bytes,
            retransmitted_bytes=reassembled.retransmitted_bytes))
    return FlowSummary(
        flow_id=info.flow_id,
        ts_start=_iso(info.first_timestamp_ns),
        ts_end=_iso(flow.last_ns),
        client=info.client,
        server=info.server,
        status=status.value,
        reason=reason,
        ended_by=ended_by,
        handshake_seen=flow.syn_seen,
        client_random=client_hello.random.hex() if client_hello else None,
        tls_version=hs.version_name(tls.version) if tls.version else None,
        cipher_suite=tls.suite_name,
        sni=client_hello.sni if client_hello else None,
        alpn=server_hello.alpn if server_hello else None,
        alpn_offered=list(client_hello.alpn) if client_hello else [],
        resumed=tls.resumed,
        hello_retry_request=tls.hello_retry,
        early_data_offered=tls.early_data_offered,
        early_data_accepted=bool(tls.early_data_accepted),
        encrypt_then_mac=bool(server_hello and server_hello.encrypt_then_mac and tls.version == hs.TLS12),
        extended_master_secret=bool(server_hello and server_hello.extended_master_secret),
        server_random=server_hello.random.hex() if server_hello else None,
        session_id=bool(server_hello and server_hello.session_id),
        session_ticket=bool(client_hello and client_hello.session_ticket) or tls.session_tickets > 0,
        session_tickets_issued=tls.session_tickets,
        key_updates=key_updates,
        certificates=describe_chain(tls.certificates) if tls.certificates else [],
        key_origin=key_origin,
        c2s=directions[0],
        s2c=directions[1],
    )
