"""The per-direction reassembler on its own (the decryptor tests drive it with
real captures): order, overlaps (first copy wins), holes, and what it knows was
sent but has not arrived (a FIN's or a RST's sequence number)."""

from __future__ import annotations

from bridge.engine.tcp import Gap, StreamReassembler

ISN = 4_294_967_000  # wraps 296 bytes into the stream


def _stream() -> StreamReassembler:
    stream = StreamReassembler(max_buffered=1000)
    stream.syn(ISN)
    return stream


def _seq(offset: int) -> int:
    return (ISN + 1 + offset) % 2**32


def test_in_order_out_of_order_and_first_copy_wins_across_the_wrap():
    stream = _stream()
    assert stream.segment(_seq(0), b"a" * 300) == [b"a" * 300]
    assert stream.segment(_seq(400), b"c" * 100) == []  # early: buffered
    assert stream.segment(_seq(350), b"X" * 100) == []  # overlaps the buffered piece: only its new part kept
    assert stream.missing()  # a hole before buffered data
    assert stream.segment(_seq(290), b"Y" * 60) == [b"Y" * 50, b"X" * 50, b"c" * 100]
    assert stream.next_offset == 500 and not stream.missing()
    assert stream.stats.retransmitted_bytes == 10 + 50


def test_a_fin_ahead_of_its_data_is_a_known_end():
    stream = _stream()
    stream.segment(_seq(0), b"a" * 10)
    assert stream.segment(_seq(20), b"", fin=True) == [] and stream.missing() and not stream.complete
    assert stream.segment(_seq(10), b"b" * 10) == [b"b" * 10]
    assert stream.complete and not stream.missing()


def test_a_rst_sequence_number_says_what_was_sent_but_a_fin_bounds_it():
    stream = _stream()
    stream.segment(_seq(0), b"a" * 10)
    stream.note_sent_until(_seq(30))
    assert stream.missing()
    stream.segment(_seq(10), b"b" * 20)
    assert not stream.missing()
    closed = _stream()
    closed.segment(_seq(0), b"a" * 10, fin=True)
    closed.note_sent_until(_seq(11))  # RST after the FIN: the FIN's number + 1, no data missing
    assert not closed.missing()


def test_flush_reports_holes_as_gaps_and_buffer_overflow_skips_ahead():
    stream = _stream()
    stream.segment(_seq(0), b"a" * 10)
    stream.segment(_seq(50), b"c" * 10, fin=True)
    assert stream.flush() == [Gap(10, 40), b"c" * 10]
    assert stream.stats.gap_bytes == 40
    small = _stream()
    assert small.segment(_seq(2000), b"z" * 1001) == [Gap(0, 2000), b"z" * 1001]  # over max_buffered
