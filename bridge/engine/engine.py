"""The engine: frames in, events out.

:class:`Engine` is the packet loop every front end shares (``tls-bridge
decrypt``, ``tls-bridge run``'s workers, the demo): it decodes each frame
(:mod:`bridge.engine.packets`), hands TCP segments to the
:class:`~bridge.engine.decryptor.Decryptor`, drives its clock (a tick a second
of capture time; on a quiet live link, of wall time), decrypts what waited when
secrets arrive in the key store, and passes every event to one output callable
(:class:`bridge.outputs.Outputs` in the product; one with a ``batch`` method,
:class:`BatchSink`, takes each run's events in one call).  It does no I/O itself: frames
come from any iterable, events go to the callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bridge.capture.frames import Frame
from bridge.capture.pcapfile import FrameBatch
from bridge.engine.decryptor import NS, Decryptor
from bridge.engine.events import Event
from bridge.engine.lanes import LaneDecryptor
from bridge.engine.packets import SkipReason, TcpSegment, classify
from bridge.engine.settings import EngineSettings
from bridge.errors import PacketDecodeError
from bridge.keys.store import KeyStore

if TYPE_CHECKING:
    from bridge.engine.quic import QuicFlows, QuicStats

EventSink = Callable[[Event], None]


@runtime_checkable
class BatchSink(Protocol):
    """An output that also takes the events of one engine run in one call, in order
    (:meth:`bridge.outputs.Outputs.batch`): what it does must be what calling it on
    each would do, in fewer calls."""

    def __call__(self, event: Event) -> None: ...

    def batch(self, events: list[Event]) -> None: ...


@dataclass(slots=True)
class PacketCounters:
    frames: int = 0
    tcp_segments: int = 0
    not_tcp: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)


def _discard(event: Event) -> None:
    pass


class Engine:
    """Frames → TCP segments → decryptor → events → ``output``."""

    def __init__(self, keys: KeyStore, settings: EngineSettings | None = None, *, output: EventSink = _discard,
                 request_keys: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = keys
        self.settings = settings or EngineSettings()
        decryptor = LaneDecryptor if self.settings.fast_path else Decryptor
        self.decryptor = decryptor(keys, self.settings, request_keys=request_keys, clock=clock)
        self.output = output
        #: an output that takes a run's events in one call (:class:`BatchSink`) is given them so
        self._batch = output.batch if isinstance(output, BatchSink) else None
        self._request_keys = request_keys
        self._quic: QuicFlows | None = None
        self.counters = PacketCounters()
        self._next_tick_ns = 0

    @property
    def quic(self) -> QuicFlows:
        """QUIC connections: UDP datagrams of frames that are not TCP
        (:mod:`bridge.engine.quic`), made — and QUIC's modules imported, a tenth of a
        small capture's run — at the first UDP datagram, or here."""
        if self._quic is None:
            from bridge.engine.quic import QuicFlows

            self._quic = QuicFlows(self.keys, self.settings, self.decryptor.allocate_flow_id,
                                   request_keys=self._request_keys)
        return self._quic

    @property
    def quic_stats(self) -> QuicStats | None:
        """The QUIC connections' counters; None while no UDP datagram came."""
        return self._quic.stats if self._quic is not None else None

    # --- events out ---------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        batch = self._batch
        if batch is not None:
            if not events:
                return
            batch(events)
            return
        output = self.output
        for event in events:
            output(event)

    # --- frames in ------------------------------------------------------------------------

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
        quic = self._quic
        if quic is not None:
            events.extend(quic.keys_arrived())
        if now_ns >= self._next_tick_ns:
            events.extend(self.decryptor.tick(now_ns))
            if quic is not None:
                events.extend(quic.tick(now_ns))
            self._next_tick_ns = now_ns + NS
        if events:
            self._dispatch(events)

    def run(self, frames: Iterable[Frame | list[Frame] | None], progress: Callable[[], None] | None = None) -> None:
        """The packet loop: frames, or lists of frames (a capture file's chunk, a
        ring's block: the compiled path takes them in one call; a capture file's
        :class:`~bridge.capture.pcapfile.FrameBatch` too, read in place), or ``None``
        (a quiet live link).  The hot path, written with locals on purpose."""
        counters = self.counters
        decryptor = self.decryptor
        process = decryptor.process
        tick = decryptor.tick
        run_lanes = decryptor.run_lanes if isinstance(decryptor, LaneDecryptor) else None
        dispatch = self._dispatch
        quic = self._quic.frame if self._quic is not None else None
        keys = self.keys
        next_tick_ns = self._next_tick_ns
        frame_count = tcp_count = not_tcp = 0
        seen, next_check, next_progress = 0, 256, 4096
        try:
            for item in frames:
                if item is None:  # a quiet live link: timed work, counters brought up to date
                    self._next_tick_ns = next_tick_ns
                    self.idle(time.time_ns())
                    next_tick_ns = self._next_tick_ns
                    counters.frames += frame_count
                    counters.tcp_segments += tcp_count
                    counters.not_tcp += not_tcp
                    frame_count = tcp_count = not_tcp = 0
                    continue
                batch = item if item.__class__ is list or item.__class__ is FrameBatch else (item,)
                n = len(batch)
                frame_count += n
                i = 0
                while i < n:
                    segment = None
                    if run_lanes is not None:
                        result = run_lanes(batch, i)
                        if result.__class__ is tuple:
                            i, handled, events = result  # type: ignore[misc]
                            if handled:
                                tcp_count += handled
                                timestamp_ns = batch[i - 1].timestamp_ns
                                if timestamp_ns >= next_tick_ns:
                                    events.extend(tick(timestamp_ns))
                                    next_tick_ns = timestamp_ns + NS
                            if events:
                                dispatch(events)
                            if i >= n:
                                break
                        else:  # frame i is Python's: its segment, decoded in C, or None
                            segment = result
                    if segment is None:
                        frame = batch[i]
                        try:
                            segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
                        except PacketDecodeError as exc:
                            i += 1
                            self._malformed(exc)
                            continue
                    i += 1
                    if segment.__class__ is not TcpSegment:
                        not_tcp += 1
                        if segment is SkipReason.NOT_TCP:  # UDP: QUIC?
                            if quic is None:
                                quic = self.quic.frame
                            events = quic(frame)
                            if events:
                                dispatch(events)
                        continue
                    tcp_count += 1
                    events = process(segment)  # type: ignore[arg-type]
                    timestamp_ns = segment.timestamp_ns  # type: ignore[union-attr]
                    if timestamp_ns >= next_tick_ns:
                        events.extend(tick(timestamp_ns))
                        next_tick_ns = timestamp_ns + NS
                    if events:
                        dispatch(events)
                seen += n
                if seen >= next_check:  # about every 256 frames: secrets that arrived, progress
                    next_check = seen + 256
                    if keys.has_arrivals:
                        self.keys_arrived()
                    if progress is not None and seen >= next_progress:
                        next_progress = seen + 4096
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
        if self._quic is not None:
            self._dispatch(self._quic.keys_arrived())

    def await_late_keys(self, timeout: float) -> None:
        """End of a capture file read with a live feed: connections still waiting for
        their secrets get ``timeout`` more seconds (wall clock) before they are logged."""
        deadline = time.monotonic() + timeout
        while (self.decryptor.waiting_flows or (self._quic is not None and self._quic.waiting_flows)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
            self.keys_arrived()

    def finish(self) -> None:
        """End of input: every connection still open is finished."""
        for events in self.decryptor.finish_batches():
            self._dispatch(events)
        if self._quic is not None:
            self._dispatch(self._quic.finish())
