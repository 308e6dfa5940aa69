"""TCP reassembly of one direction, as pure code over segments.

Policy on overlapping data: **first arrival wins**.  Bytes already delivered or
already buffered are never replaced by a later segment that covers the same
sequence numbers (a retransmission with different content is counted as an
inconsistent overlap, not used).  This is the policy of Wireshark's reassembly
and of Suricata's "first" policy; it is stable under duplication.

Sequence numbers are unwrapped into 64-bit stream offsets relative to the
initial sequence number, so wrap-around at 2^32 is invisible above this module.

Missing data: out-of-order bytes are buffered up to ``max_buffered`` bytes.  When
the buffer overflows, or the stream ends (FIN/RST/flush) with a hole, the hole is
reported as a :class:`Gap` and delivery resumes after it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

_MOD = 1 << 32
_HALF = 1 << 31


@dataclass(frozen=True, slots=True)
class Gap:
    """``size`` bytes at stream ``offset`` were never seen."""

    offset: int
    size: int


Chunk = bytes | Gap


@dataclass(slots=True)
class ReassemblyStats:
    segments: int = 0
    bytes_delivered: int = 0
    retransmitted_bytes: int = 0
    inconsistent_overlaps: int = 0
    out_of_order_segments: int = 0
    gaps: int = 0
    gap_bytes: int = 0


class StreamReassembler:
    """In-order delivery of one TCP direction's payload."""

    __slots__ = ("_base_seq", "_next", "_pending_starts", "_pending", "_buffered", "max_buffered", "fin_offset", "sent_until", "stats")

    def __init__(self, *, max_buffered: int = 4 * 1024 * 1024) -> None:
        #: Absolute sequence number of stream offset 0 (ISN + 1), once known.
        self._base_seq: int | None = None
        #: Next stream offset to deliver.
        self._next = 0
        #: Sorted start offsets and their data, for out-of-order segments.
        self._pending_starts: list[int] = []
        self._pending: dict[int, bytes] = {}
        self._buffered = 0
        self.max_buffered = max_buffered
        self.fin_offset: int | None = None
        #: Stream offset the sender is known to have sent up to (a RST's sequence number).
        self.sent_until: int | None = None
        self.stats = ReassemblyStats()

    @property
    def started(self) -> bool:
        return self._base_seq is not None

    @property
    def next_offset(self) -> int:
        return self._next

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def complete(self) -> bool:
        """True when everything up to the FIN has been delivered."""
        return self.fin_offset is not None and self._next >= self.fin_offset

    def in_order_next_seq(self) -> int | None:
        """The next sequence number when the direction is simply in order — started,
        nothing buffered out of order, no FIN or RST seen — else None: then its
        segments can be taken elsewhere (:mod:`bridge.engine.lanes`) until one is not
        the next, and reported back with :meth:`delivered_elsewhere`."""
        if self._base_seq is None or self._pending_starts or self.fin_offset is not None or self.sent_until is not None:
            return None
        return (self._base_seq + self._next) % _MOD

    def delivered_elsewhere(self, size: int, segments: int) -> None:
        """``size`` in-order bytes in ``segments`` segments from :meth:`in_order_next_seq`
        on were delivered by another path: continue after them."""
        self._next += size
        self.stats.segments += segments
        self.stats.bytes_delivered += size

    def note_sent_until(self, seq: int) -> None:
        """The sender has sent everything before ``seq`` (its RST carries it)."""
        if self._base_seq is not None:
            self.sent_until = max(self.sent_until or 0, self._offset(seq))

    def missing(self) -> bool:
        """True when bytes known to have been sent are not yet delivered: a hole
        before buffered data, before the FIN, or before a RST's sequence number."""
        if self._pending_starts:
            return True
        # A FIN bounds the data (a RST after it carries the FIN's sequence number + 1).
        known_end = self.fin_offset if self.fin_offset is not None else self.sent_until
        return known_end is not None and known_end > self._next

    def syn(self, seq: int) -> None:
        """The direction's SYN: data starts at ``seq + 1``."""
        if self._base_seq is None:
            self._base_seq = (seq + 1) % _MOD

    def _offset(self, seq: int) -> int:
        """Unwrap a 32-bit sequence number to the stream offset nearest ``_next``."""
        assert self._base_seq is not None
        expected_seq = (self._base_seq + self._next) % _MOD
        delta = (seq - expected_seq) % _MOD
        if delta >= _HALF:
            delta -= _MOD
        return self._next + delta

    def segment(self, seq: int, payload: bytes, *, fin: bool = False) -> list[Chunk]:
        """One segment's payload; returns the bytes (and gaps) now deliverable in order."""
        base = self._base_seq
        if base is None:
            base = self._base_seq = seq % _MOD  # picked up mid-stream
        elif not fin and not self._pending_starts and payload and (base + self._next) % _MOD == seq:
            # The common case: the next segment, in order, nothing buffered.
            self._next += len(payload)
            self.stats.segments += 1
            self.stats.bytes_delivered += len(payload)
            return [payload]
        start = self._offset(seq)
        if fin:
            fin_at = start + len(payload)
            if self.fin_offset is None or fin_at < self.fin_offset:
                self.fin_offset = fin_at
        if not payload:
            return []
        self.stats.segments += 1
        return self._insert(start, payload)

    def _insert(self, start: int, payload: bytes) -> list[Chunk]:
        end = start + len(payload)
        if end <= self._next:
            self.stats.retransmitted_bytes += len(payload)
            return []
        if start < self._next:
            self.stats.retransmitted_bytes += self._next - start
            payload = payload[self._next - start :]
            start = self._next
        if start > self._next:
            self.stats.out_of_order_segments += 1
            self._buffer(start, payload)
            if self._buffered > self.max_buffered:
                return self._skip_to_buffered()
            return []
        out: list[Chunk] = [payload]
        self._next = end
        self.stats.bytes_delivered += len(payload)
        self._drain(out)
        return out

    def _buffer(self, start: int, payload: bytes) -> None:
        """Keep an out-of-order piece, trimmed so it never replaces earlier bytes."""
        starts = self._pending_starts
        index = bisect.bisect_right(starts, start)
        if index:
            previous = starts[index - 1]
            previous_end = previous + len(self._pending[previous])
            if previous_end >= start + len(payload):
                self.stats.retransmitted_bytes += len(payload)
                return
            if previous_end > start:
                payload = payload[previous_end - start :]
                start = previous_end
        pieces: list[tuple[int, bytes]] = []
        cursor = start
        end = start + len(payload)
        while index < len(starts) and starts[index] < end:
            following = starts[index]
            following_end = following + len(self._pending[following])
            if following > cursor:
                pieces.append((cursor, payload[cursor - start : following - start]))
            cursor = max(cursor, following_end)
            index += 1
        if cursor < end:
            pieces.append((cursor, payload[cursor - start :]))
        self.stats.retransmitted_bytes += len(payload) - sum(len(piece) for _, piece in pieces)
        for piece_start, piece in pieces:
            bisect.insort(starts, piece_start)
            self._pending[piece_start] = piece
            self._buffered += len(piece)

    def _drain(self, out: list[Chunk]) -> None:
        starts = self._pending_starts
        while starts and starts[0] <= self._next:
            first = starts.pop(0)
            piece = self._pending.pop(first)
            self._buffered -= len(piece)
            piece_end = first + len(piece)
            if piece_end <= self._next:
                continue
            piece = piece[self._next - first :]
            out.append(piece)
            self._next = piece_end
            self.stats.bytes_delivered += len(piece)

    def _skip_to_buffered(self) -> list[Chunk]:
        """Give up on the hole before the first buffered piece."""
        first = self._pending_starts[0]
        gap = Gap(self._next, first - self._next)
        self.stats.gaps += 1
        self.stats.gap_bytes += gap.size
        self._next = first
        out: list[Chunk] = [gap]
        self._drain(out)
        return out

    def flush(self) -> list[Chunk]:
        """The stream is over: deliver what is buffered, reporting holes as gaps."""
        out: list[Chunk] = []
        while self._pending_starts:
            out.extend(self._skip_to_buffered())
        if self.fin_offset is not None and self.fin_offset > self._next and self._base_seq is not None:
            gap = Gap(self._next, self.fin_offset - self._next)
            self.stats.gaps += 1
            self.stats.gap_bytes += gap.size
            self._next = self.fin_offset
            out.append(gap)
        return out

