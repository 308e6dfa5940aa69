"""PcapWriter buffers records into large chunks: the file holds the same bytes as
records written one by one (pcap_global_header + pcap_record each), whatever the
chunk size, and reaches the disk at a chunk, a flush, a close, or flush_interval."""

from __future__ import annotations

import io
import os

import pytest

from bridge.capture.frames import LINKTYPE_ETHERNET, LINKTYPE_RAW
from bridge.capture.pcapfile import parse_capture_bytes
from bridge.capture.pcapwriter import PcapWriter, pcap_global_header, pcap_record

T0 = 1_700_000_000_123_456_789
RECORDS = [(T0 + i * 1_000_003, bytes([i % 256]) * (i * 37 % 1600)) for i in range(500)]


def _reference(nanosecond: bool = True, snaplen: int = 262144) -> bytes:
    """The bytes of the writer before chunking: header, then each record as built alone."""
    parts = [pcap_global_header(LINKTYPE_ETHERNET, nanosecond=nanosecond, snaplen=snaplen)]
    for timestamp, data in RECORDS:
        orig = len(data)
        parts.append(pcap_record(timestamp, data[:snaplen], nanosecond=nanosecond,
                                 orig_len=orig if orig > snaplen else None))
    return b"".join(parts)


@pytest.mark.parametrize("chunk", [1, 1000, 65536, 1 << 20])
@pytest.mark.parametrize(("nanosecond", "snaplen"), [(True, 262144), (False, 262144), (True, 700)])
def test_same_bytes_as_record_by_record(tmp_path, chunk, nanosecond, snaplen):
    path = tmp_path / "out.pcap"
    with PcapWriter(path, LINKTYPE_ETHERNET, nanosecond=nanosecond, snaplen=snaplen, chunk_bytes=chunk) as writer:
        for timestamp, data in RECORDS:
            writer.write(timestamp, data)
    assert path.read_bytes() == _reference(nanosecond, snaplen)
    assert writer.records == len(RECORDS)
    frames = parse_capture_bytes(path.read_bytes())
    assert [f.data for f in frames] == [data[:snaplen] for _, data in RECORDS]


def test_written_in_chunks_not_per_record(tmp_path):
    path = tmp_path / "out.pcap"
    writer = PcapWriter(path, LINKTYPE_ETHERNET, chunk_bytes=101_000, flush_interval=3600)
    record = bytes(1000)
    for i in range(99):  # 99 * 1016 + 24 bytes: below one chunk
        writer.write(T0 + i, record)
    assert os.path.getsize(path) == 0
    writer.write(T0 + 99, record)  # crosses it
    assert os.path.getsize(path) == 24 + 100 * 1016
    writer.write(T0 + 100, record)
    writer.flush()
    assert os.path.getsize(path) == 24 + 101 * 1016
    writer.close()
    writer.close()  # idempotent


def test_a_quiet_writer_reaches_the_file_within_flush_interval(tmp_path):
    path = tmp_path / "out.pcap"
    writer = PcapWriter(path, LINKTYPE_ETHERNET, flush_interval=0)
    writer.write(T0, b"x" * 60)
    assert os.path.getsize(path) == 24 + 16 + 60
    writer.close()


def test_file_object_target_is_flushed_not_closed():
    buffer = io.BytesIO()
    writer = PcapWriter(buffer, LINKTYPE_RAW, flush_interval=3600)
    writer.write(T0, b"abc")
    assert buffer.getvalue() == b""
    writer.close()
    assert not buffer.closed
    assert buffer.getvalue() == pcap_global_header(LINKTYPE_RAW) + pcap_record(T0, b"abc")


def test_negative_timestamp_is_refused_and_nothing_half_written(tmp_path):
    path = tmp_path / "out.pcap"
    with PcapWriter(path, LINKTYPE_ETHERNET) as writer:
        writer.write(T0, b"good")
        with pytest.raises(ValueError):
            writer.write(-1, b"bad")
    assert path.read_bytes() == pcap_global_header(LINKTYPE_ETHERNET) + pcap_record(T0, b"good")


# bursts: the frames of one event, one timestamp (here, runs of 1 to 6 frames)
BURSTS = [(T0 + i * 1_000_003, [bytes([(i + k) % 256]) * ((i + k) * 37 % 1600) for k in range(i % 6 + 1)])
          for i in range(150)]


@pytest.mark.parametrize("nanosecond", [True, False])
@pytest.mark.parametrize("snaplen", [262144, 100])
def test_write_burst_writes_what_write_does(tmp_path, nanosecond, snaplen):
    """The compiled packing (bridge.capture._records.pack_pcap) against the records built one by one."""
    one_by_one, bursts = tmp_path / "one.pcap", tmp_path / "bursts.pcap"
    with PcapWriter(one_by_one, nanosecond=nanosecond, snaplen=snaplen) as writer:
        for timestamp, frames in BURSTS:
            for frame in frames:
                writer.write(timestamp, frame)
    with PcapWriter(bursts, nanosecond=nanosecond, snaplen=snaplen) as writer:
        total = sum(writer.write_burst(timestamp, frames) for timestamp, frames in BURSTS)
        assert writer.records == sum(len(frames) for _, frames in BURSTS)
    assert bursts.read_bytes() == one_by_one.read_bytes()
    assert total == sum(len(frame) for _, frames in BURSTS for frame in frames)


def test_write_burst_refuses_what_write_refuses(tmp_path):
    with PcapWriter(tmp_path / "bad.pcap") as writer:
        with pytest.raises(ValueError):
            writer.write_burst(-1, [b"x"])
        with pytest.raises(TypeError):
            writer.write_burst(T0, [b"ok", "not bytes"])  # type: ignore[list-item]
        assert writer.records == 0
