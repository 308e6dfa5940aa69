"""The compiled per-packet path: established TLS streams handled by C, a chunk at a time.

Most frames of a busy sensor are the data segments (and the peer's ACKs) of
connections whose handshake is over: in order, nothing buffered, nothing for
the state machine to decide.  For those, :mod:`bridge.engine._lanes` (C) does
the per-packet work — frame decoding, the connection lookup, the in-order check
— and hands Python each direction's bytes as chunks of many segments, which go
through the same :class:`~bridge.tls.connection.TlsConnection` as every other
byte.  Everything else stays on the Python path (:mod:`bridge.engine.packets`,
:mod:`bridge.engine.tcp`), which decides when a direction becomes a *lane*.

:class:`LaneDecryptor` is the :class:`~bridge.engine.decryptor.Decryptor` with
that path; its flow log, events and plaintext are the Python path's (the tests
compare both on every committed capture).

* **Open** a lane: after the Python path delivered in-order bytes of a direction
  of an active TLS connection whose stream has started and whose reassembly holds
  nothing out of order, has seen no FIN and no RST — once the connection is worth
  its lanes: one of its directions is known to carry ``fast_path_after`` bytes
  (16 KiB by default; delivered, and still to come in the record being read).  A
  lane costs its opening, arming and closing, about what the Python path spends on
  a few segments: a short connection (a request and a response of a few kilobytes,
  lanes of two or three frames each) costs less without.  Its frames are still
  decoded in C: the frame the Python path must take comes back as its
  :class:`~bridge.engine.packets.TcpSegment` (``classify``'s, field for field),
  unless the C decoder leaves it to ``classify`` (VLAN tags, IPv6 extension
  headers, fragments, other link types, malformed).  The lane is told where the
  current TLS record ends, and hands over chunks that end where records end,
  each with the time of the segment that completed it: records are timed as on
  the Python path, so the synthetic output is the same frame for frame.
* **Close** it: the C path refuses a frame (SYN, FIN, RST, a sequence number that
  is not the next one: loss, reordering, a retransmission), the Python path takes
  a SYN, FIN or RST of the connection, or the connection ends.  Both directions
  of the connection are closed then (the Python path reads both); their counters
  (packets, segments, bytes) are added back to the Python path's, which
  continues where the lanes stopped.
* **The steady state**: once a direction's keys are in place and no record waits
  (:meth:`~bridge.tls.connection.TlsConnection.steady_opener`), its lane is *armed*
  with the direction's record opener, after Python has had every chunk the lane
  made: the lane takes over the bytes of the record Python was framing, gathers
  its records itself from then on, and opens each record of application data in
  C as it completes (one call into :mod:`bridge.tls.protection` per record).
  Python gets plaintexts, counted as its own path counts records
  (:meth:`~bridge.tls.connection.TlsConnection.opened`), with the time of the
  segment that completed each record; the first record the opener declines (a
  KeyUpdate, an alert, a tag that does not match) or that is not application
  data comes back as stream bytes, with what follows, and Python's path says
  what it is.  The run ends after that frame (the C module's ``resume``): Python
  frames those bytes, arms the lane again if the direction is still in the steady
  state, and the run goes on from the next frame — a TLS 1.3 session ticket or a
  KeyUpdate in the middle of a batch costs one round trip, not the steady state
  for the rest of the batch.  A lane closed while armed gives back the bytes of
  its incomplete record.
* **Activity**: lanes report their last frame's time at each :meth:`tick`
  (about once a second of capture time): idle expiry and the least-recently-active
  order see a lane's activity to within that second.

Bounded: at most ``capacity`` lanes (further directions stay on the Python path),
a few dozen bytes each, and an armed lane's incomplete record (counted in the
memory budget, as Python's framing buffers are).

**The front** (``_front_core.h``): connections whose server has not answered are
kept in C, a few hundred bytes each, and not as Python flows (a flood of
ClientHellos is made of them).  A pure SYN of a connection Python does not track
opens a pending entry, which stores the client's frames as they come (its SYN
again, pure ACKs, its first bytes in order: the ClientHello).  The first frame
that is anything else — the server's SYN-ACK or any frame of the server, a FIN or
RST, a byte out of order, more than an entry holds — *promotes* it: the Python
path gets the stored frames, then that frame, as if it had seen them all (the
flow id is the one the entry took at its SYN, from the same sequence), and the
connection is Python's from then on.  A connection answered by its server is
therefore Python's from the SYN-ACK on, as before.  Its :class:`FlowStarted` comes
then, not at its SYN: after whatever other connections did in between (the one
event whose place across connections differs from the Python path's).

Pending entries that end unanswered (evicted, idle, end of input) never become
Python flows: their flow log line says what the Python path would say (not TLS
with nothing sent; ``partial``, handshake incomplete, with one whole ClientHello
that the Python parser accepts, checked in C by the same rules), built from the
stored frames only if an output reads it (the flow log's sample).  Anything
else — bytes that are not one whole ClientHello, or a client random the key
store has secrets for — goes through the Python path at its end, from the stored
frames.  Pending entries are half-open connections for ``max_flows`` and the
memory budget (``memory_limit``; each is charged its bytes), evicted first, least
recently active first.  Ended, they are remembered as recently closed in C (one
first-in-first-out set with the Python path's flows, ``recently_closed`` long),
so that their late frames start no connection, as on the Python path, and a flood
leaves no Python object behind per connection.  Not done for them: :class:`KeysWanted` (a harvester
could not find a handshake the server never answered) and the key lag.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import NamedTuple

from bridge.capture.frames import Frame
from bridge.engine import _lanes
from bridge.engine.decryptor import _LRU_GRANULARITY_NS, NS, Decryptor, _iso
from bridge.engine.events import Event, FlowFinished, FlowInfo, FlowStarted
from bridge.engine.packets import TcpSegment, classify
from bridge.engine.settings import EngineSettings
from bridge.engine.summary import FlowSummary
from bridge.errors import PacketDecodeError
from bridge.keys.store import KeyStore
from bridge.tls.state import Direction

__all__ = ["FrontEntry", "LaneDecryptor", "LaneState", "MAX_LANES"]

#: The most lanes open at once by default (two per connection); connections beyond
#: stay on the Python path.
MAX_LANES = 1 << 18


class LaneState(NamedTuple):
    """What a closed lane gives back (the C module's state tuple)."""

    handle: tuple[object, Direction]
    next_seq: int
    packets: int
    segments: int
    bytes: int
    last_ns: int
    #: the bytes of the steady state's record not yet complete (Python frames them)
    held: bytes


#: What a pending entry's client sent (the C module's ``sent``).
SENT_NOTHING, SENT_HELLO, SENT_OTHER = 0, 1, 2
#: Which bound ended an evicted entry (its ``why``), as the flow log names it.
_BOUNDS = ("max flows", "memory limit")
#: The eviction victim that is the front's least recently active pending entry.
_FRONT = object()
_new_tuple = tuple.__new__  # a FlowInfo from the entry's first seven fields, without its __new__'s call
#: "No half-open connection on the Python path" to the C module (the largest int64).
_NEVER = (1 << 63) - 1


class FrontEntry(NamedTuple):
    """A pending connection at the front (the C module's entry tuple)."""

    flow_id: int
    ip_version: int
    client_ip: bytes
    client_port: int
    server_ip: bytes
    server_port: int
    first_ns: int
    last_ns: int
    lru_ns: int
    sent: int
    client_random: bytes | None
    why: int
    #: The stored frames as the C module keeps them (see :meth:`stored_frames`).
    frames: bytes

    @property
    def client_key(self) -> tuple[bytes, int, bytes, int]:
        return (self.client_ip, self.client_port, self.server_ip, self.server_port)

    def stored_frames(self) -> list[tuple[int, int, bytes]]:
        """(linktype, timestamp_ns, bytes) of each stored frame, in order."""
        out = []
        blob, at = self.frames, 0
        while at < len(blob):
            linktype, length, timestamp_ns = _FRAME_HEADER.unpack_from(blob, at)
            at += _FRAME_HEADER.size
            out.append((linktype, timestamp_ns, blob[at:at + length]))
            at += length
        return out


#: A stored frame's header (the C module's FRONT_FRAME_HEADER).
_FRAME_HEADER = struct.Struct(">HHq")


def _front_summary(entry: tuple, ended_by: str, config: EngineSettings) -> FlowSummary:  # type: ignore[type-arg]
    """The flow log's line of a pending entry that ended unanswered: what the Python
    path says of its frames (replayed in a decryptor of their own)."""
    entry = FrontEntry(*entry)
    scratch = Decryptor(KeyStore(), dataclasses.replace(config, memory_limit=1 << 62, max_flows=1 << 30))
    scratch._next_id = entry.flow_id
    for linktype, timestamp_ns, data in entry.stored_frames():
        scratch.process(classify(linktype, data, timestamp_ns))  # type: ignore[arg-type]
    flow = scratch._by_tuple[entry.client_key]
    flow.evicted_for = _BOUNDS[entry.why]
    events: list[Event] = []
    scratch._finish(flow, ended_by, events)
    finished = events[-1]
    assert isinstance(finished, FlowFinished)
    return finished.summary


def _lane_key(info, direction: Direction) -> tuple:  # type: ignore[no-untyped-def,type-arg]
    """A lane's address: the sender's address and port, then the receiver's."""
    if direction == Direction.C2S:
        return info.client_ip, info.client_port, info.server_ip, info.server_port
    return info.server_ip, info.server_port, info.client_ip, info.client_port


class LaneDecryptor(Decryptor):
    """The decryptor with established TLS streams on the compiled path."""

    def __init__(self, keys: KeyStore, config: EngineSettings | None = None, *, request_keys: bool = False,
                 clock: Callable[[], float] = time.monotonic, capacity: int | None = None,
                 front: bool = True) -> None:
        super().__init__(keys, config, request_keys=request_keys, clock=clock)
        #: The front's entries: pending connections (at most max_flows) and the marks of
        #: the connections Python tracks (at most max_flows, and the one being made).
        front_capacity = 2 * self.config.max_flows + 64 if front else 0
        #: The recently closed connections are remembered there too (the front's end
        #: unanswered connections without a Python object ever made).
        self.lanes = _lanes.Lanes(capacity or min(MAX_LANES, 2 * self.config.max_flows), front_capacity,
                                  self.config.recently_closed, TcpSegment)
        self._run = self.lanes.run
        self._limits = self._front_limits if front else None
        self._closed = None  # type: ignore[assignment]  # the C module's, instead
        self._front = front
        #: The flow id a promoted entry took at its SYN, for the flow its frames make.
        self._reserved_id: int | None = None
        #: An entry ended unanswered is being replayed through the Python path.
        self._ending = False
        #: flow_id → bit mask of its directions that are lanes
        self._laned: dict[int, int] = {}
        #: the flow being finished (its lanes are closed and must stay so)
        self._finishing: object | None = None
        #: frames taken by the compiled path, lanes opened, lanes closed by a frame it refused
        self.lane_frames = 0
        self.lanes_opened = 0
        self.lanes_refused = 0
        #: records of application data opened in C (the steady state)
        self.records_opened = 0
        #: pending connections the front handed to the Python path
        self.front_promoted = 0

    # --- frames ---------------------------------------------------------------------------

    def run_lanes(self, frames: Sequence[Frame], start: int) -> tuple[int, int, list[Event]] | TcpSegment | None:
        """The frames of open lanes and of the front from ``start`` on: (index of the
        first frame the Python path must take, frames taken here, events); or, when that
        is the frame at ``start`` and nothing was done here (a short connection's every
        other frame), its :class:`TcpSegment`, decoded in C, or None (it did not decode
        there: :func:`~bridge.engine.packets.classify` says what it is)."""
        # the front's limits are asked for (_front_limits) only by a frame that may need them
        result = self._run(frames, start, self._limits)
        if result.__class__ is not tuple:
            return result  # type: ignore[no-any-return]
        stop, handled, events = self._ran(frames, result)  # type: ignore[arg-type]
        while self.lanes.resume and stop < len(frames):
            # the run ended after a record an armed lane declined (a session ticket, a
            # KeyUpdate): Python has framed it and armed the lane again, and the frames
            # that follow are the lanes' again, not the Python path's
            result = self._run(frames, stop, self._limits)
            if result.__class__ is not tuple:
                break  # the frame at stop is Python's (the engine decodes it again: once a declined record)
            stop, more, more_events = self._ran(frames, result)  # type: ignore[arg-type]
            handled += more
            events.extend(more_events)
        return stop, handled, events

    def _ran(self, frames: Sequence[Frame], result: tuple) -> tuple[int, int, list[Event]]:  # type: ignore[type-arg]
        """A run's (stop, chunks, handled, closed) through the Python path, with the
        front's news: (stop, frames taken, events)."""
        stop, chunks, handled, closed = result
        taken = self.lanes.take_front() if self._front else None
        if not handled and not chunks and closed is None and taken is None:
            return stop, 0, []  # the batch is over
        return self._after_run(stop, handled, chunks, closed, taken, frames[stop - 1].timestamp_ns if handled else 0)

    def _front_limits(self) -> tuple[int, int, int]:
        """The front's share of the bounds now, for the C module: the connections left of
        ``max_flows``, the bytes left of the budget (the C module takes its tables twice
        from them: what they hold, and what they may grow by in the run), and when Python's
        least recently active half-open connection was last active."""
        config = self.config
        half_open = self._half_open
        return (config.max_flows - len(self._flows) - len(half_open),
                config.memory_limit - self.memory_reserved - self._charged,
                next(iter(half_open.values())).lru_ns if half_open else _NEVER)

    def _after_run(self, stop: int, handled: int, chunks: list, closed: tuple | None,  # type: ignore[type-arg]
                   taken: tuple | None, timestamp_ns: int = 0) -> tuple[int, int, list[Event]]:  # type: ignore[type-arg]
        front = self._front
        events: list[Event] = []
        if handled:
            self.stats.segments += handled
            self.lane_frames += handled
            if timestamp_ns > self._now_ns:
                self._now_ns = timestamp_ns
        if taken is not None:
            promoted, ended, created = taken
            self.stats.flows += created
            for entry in ended:  # made room for a new one
                if entry[11]:  # why: the memory limit
                    self.stats.evicted_for_memory += 1
                self._front_evicted(entry, events)
        framed = None
        for handle, timestamp_ns, opened, used, data, times in chunks:
            flow, direction = handle
            if timestamp_ns > self._now_ns:
                self._now_ns = timestamp_ns
            if flow.ended_by is None and flow.tls_active:
                if opened:
                    # records opened in C (the steady state), consecutive ones of the direction in
                    # one chunk: counted, their plaintexts delivered, each at its own time
                    self.records_opened += len(opened)
                    flow.tls.opened(direction, opened, used)
                    for plaintext, opened_ns in zip(opened, times):
                        if plaintext:
                            self._emit(flow, direction, plaintext, opened_ns, events)
                if data:
                    self._deliver(flow, direction, [data], timestamp_ns, events)
                    self._within_budget(flow, events)  # as after a segment
                    if framed is None:
                        framed = {handle}
                    else:
                        framed.add(handle)
        if closed is not None:
            self.lanes_refused += 1
            state = LaneState(*closed)
            self._restore(state)
            self._close_lanes(state.handle[0])  # the other direction too: see _segment
        if framed is not None:
            # Python framed bytes of these lanes: in the steady state again, they open their
            # records in C (armed once Python has all the bytes the run took)
            for flow, direction in framed:
                if flow.ended_by is None and flow.tls_active and self._laned.get(flow.info.flow_id, 0) & (1 << direction):
                    self._arm(flow, direction)
        if taken is not None and promoted is not None:
            self.front_promoted += 1
            self._replay(FrontEntry(*promoted), events)
        if front:
            used = self._charged + self.memory_reserved + self._compiled_bytes()
            if used > self.stats.memory_peak:
                self.stats.memory_peak = used
        return stop, handled, events

    # --- the front ---------------------------------------------------------------------------

    def allocate_flow_id(self) -> int:
        reserved = self._reserved_id
        if reserved is not None:
            self._reserved_id = None
            return reserved
        return self.lanes.allocate_id()

    @property
    def active_flows(self) -> int:
        return len(self._flows) + len(self._half_open) + self.lanes.front_pending

    @property
    def half_open_flows(self) -> int:
        return len(self._half_open) + self.lanes.front_pending

    @property
    def memory_used(self) -> int:
        return self._charged + self.memory_reserved + self._compiled_bytes()

    def _compiled_bytes(self) -> int:
        """What the compiled path holds: the front's pending entries, the tables'
        slots (which grow with their entries), the armed lanes' records not yet complete."""
        return self.lanes.compiled_bytes  # type: ignore[no-any-return]

    def _replay(self, entry: FrontEntry, events: list[Event]):  # type: ignore[no-untyped-def]
        """The entry's frames through the Python path, as if it had seen them: its flow."""
        stats = self.stats
        frames = entry.stored_frames()
        stats.flows -= 1  # counted at the front
        stats.segments -= len(frames)
        self._reserved_id = entry.flow_id
        try:
            decode = self.lanes.decode
            for linktype, timestamp_ns, data in frames:
                segment = decode(linktype, data, timestamp_ns)
                if segment is None:  # not on the C path's common decoding: Python's says what it is
                    try:
                        segment = classify(linktype, data, timestamp_ns)
                    except PacketDecodeError:
                        stats.ignored_segments += 1
                        continue
                if segment.__class__ is TcpSegment:
                    events.extend(self.process(segment))  # type: ignore[arg-type]
        finally:
            self._reserved_id = None
        return self._by_tuple.get(entry.client_key)

    def _front_evicted(self, entry: tuple, events: list[Event]) -> None:  # type: ignore[type-arg]
        self.stats.flows_evicted += 1
        self.stats.evicted["half_open"] += 1
        self._front_ended(entry, "evicted", events)

    def _front_ended(self, entry: tuple, ended_by: str, events: list[Event]) -> None:  # type: ignore[type-arg]
        """A pending entry (the C module's tuple: a flood's every connection comes
        here, hence no FrontEntry made unless needed) ended unanswered: its events and
        flow log line, as the Python path's."""
        sent = entry[9]
        random = entry[10]
        if sent == SENT_OTHER or (random is not None and self.keys.has(random)):
            previous, self._ending = self._ending, True  # through the Python path, exactly
            try:
                front = FrontEntry(*entry)
                flow = self._replay(front, events)
                if flow is not None:
                    flow.evicted_for = _BOUNDS[front.why]
                    self._finish(flow, ended_by, events)
            finally:
                self._ending = previous
            return
        statuses = self.stats.statuses
        status = "partial" if sent == SENT_HELLO else "not_tls"
        statuses[status] = statuses.get(status, 0) + 1
        info = _new_tuple(FlowInfo, entry[:7])  # remembered as recently closed by the C module already
        events.append(FlowStarted(info))
        events.append(FlowFinished(info, ended_by, never_completed=True, status=status, ts_end=_iso(entry[7]),
                                   build=partial(_front_summary, entry, ended_by, self.config)))

    def _remember_closed(self, client_key: tuple[bytes, int, bytes, int]) -> None:
        self.lanes.closed_add(*client_key)

    def _recently_closed(self, segment: TcpSegment, key: tuple[bytes, int, bytes, int]) -> bool:
        return self.lanes.closed_has(*key)

    def _new_flow(self, segment, key, events):  # type: ignore[no-untyped-def]
        flow = super()._new_flow(segment, key, events)
        if flow is not None and self._front:
            info = flow.info
            self.lanes.front_own(info.client_ip, info.client_port, info.server_ip, info.server_port)
        return flow

    def _victim(self, keep=None):  # type: ignore[no-untyped-def]
        """As the Python path's: the least recently active half-open connection first,
        at the front or not (on a tie, the front's), then idle, then oldest."""
        oldest = self.lanes.front_oldest_ns
        if oldest is not None:
            for flow in self._half_open.values():
                if flow is keep:
                    continue
                if flow.lru_ns < oldest:
                    return super()._victim(keep)
                break
            return _FRONT, "half_open"
        return super()._victim(keep)

    def _evict(self, victim, events, bound="max flows") -> None:  # type: ignore[no-untyped-def]
        if victim is not None and victim[0] is _FRONT:
            for entry in self.lanes.front_end(1, _BOUNDS.index(bound)):
                self._front_evicted(entry, events)
            return
        super()._evict(victim, events, bound)

    def _within_budget(self, flow, events) -> None:  # type: ignore[no-untyped-def]
        if self._ending:
            return  # a flow made to be finished at once
        used = self._charged + self.memory_reserved + self.lanes.compiled_bytes
        if used > self.config.memory_limit:
            self._make_room(events, flow)
            used = self._charged + self.memory_reserved + self.lanes.compiled_bytes
        if used > self.stats.memory_peak:
            self.stats.memory_peak = used

    def _make_room(self, events, current) -> None:  # type: ignore[no-untyped-def]
        """As the Python path's, the front's bytes and entries included."""
        limit = self.config.memory_limit - self.memory_reserved
        lanes = self.lanes
        while self._charged + self._compiled_bytes() > limit and (self._half_open or self._flows or lanes.front_pending):
            victim = self._victim(current)
            if victim is None:
                victim = (current, "half_open" if current.half_open else "oldest")
            self.stats.evicted_for_memory += 1
            self._evict(victim, events, "memory limit")

    # --- the Python path's hooks -------------------------------------------------------------

    def _deliver(self, flow, direction, chunks, timestamp_ns, events) -> None:  # type: ignore[no-untyped-def]
        super()._deliver(flow, direction, chunks, timestamp_ns, events)
        if flow is self._finishing or flow.ended_by is not None:
            return
        mask = self._laned.get(flow.info.flow_id, 0)
        if not flow.tls_active:
            if mask:
                self._close_lanes(flow)
            return
        if mask != 3:
            if not mask:
                # worth its lanes (see _carries_bulk), written out: asked at each delivery of a short connection
                after = self.config.fast_path_after
                delivered = flow.reassembly[direction].stats.bytes_delivered
                if delivered < after:
                    boundary = flow.tls.record_boundary(direction)
                    if boundary is None or delivered + boundary[1] < after:
                        return
            self._offer(flow, direction)
            self._offer(flow, direction.peer)  # the peer's ACKs (its lane may have closed with this one)

    def _segment(self, flow, direction, segment, events) -> None:  # type: ignore[no-untyped-def]
        # A SYN, FIN or RST (or a connection closing): the Python path reads both
        # directions' reassembly, so both are brought back first.
        if self._laned.get(flow.info.flow_id):
            self._close_lanes(flow)
        super()._segment(flow, direction, segment, events)

    def _finish(self, flow, ended_by, events) -> None:  # type: ignore[no-untyped-def]
        if flow.ended_by is not None:
            return
        self._close_lanes(flow)
        previous, self._finishing = self._finishing, flow
        try:
            super()._finish(flow, ended_by, events)
        finally:
            self._finishing = previous
        if flow.ended_by is not None and self._front:
            info = flow.info
            self.lanes.front_disown(info.client_ip, info.client_port, info.server_ip, info.server_port)

    def tick(self, now_ns: int | None = None) -> list[Event]:
        self._sync_activity()
        events = super().tick(now_ns)
        if self._front and self.lanes.front_pending:
            for entry in self.lanes.front_expire(self._now_ns - int(self.config.idle_timeout * NS)):
                self.stats.flows_idle += 1
                self._front_ended(entry, "idle", events)
        return events

    def finish(self) -> list[Event]:
        return [event for events in self.finish_batches() for event in events]

    def finish_batches(self) -> Iterator[list[Event]]:
        """End of input, as :meth:`finish`, a few thousand connections at a time (a
        flood's pending entries are not all described at once)."""
        self._sync_activity()
        lanes = self.lanes
        if not self._front or not lanes.front_pending:
            yield super().finish()
            return
        # as the Python path: every connection, least recently active first (the
        # front's entries come in that order; on a tie, as half-open ones, first)
        events = self.keys_arrived()
        flows = sorted([*self._half_open.values(), *self._flows.values()], key=lambda flow: flow.lru_ns)
        at = 0
        while entries := lanes.front_end(4096, 0):
            for entry in entries:
                lru_ns = entry[8]
                while at < len(flows) and flows[at].lru_ns < lru_ns:
                    flow = flows[at]
                    at += 1
                    self._finish(flow, "rst" if flow.reset_at_ns is not None else "end_of_capture", events)
                self._front_ended(entry, "end_of_capture", events)
            yield events
            events = []
        for flow in flows[at:]:
            self._finish(flow, "rst" if flow.reset_at_ns is not None else "end_of_capture", events)
        yield events

    # --- lanes ------------------------------------------------------------------------------

    def _offer(self, flow, direction: Direction) -> None:  # type: ignore[no-untyped-def]
        """Open a lane for ``direction`` of ``flow`` if nothing about it needs Python per packet."""
        mask = self._laned.get(flow.info.flow_id, 0)
        if mask & (1 << direction) or flow.closing is not None or flow.reset_at_ns is not None:
            return
        reassembler = flow.reassembly[direction]
        if reassembler is None:
            return
        next_seq = reassembler.in_order_next_seq()
        if next_seq is None:
            return
        boundary = flow.tls.record_boundary(direction)
        if boundary is None:
            return
        key = _lane_key(flow.info, direction)
        if self.lanes.open(*key, (flow, direction), next_seq, *boundary):
            self._laned[flow.info.flow_id] = mask | (1 << direction)
            self.lanes_opened += 1
            self._arm(flow, direction, key)

    def _arm(self, flow, direction: Direction, key: tuple | None = None) -> None:  # type: ignore[no-untyped-def,type-arg]
        """The lane of ``direction`` gathers and opens its records in C while the
        direction is in the steady state (:meth:`~bridge.tls.connection.TlsConnection.steady_opener`),
        from the bytes of the record Python had framed so far on; it leaves it by
        itself (at the first bytes it gives back to frame).  Only when the lane and
        Python are at the same byte of the stream: Python has had every chunk the lane made."""
        tls = flow.tls
        steady = tls.steady_opener(direction)
        if steady is None:
            return
        if key is None:
            key = _lane_key(flow.info, direction)
        held = tls.framing(direction)
        if self.lanes.arm(*key, steady[0], held, steady[1]):
            if held:
                tls.hand_over_framing(direction)
                self._charge(flow)

    def _close_lanes(self, flow) -> None:  # type: ignore[no-untyped-def]
        mask = self._laned.pop(flow.info.flow_id, 0)
        for direction in (Direction.C2S, Direction.S2C):
            if mask & (1 << direction):
                state = self.lanes.close(*_lane_key(flow.info, direction))
                if state is not None:
                    self._restore(LaneState(*state), forget=False)

    def _restore(self, state: LaneState, *, forget: bool = True) -> None:
        """A lane closed: what it counted goes back to the Python path."""
        flow, direction = state.handle
        if forget:
            mask = self._laned.get(flow.info.flow_id, 0) & ~(1 << direction)  # type: ignore[attr-defined]
            if mask:
                self._laned[flow.info.flow_id] = mask  # type: ignore[attr-defined]
            else:
                self._laned.pop(flow.info.flow_id, None)  # type: ignore[attr-defined]
        flow.reassembly[direction].delivered_elsewhere(state.bytes, state.segments)  # type: ignore[attr-defined]
        flow.stats[direction].packets += state.packets  # type: ignore[attr-defined]
        if state.held:  # less than a record: framed, nothing to decrypt yet
            flow.tls.receive(direction, state.held, state.last_ns)  # type: ignore[attr-defined]
        self._active(flow, state.last_ns)

    def _sync_activity(self) -> None:
        for (flow, _direction), last_ns in self.lanes.touched():
            self._active(flow, last_ns)

    def _active(self, flow, last_ns: int) -> None:  # type: ignore[no-untyped-def]
        """The flow had a frame at ``last_ns`` on a lane: its activity order, as the Python path keeps it."""
        if last_ns > flow.last_ns:
            flow.last_ns = last_ns
        if flow.ended_by is None and last_ns - flow.lru_ns > _LRU_GRANULARITY_NS:
            self._touch(flow, last_ns)
