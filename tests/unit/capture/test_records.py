"""The capture readers' compiled per-frame loops (bridge.capture._records) against
reference decoders written here: pcap records, TPACKET_V3 ring blocks, and the pcap
records written back; arbitrary bytes never crash them.  No root."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.capture import _records
from bridge.capture.frames import Frame
from tests.support.rings import tpacket_v3_block

_frames = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 999_999_999), st.binary(max_size=300),
                             st.integers(0, 400)), max_size=25)


def _pcap_records(frames, little: bool, nanosecond: bool) -> bytes:  # type: ignore[no-untyped-def]
    order = "<" if little else ">"
    out = bytearray()
    for sec, frac, data, extra in frames:
        out += struct.pack(order + "IIII", sec, frac if nanosecond else frac // 1000, len(data), len(data) + extra)
        out += data
    return bytes(out)


@settings(max_examples=200, deadline=None)
@given(_frames, st.booleans(), st.booleans(), st.integers(0, 40))
def test_pcap_records_decode_as_the_reference(frames, little, nanosecond, cut) -> None:  # type: ignore[no-untyped-def]
    buf = _pcap_records(frames, little, nanosecond)
    buf = buf[:len(buf) - cut] if cut < len(buf) else buf
    got, pos, need, absurd = _records.pcap(Frame, buf, 0, little, 16, 1 if nanosecond else 1000, 1 << 20, 1)
    assert absurd == -1
    expected, offset = [], 0
    for sec, frac, data, extra in frames:
        if offset + 16 + len(data) > len(buf):
            break
        ts = sec * 1_000_000_000 + (frac if nanosecond else frac // 1000 * 1000)
        expected.append(Frame(ts, 1, data, len(data) + extra))
        offset += 16 + len(data)
    assert got == expected
    assert pos == offset and pos + need >= len(buf) - 0  # the incomplete rest needs more than is there
    assert need >= 16


@settings(max_examples=200, deadline=None)
@given(_frames, st.booleans(), st.booleans(), st.integers(0, 40), st.integers(0, 3))
def test_a_frame_batch_is_the_same_frames(frames, little, nanosecond, cut, linktype) -> None:  # type: ignore[no-untyped-def]
    """pcap_batch: the frames of pcap, made when read; its records (the buffer the
    compiled engine reads in place) say where each frame lies in the chunk."""
    buf = _pcap_records(frames, little, nanosecond)
    buf = buf[:len(buf) - cut] if cut < len(buf) else buf
    args = (buf, 0, little, 16, 1 if nanosecond else 1000, 1 << 20, linktype)
    listed, pos, need, absurd = _records.pcap(Frame, *args)
    batch, batch_pos, batch_need, batch_absurd = _records.pcap_batch(Frame, *args)
    assert (batch_pos, batch_need, batch_absurd) == (pos, need, absurd)
    assert len(batch) == len(listed) and list(batch) == listed
    assert [batch[i] for i in range(len(batch))] == listed
    assert batch.buffer is buf and batch.linktype == linktype
    records = bytes(memoryview(batch))
    assert len(records) == 24 * len(listed)
    for index, frame in enumerate(listed):
        timestamp_ns, offset, length, orig_len = struct.unpack_from("=qQII", records, 24 * index)
        assert (timestamp_ns, buf[offset:offset + length], orig_len) == (frame.timestamp_ns, frame.data, frame.orig_len)
    with pytest.raises(IndexError):
        batch[len(listed)]


def test_a_frame_batch_needs_bytes() -> None:
    with pytest.raises(TypeError):
        _records.pcap_batch(Frame, bytearray(b""), 0, True, 16, 1, 10, 1)


def test_pcap_absurd_length_stops_before_it() -> None:
    buf = struct.pack("<IIII", 1, 2, 3, 3) + b"abc" + struct.pack("<IIII", 1, 2, 5000, 5000)
    got, pos, need, absurd = _records.pcap(Frame, buf, 0, True, 16, 1, 4096, 1)
    assert [f.data for f in got] == [b"abc"] and pos == 19 and absurd == 5000


@pytest.mark.parametrize("args", [
    (Frame, b"", -1, True, 16, 1, 10, 1),  # position before the buffer
    (Frame, b"", 1, True, 16, 1, 10, 1),  # after it
    (Frame, b"", 0, True, 8, 1, 10, 1),  # a record header shorter than pcap's
])
def test_pcap_bad_arguments(args) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        _records.pcap(*args)


def test_a_type_without_the_slots_is_refused() -> None:
    class Other:
        pass

    with pytest.raises(TypeError):
        _records.pcap(Other, b"", 0, True, 16, 1, 10, 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.integers(0, 30))
def test_pcap_arbitrary_bytes_never_crash(buf: bytes, little: bool, start: int) -> None:
    start = min(start, len(buf))
    got, pos, need, absurd = _records.pcap(Frame, buf, start, little, 16, 1, 1 << 16, 1)
    assert start <= pos <= len(buf) and need >= 16
    assert sum(16 + len(f.data) for f in got) == pos - start


# --- TPACKET_V3 blocks ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**31), st.integers(0, 999_999_999), st.binary(min_size=14, max_size=200),
                          st.sampled_from([0, 0x10, 0x50]), st.integers(0, 0xFFFF), st.sampled_from([0x8100, 0x88A8])),
                min_size=1, max_size=20), st.integers(20, 400))
def test_tpacket_v3_blocks_decode_as_the_reference(frames, snaplen) -> None:  # type: ignore[no-untyped-def]
    ring = tpacket_v3_block(frames)
    got = _records.tpacket_v3(Frame, ring, 0, snaplen)
    assert got.__class__ is _records.FrameBatch and len(got) == len(frames)
    # one buffer, the frames back to back: what the compiled engine reads in place
    assert got.buffer == b"".join(frame.data for frame in got)
    for frame, (sec, nsec, data, status, tci, tpid) in zip(got, frames):
        assert frame.timestamp_ns == sec * 1_000_000_000 + nsec and frame.linktype == 1
        kept = data[:snaplen]
        if status & 0x10:  # the tag the kernel stripped, put back after the MAC addresses
            tag = (tpid if status & 0x40 else 0x8100).to_bytes(2, "big") + tci.to_bytes(2, "big")
            assert frame.data == kept[:12] + tag + kept[12:]
            assert frame.orig_len == len(data) + 4
        else:
            assert frame.data == kept and frame.orig_len == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(-5, 700), st.integers(0, 100))
def test_tpacket_v3_corrupt_blocks_never_crash(noise: bytes, block: int, snaplen: int) -> None:
    ring = bytearray(512)
    ring[:len(noise[:512])] = noise[:512]
    try:
        frames = _records.tpacket_v3(Frame, ring, block, snaplen)
    except ValueError:
        return
    assert all(isinstance(f.data, bytes) and len(f.data) <= snaplen + 4 for f in frames)


# --- writing --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(_frames, st.booleans(), st.integers(0, 400))
def test_pack_pcap_is_the_inverse(frames, nanosecond, snaplen) -> None:  # type: ignore[no-untyped-def]
    sec, frac = frames[0][:2] if frames else (0, 0)
    stamp = sec * 1_000_000_000 + frac
    datas = [data for _, _, data, _ in frames]
    buffer = bytearray(b"kept")
    total = _records.pack_pcap(buffer, stamp, datas, nanosecond, snaplen)
    assert total == sum(len(data) for data in datas)
    assert buffer[:4] == b"kept"  # appended
    records = bytes(buffer[4:])
    got, pos, _need, _absurd = _records.pcap(Frame, records, 0, True, 16, 1 if nanosecond else 1000, 1 << 20, 1)
    assert pos == len(records)
    ts = stamp if nanosecond else stamp // 1000 * 1000
    for back, data in zip(got, datas, strict=True):
        assert (back.timestamp_ns, back.data, back.orig_len) == (ts, data[:snaplen], len(data))

def test_pack_pcap_refuses_what_it_cannot_append_to_and_leaves_the_buffer_as_it_was() -> None:
    with pytest.raises(TypeError):
        _records.pack_pcap(b"not a bytearray", 0, [b"x"], True, 100)
    buffer = bytearray(b"ab")
    with pytest.raises(TypeError):
        _records.pack_pcap(buffer, 0, [b"x", "not bytes"], True, 100)
    with pytest.raises(ValueError):
        _records.pack_pcap(buffer, -1, [b"x"], True, 100)
    view = memoryview(buffer)  # exported: it cannot grow
    with pytest.raises(BufferError):
        _records.pack_pcap(buffer, 0, [b"x"], True, 100)
    view.release()
    assert buffer == b"ab"
