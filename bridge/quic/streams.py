"""One QUIC byte stream (a STREAM's or a packet number space's CRYPTO data)
reassembled by offset: out of order, overlapping, duplicated.

The first copy of a byte wins (as for TCP, :mod:`bridge.engine.tcp`); a later
copy that disagrees is counted, never used.  Data beyond a hole waits, bounded
by ``max_buffered`` bytes and ``max_segments`` pieces: past either, the hole is
declared a gap (counted in ``gap_bytes``), skipped, and the consumer is told
(:attr:`StreamReassembly.gaps` grows) so that it resynchronises or gives up
instead of reading across the hole.  Nothing after a gap is guessed.
"""

from __future__ import annotations

import bisect

MAX_OFFSET = (1 << 62) - 1


class StreamReassembly:
    __slots__ = ("delivered", "fin_offset", "gap_bytes", "gaps", "retransmitted_bytes", "conflicting_bytes",
                 "max_buffered", "max_segments", "gap_at", "_starts", "_pieces", "_buffered", "highest")

    def __init__(self, max_buffered: int = 4 << 20, max_segments: int = 4096) -> None:
        #: bytes handed to the consumer (the next offset expected)
        self.delivered = 0
        self.fin_offset: int | None = None
        self.gap_bytes = 0
        self.gaps = 0
        self.retransmitted_bytes = 0
        self.conflicting_bytes = 0
        self.max_buffered = max_buffered
        self.max_segments = max_segments
        self._starts: list[int] = []
        self._pieces: dict[int, bytes] = {}
        self._buffered = 0
        #: where in the data the last :meth:`add` returned a gap lies (-1: none)
        self.gap_at = -1
        #: the highest offset seen (end of data)
        self.highest = 0

    @property
    def buffered(self) -> int:
        return self._buffered

    @property
    def complete(self) -> bool:
        """Every byte up to the FIN was delivered (or declared a gap)."""
        return self.fin_offset is not None and self.delivered >= self.fin_offset

    def add(self, offset: int, data: bytes, fin: bool = False) -> bytes:
        """Data at ``offset``; returns what became contiguous (possibly after a gap
        was declared: check :attr:`gaps`)."""
        end = offset + len(data)
        if end > MAX_OFFSET:
            return b""
        if fin and self.fin_offset is None:
            self.fin_offset = end
        if end > self.highest:
            self.highest = end
        if end <= self.delivered:
            self.retransmitted_bytes += len(data)
            return b""
        if offset < self.delivered:
            self.retransmitted_bytes += self.delivered - offset
            data = data[self.delivered - offset:]
            offset = self.delivered
        self.gap_at = -1
        if offset == self.delivered and not self._starts:
            self.delivered = end
            return data
        self._insert(offset, data)
        out = self._drain()
        if self._buffered > self.max_buffered or len(self._starts) > self.max_segments:
            self.gap_at = len(out)
            out += self._skip_hole()
        return out

    def finish(self) -> int:
        """End of the stream's life: bytes known to be missing (holes before
        buffered data and before the FIN) are declared a gap; returns them."""
        missing = 0
        while self._starts:
            before = self.gap_bytes
            self._skip_hole()
            missing += self.gap_bytes - before
        if self.fin_offset is not None and self.delivered < self.fin_offset:
            missing += self.fin_offset - self.delivered
            self.gap_bytes += self.fin_offset - self.delivered
            self.gaps += 1
            self.delivered = self.fin_offset
        return missing

    # --- internals ---------------------------------------------------------------

    def _insert(self, offset: int, data: bytes) -> None:
        """Keep only the parts of ``data`` no earlier piece covers (first copy wins)."""
        starts, pieces = self._starts, self._pieces
        end = offset + len(data)
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0:
            previous_end = starts[i] + len(pieces[starts[i]])
            if previous_end > offset:
                overlap = min(previous_end, end) - offset
                self._compare(pieces[starts[i]], offset - starts[i], data[:overlap])
                data = data[overlap:]
                offset += overlap
        i = bisect.bisect_left(starts, offset)
        while data and i < len(starts) and starts[i] < offset + len(data):
            start = starts[i]
            piece = pieces[start]
            if start > offset:
                self._put(offset, data[:start - offset])
                i += 1
                data = data[start - offset:]
                offset = start
            overlap = min(len(piece), len(data))
            self._compare(piece, 0, data[:overlap])
            data = data[overlap:]
            offset += overlap
            i += 1
        if data:
            self._put(offset, data)

    def _compare(self, piece: bytes, at: int, data: bytes) -> None:
        self.retransmitted_bytes += len(data)
        if piece[at:at + len(data)] != data:
            self.conflicting_bytes += len(data)

    def _put(self, offset: int, data: bytes) -> None:
        bisect.insort(self._starts, offset)
        self._pieces[offset] = data
        self._buffered += len(data)

    def _drain(self) -> bytes:
        starts, pieces = self._starts, self._pieces
        out = []
        while starts and starts[0] <= self.delivered:
            start = starts.pop(0)
            piece = pieces.pop(start)
            self._buffered -= len(piece)
            skip = self.delivered - start
            if skip < len(piece):
                out.append(piece[skip:])
                self.delivered = start + len(piece)
        return b"".join(out)

    def _skip_hole(self) -> bytes:
        if not self._starts:
            return b""
        hole = self._starts[0] - self.delivered
        if hole > 0:
            self.gap_bytes += hole
            self.gaps += 1
            self.delivered = self._starts[0]
        return self._drain()
