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
  nothing out of order, has seen no FIN and no RST.  The lane is told where the
  current TLS record ends, and hands over chunks that end where records end,
  each with the time of the segment that completed it: records are timed as on
  the Python path, so the synthetic output is the same frame for frame.
* **Close** it: the C path refuses a frame (SYN, FIN, RST, a sequence number that
  is not the next one: loss, reordering, a retransmission), the Python path takes
  a SYN, FIN or RST of the connection, or the connection ends.  Both directions
  of the connection are closed then (the Python path reads both); their counters
  (packets, segments, bytes) are added back to the Python path's, which
  continues where the lanes stopped.
* **Activity**: lanes report their last frame's time at each :meth:`tick`
  (about once a second of capture time): idle expiry and the least-recently-active
  order see a lane's activity to within that second.

Bounded: at most ``capacity`` lanes (further directions stay on the Python path),
a few dozen bytes each.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from bridge.capture.frames import Frame
from bridge.engine import _lanes
from bridge.engine.decryptor import _LRU_GRANULARITY_NS, Decryptor
from bridge.engine.events import Event
from bridge.engine.settings import EngineSettings
from bridge.keys.store import KeyStore
from bridge.tls.state import Direction

__all__ = ["LaneDecryptor", "LaneState", "MAX_LANES"]

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


class LaneDecryptor(Decryptor):
    """The decryptor with established TLS streams on the compiled path."""

    def __init__(self, keys: KeyStore, config: EngineSettings | None = None, *, request_keys: bool = False,
                 clock: Callable[[], float] = time.monotonic, capacity: int | None = None) -> None:
        super().__init__(keys, config, request_keys=request_keys, clock=clock)
        self.lanes = _lanes.Lanes(capacity or min(MAX_LANES, 2 * self.config.max_flows))
        #: flow_id → bit mask of its directions that are lanes
        self._laned: dict[int, int] = {}
        #: the flow being finished (its lanes are closed and must stay so)
        self._finishing: object | None = None
        #: frames taken by the compiled path, lanes opened, lanes closed by a frame it refused
        self.lane_frames = 0
        self.lanes_opened = 0
        self.lanes_refused = 0

    # --- frames ---------------------------------------------------------------------------

    def run_lanes(self, frames: Sequence[Frame], start: int) -> tuple[int, int, list[Event]]:
        """The frames of open lanes from ``start`` on: (index of the first frame the
        Python path must take, frames taken here, events)."""
        stop, chunks, handled, closed = self.lanes.run(frames, start)
        events: list[Event] = []
        if handled:
            self.stats.segments += handled
            self.lane_frames += handled
        for (flow, direction), timestamp_ns, data in chunks:
            if timestamp_ns > self._now_ns:
                self._now_ns = timestamp_ns
            if flow.ended_by is None and flow.tls_active:
                self._deliver(flow, direction, [data], timestamp_ns, events)
                self._within_budget(flow, events)  # as after a segment
        if closed is not None:
            self.lanes_refused += 1
            state = LaneState(*closed)
            self._restore(state)
            self._close_lanes(state.handle[0])  # the other direction too: see _segment
        return stop, handled, events

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
            self._offer(flow, direction)
            self._offer(flow, Direction(1 - direction))  # the peer's ACKs (its lane may have closed with this one)

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

    def tick(self, now_ns: int | None = None) -> list[Event]:
        self._sync_activity()
        return super().tick(now_ns)

    def finish(self) -> list[Event]:
        self._sync_activity()
        return super().finish()

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
        info = flow.info
        if direction == Direction.C2S:
            key = (info.client_ip, info.client_port, info.server_ip, info.server_port)
        else:
            key = (info.server_ip, info.server_port, info.client_ip, info.client_port)
        if self.lanes.open(*key, (flow, direction), next_seq, *boundary):
            self._laned[info.flow_id] = mask | (1 << direction)
            self.lanes_opened += 1

    def _close_lanes(self, flow) -> None:  # type: ignore[no-untyped-def]
        info = flow.info
        mask = self._laned.pop(info.flow_id, 0)
        if mask & 1:
            state = self.lanes.close(info.client_ip, info.client_port, info.server_ip, info.server_port)
            if state is not None:
                self._restore(LaneState(*state), forget=False)
        if mask & 2:
            state = self.lanes.close(info.server_ip, info.server_port, info.client_ip, info.client_port)
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
