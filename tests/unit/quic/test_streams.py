"""Stream reassembly by offset: any order, duplicates, overlaps; bounded; gaps marked."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from bridge.quic.streams import StreamReassembly


def _pieces(data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    points = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    return [(a, data[a:b]) for a, b in zip(points, points[1:])]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.lists(st.integers(0, 3000), max_size=30), st.randoms(),
       st.integers(0, 10))
def test_any_order_with_duplicates_and_overlaps_gives_the_stream(data, cuts, rnd, extra):
    pieces = _pieces(data, cuts)
    for _ in range(extra):  # overlapping copies of the same bytes
        a = rnd.randrange(len(data))
        b = rnd.randrange(a, len(data)) + 1
        pieces.append((a, data[a:b]))
    rnd.shuffle(pieces)
    stream = StreamReassembly()
    out = bytearray()
    for offset, piece in pieces:
        out += stream.add(offset, piece, fin=offset + len(piece) == len(data))
    assert bytes(out) == data
    assert stream.complete and stream.gap_bytes == 0 and stream.buffered == 0


def test_first_copy_wins_and_a_conflict_is_counted():
    stream = StreamReassembly()
    assert stream.add(5, b"WORLD") == b""
    assert stream.add(3, b"xxyyy") == b""  # overlaps the buffered piece with other bytes
    assert stream.add(0, b"abc") == b"abcxxWORLD"
    assert stream.conflicting_bytes == 3 and stream.retransmitted_bytes == 3


def test_a_hole_past_the_bound_is_a_gap():
    stream = StreamReassembly(max_buffered=100)
    assert stream.add(0, b"a" * 10) == b"a" * 10
    assert stream.add(20, b"b" * 60) == b""
    out = stream.add(80, b"c" * 50)  # 110 bytes buffered > 100: the hole 10..20 is given up
    assert out == b"b" * 60 + b"c" * 50
    assert stream.gap_bytes == 10 and stream.gaps == 1 and stream.gap_at == 0
    assert stream.add(10, b"late") == b""  # nothing after a gap is guessed, late data is old
    assert stream.retransmitted_bytes == 4


def test_many_small_pieces_are_bounded():
    stream = StreamReassembly(max_segments=8)
    for i in range(20):
        stream.add(1 + 2 * i, b"x")
    assert len(stream._starts) <= 8 and stream.gaps > 0


def test_finish_marks_what_is_missing():
    stream = StreamReassembly()
    stream.add(0, b"abc")
    stream.add(10, b"xyz", fin=True)
    assert stream.finish() == 7 and stream.gap_bytes == 7 and stream.complete


def test_data_beyond_the_largest_offset_is_refused():
    stream = StreamReassembly()
    assert stream.add((1 << 62) - 2, b"abc") == b"" and stream.highest == 0


def test_random_large_stream():
    rnd = random.Random(7)
    data = rnd.randbytes(200_000)
    pieces = [(i, data[i:i + 1200]) for i in range(0, len(data), 1200)]
    rnd.shuffle(pieces)
    stream = StreamReassembly()
    assert b"".join(stream.add(o, p) for o, p in pieces) == data
