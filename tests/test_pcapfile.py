"""pcap / pcapng reading (and pcap writing) on real files."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter as ScapyPcapNgWriter
from scapy.utils import PcapWriter as ScapyPcapWriter
from scapy.utils import rdpcap

from bridge.capture.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    Frame,
    make_frame,
)
from bridge.capture.pcapfile import (
    CaptureParser,
    CaptureReader,
    PcapngParser,
    PcapParser,
    parse_capture_bytes,
    read_capture,
    read_capture_stream,
    tsresol_to_ratio,
)
from bridge.capture.pcapwriter import PcapWriter, pcap_global_header, pcap_record
from bridge.errors import BridgeError, CaptureFormatError
from bridge.engine.packets import decode_tcp


def E(**kw: object) -> Ether:
    """Ether with fixed MACs: a bare Ether() makes scapy resolve (ARP) the IP destination."""
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", **kw)


PY = sys.executable
T0 = 1_700_000_000_123_456_789  # ns


def _pkts(n: int = 5) -> list[bytes]:
    return [
        bytes(E() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000 + i, dport=443) / Raw(b"p%d" % i * (i + 1)))
        for i in range(n)
    ]


# --------------------------------------------------------------------------- pcapng builders
def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _blk(o: str, btype: int, body: bytes) -> bytes:
    body = _pad(body)
    total = 12 + len(body)
    return struct.pack(o + "II", btype, total) + body + struct.pack(o + "I", total)


def _shb(o: str) -> bytes:
    return _blk(o, 0x0A0D0D0A, struct.pack(o + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def _opt(o: str, code: int, value: bytes) -> bytes:
    return struct.pack(o + "HH", code, len(value)) + _pad(value)


def _idb(o: str, linktype: int, snaplen: int = 0, *, tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += _opt(o, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += _opt(o, 14, struct.pack(o + "q", tsoffset))
    if opts:
        opts += _opt(o, 2, b"eth0-name") + struct.pack(o + "HH", 0, 0)
    return _blk(o, 1, struct.pack(o + "HHI", linktype, 0, snaplen) + opts)


def _epb(o: str, if_id: int, units: int, data: bytes, orig: int | None = None) -> bytes:
    orig = len(data) if orig is None else orig
    body = struct.pack(o + "IIIII", if_id, units >> 32, units & 0xFFFFFFFF, len(data), orig) + _pad(data)
    return _blk(o, 6, body + _opt(o, 1, b"a comment") + struct.pack(o + "HH", 0, 0))


def _spb(o: str, data: bytes) -> bytes:
    return _blk(o, 3, struct.pack(o + "I", len(data)) + data)


def _pb(o: str, if_id: int, units: int, data: bytes) -> bytes:
    return _blk(o, 2, struct.pack(o + "HHIIII", if_id, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data)) + data)


def _read_all(path: Path, **kw: int) -> tuple[CaptureReader, list[Frame]]:
    reader = read_capture(path, **kw)
    frames = list(reader)
    return reader, frames


# --------------------------------------------------------------------------- classic pcap
@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_scapy_written(tmp_path: Path, endianness: str, nano: bool) -> None:
    path = tmp_path / "a.pcap"
    pkts = _pkts(6)
    w = ScapyPcapWriter(str(path), linktype=1, endianness=endianness, nano=nano, sync=True)
    for i, p in enumerate(pkts):
        sp = Ether(p)
        sp.time = Decimal(T0 + i * 1_000_001) / Decimal(10**9)
        w.write(sp)
    w.close()
    reader, frames = _read_all(path)
    assert reader.format == "pcap"
    assert [f.data for f in frames] == pkts
    assert all(f.linktype == LINKTYPE_ETHERNET for f in frames)
    for i, f in enumerate(frames):
        exp = T0 + i * 1_000_001
        if nano:
            assert f.timestamp_ns == exp
        else:  # scapy rounds to the nearest µs
            assert f.timestamp_ns % 1000 == 0 and abs(f.timestamp_ns - exp) <= 500
        assert f.orig_len == len(pkts[i])
    assert reader.frames_read == 6 and not reader.truncated and reader.warnings == []
    impl = reader._parser.impl
    assert isinstance(impl, PcapParser) and impl.byteorder == endianness and impl.nanosecond is nano


def test_pcapwriter_roundtrip_and_scapy_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "w.pcap"
    pkts = _pkts(4)
    with PcapWriter(path, LINKTYPE_ETHERNET) as w:
        for i, p in enumerate(pkts):
            w.write(T0 + i, p)
    _, frames = _read_all(path)
    assert [(f.timestamp_ns, f.data) for f in frames] == [(T0 + i, p) for i, p in enumerate(pkts)]
    sc = rdpcap(str(path))
    assert [bytes(p) for p in sc] == pkts
    assert int(sc[1].time * 10**9) == T0 + 1


def test_pcapwriter_microseconds_fileobj_and_snaplen() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, LINKTYPE_RAW, nanosecond=False, snaplen=10)
    w.write(T0, b"0123456789abcdef")
    w.flush()
    w.close()
    assert not buf.closed
    frames = parse_capture_bytes(buf.getvalue())
    assert frames == [Frame(T0 - T0 % 1000, LINKTYPE_RAW, b"0123456789", 16)]
    assert frames[0].truncated


def test_pcap_pure_helpers() -> None:
    hdr = pcap_global_header(113, nanosecond=False, snaplen=65535)
    assert hdr[:4] == bytes.fromhex("d4c3b2a1") and len(hdr) == 24
    rec = pcap_record(1_000_000_001_500, b"xyz", nanosecond=False, orig_len=9)
    assert struct.unpack("<IIII", rec[:16]) == (1000, 1, 3, 9) and rec[16:] == b"xyz"
    with pytest.raises(ValueError):
        pcap_record(-1, b"")
    with pytest.raises(BridgeError):
        PcapWriter("/nonexistent-dir/x.pcap")


def test_make_frame_equals_constructor() -> None:
    a, b = make_frame(1, 2, b"x", 3), Frame(1, 2, b"x", 3)
    assert a == b and hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.data = b"y"  # type: ignore[misc]


def test_pcap_truncated_final_record(tmp_path: Path) -> None:
    pkts = _pkts(3)
    data = pcap_global_header(1) + b"".join(pcap_record(T0, p) for p in pkts)
    path = tmp_path / "t.pcap"
    for cut in (5, 16, 20):  # inside the last record header / data
        path.write_bytes(data[:-(len(pkts[-1]) + 16) + cut])
        reader, frames = _read_all(path)
        assert len(frames) == 2 and reader.frames_read == 2
        assert reader.truncated and reader.trailing_bytes == cut
        assert reader.finished
        assert "capture truncated after 2 frames" in reader.warnings[-1]


def test_pcap_header_only_and_short_header(tmp_path: Path) -> None:
    path = tmp_path / "h.pcap"
    path.write_bytes(pcap_global_header(1))
    reader, frames = _read_all(path)
    assert frames == [] and not reader.truncated
    path.write_bytes(pcap_global_header(1)[:10])
    with pytest.raises(CaptureFormatError, match="header truncated"):
        list(read_capture(path))


def test_pcap_absurd_record_length(tmp_path: Path) -> None:
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap_global_header(1, snaplen=65535) + struct.pack("<IIII", 1, 0, 10_000_000, 10_000_000) + b"x" * 100)
    with pytest.raises(CaptureFormatError, match="absurd"):
        list(read_capture(path))
    path.write_bytes(pcap_global_header(1, snaplen=0) + struct.pack("<IIII", 1, 0, 300 << 20, 1) + b"x" * 100)
    with pytest.raises(CaptureFormatError, match="absurd"):
        list(read_capture(path))


def test_pcap_large_record_across_many_chunks(tmp_path: Path) -> None:
    big = os.urandom(200_000)
    path = tmp_path / "l.pcap"
    path.write_bytes(pcap_global_header(1) + pcap_record(5, big) + pcap_record(6, b"tail"))
    _, frames = _read_all(path, chunk_size=4096)
    assert [f.data for f in frames] == [big, b"tail"]


def test_pcap_modified_kuznetzov_magic() -> None:
    hdr = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    rec = struct.pack("<IIII", 3, 7, 4, 4) + b"\0" * 8 + b"abcd"
    assert parse_capture_bytes(hdr + rec) == [Frame(3_000_007_000, 1, b"abcd", 4)]


# --------------------------------------------------------------------------- pcapng
def _pcapng_fixture() -> tuple[bytes, list[Frame]]:
    o = "<"
    e1, e2, r4 = _pkts(2)[0], _pkts(2)[1], bytes(IP(src="1.2.3.4", dst="5.6.7.8") / TCP())
    blob = b"".join(
        [
            _shb(o),
            _idb(o, LINKTYPE_ETHERNET, 262144),  # default µs
            _idb(o, LINKTYPE_RAW, 65535, tsresol=9),  # ns
            _idb(o, LINKTYPE_IPV4, 0, tsresol=0x80 | 10, tsoffset=1000),  # 1/1024 s + offset
            _blk(o, 0x0BAD, b"unknown block body"),  # skipped
            _blk(o, 5, b"\0" * 8),  # interface statistics block: skipped
            _epb(o, 0, 1_700_000_000_123_456, e1),
            _epb(o, 1, T0, r4, orig=1500),
            _epb(o, 2, 5 * 1024 + 512, r4),
            _spb(o, e2),  # interface 0, timestamp of previous packet
            _pb(o, 0, 42, e1),
            # second section, big endian, a single interface with ms resolution
            _shb(">"),
            _idb(">", LINKTYPE_LINUX_SLL, tsresol=3),
            _spb(">", b"sll-no-ts"),  # no previous packet in this section -> 0
            _epb(">", 0, 1234, b"sll-frame"),
        ]
    )
    expected = [
        Frame(1_700_000_000_123_456_000, LINKTYPE_ETHERNET, e1, len(e1)),
        Frame(T0, LINKTYPE_RAW, r4, 1500),
        Frame((1000 + 5) * 10**9 + 500_000_000, LINKTYPE_IPV4, r4, len(r4)),
        Frame((1000 + 5) * 10**9 + 500_000_000, LINKTYPE_ETHERNET, e2, len(e2)),
        Frame(42_000, LINKTYPE_ETHERNET, e1, len(e1)),
        Frame(0, LINKTYPE_LINUX_SLL, b"sll-no-ts", 9),
        Frame(1_234_000_000, LINKTYPE_LINUX_SLL, b"sll-frame", 9),
    ]
    return blob, expected


def test_pcapng_sections_interfaces_tsresol_spb_pb(tmp_path: Path) -> None:
    blob, expected = _pcapng_fixture()
    path = tmp_path / "multi.pcapng"
    path.write_bytes(blob)
    reader, frames = _read_all(path)
    assert reader.format == "pcapng"
    assert frames == expected
    assert not reader.truncated
    impl = reader._parser.impl
    assert isinstance(impl, PcapngParser) and impl.sections == 2 and impl.byteorder == ">"


@pytest.mark.parametrize("chunk", [1, 3, 17, 64, 1 << 20])
def test_pcapng_any_chunking(chunk: int) -> None:
    blob, expected = _pcapng_fixture()
    reader = read_capture_stream(io.BytesIO(blob), chunk_size=chunk)
    assert list(reader) == expected


def test_pcapng_scapy_writer(tmp_path: Path) -> None:
    path = tmp_path / "s.pcapng"
    pkts = _pkts(4)
    w = ScapyPcapNgWriter(str(path))
    for i, p in enumerate(pkts):
        sp = Ether(p)
        sp.time = Decimal(T0 + i * 1000) / Decimal(10**9)
        w.write(sp)
    w.close()
    _, frames = _read_all(path)
    assert [f.data for f in frames] == pkts
    assert all(f.linktype == 1 for f in frames)
    # scapy's default if_tsresol is µs (or its own); compare at µs precision
    assert [f.timestamp_ns // 1000 for f in frames] == [(T0 + i * 1000) // 1000 for i in range(4)]


def test_pcapng_truncated_final_block(tmp_path: Path) -> None:
    blob, expected = _pcapng_fixture()
    path = tmp_path / "t.pcapng"
    path.write_bytes(blob[:-7])
    reader, frames = _read_all(path)
    assert frames == expected[:-1]
    assert reader.truncated and "truncated after 6 frames" in reader.warnings[-1]


def test_pcapng_errors() -> None:
    o = "<"
    with pytest.raises(CaptureFormatError, match="interface 1"):
        parse_capture_bytes(_shb(o) + _idb(o, 1) + _epb(o, 1, 0, b"x"))
    with pytest.raises(CaptureFormatError, match="bad length"):
        parse_capture_bytes(_shb(o) + struct.pack("<II", 6, 0x7FFFFFF0) + b"\0" * 32)
    with pytest.raises(CaptureFormatError, match="byte-order"):
        parse_capture_bytes(b"\x0a\x0d\x0d\x0a" + struct.pack("<I", 28) + b"\xde\xad\xbe\xef" + b"\0" * 16)
    bad_trailer = bytearray(_shb(o) + _idb(o, 1))
    bad_trailer[-4:] = struct.pack("<I", 99)
    with pytest.raises(CaptureFormatError, match="trailing length"):
        parse_capture_bytes(bytes(bad_trailer))
    bad_caplen = _blk(o, 6, struct.pack("<IIIII", 0, 0, 0, 500, 500) + b"abcd")
    with pytest.raises(CaptureFormatError, match="exceeds"):
        parse_capture_bytes(_shb(o) + _idb(o, 1) + bad_caplen)
    with pytest.raises(CaptureFormatError, match="version"):
        parse_capture_bytes(_blk(o, 0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)))


def test_tsresol_forms() -> None:
    assert tsresol_to_ratio(6) == (1000, 1)
    assert tsresol_to_ratio(9) == (1, 1)
    assert tsresol_to_ratio(12) == (1, 1000)
    assert tsresol_to_ratio(0x80 | 20) == (10**9, 1 << 20)


# --------------------------------------------------------------------------- not a capture
@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "47 45 54 20"),
        (gzip.compress(b"x" * 100), "gzip"),
        (b"\x00" * 64, "00 00 00 00"),
    ],
)
def test_garbage_file(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(CaptureFormatError, match="not a pcap or pcapng") as ei:
        list(read_capture(path))
    assert needle in str(ei.value)


def test_empty_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(CaptureFormatError, match="too short"):
        list(read_capture(path))
    with pytest.raises(CaptureFormatError, match="cannot open"):
        read_capture(tmp_path / "missing.pcap")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=30), st.booleans())
def test_any_split_gives_the_same_frames(cuts: list[int], pcapng: bool) -> None:
    """Chunks cut anywhere (in a record's header, its data, a file header) give the frames
    of the whole capture, in order, in parts; nothing is left over at a clean end."""
    if pcapng:
        blob, expected = _pcapng_fixture()
    else:
        blob = pcap_global_header(1) + b"".join(pcap_record(i, p) for i, p in enumerate(_pkts(12)))
        expected = parse_capture_bytes(blob)
    parser, got, at, i = CaptureParser(), [], 0, 0
    while at < len(blob):
        step = cuts[i % len(cuts)]
        i += 1
        for part in parser.feed_parts(blob[at:at + step]):
            assert len(part)  # never an empty part
            got += list(part)
        at += step
    assert parser.close() == 0
    assert got == expected


def test_pcap_chunk_parsed_where_it_lies() -> None:
    """The record that straddles two chunks is completed from the second chunk's head;
    the rest of that chunk is read in place (a batch over the chunk itself, not a copy)."""
    records = [pcap_record(i, p) for i, p in enumerate(_pkts(6))]
    blob = pcap_global_header(1) + b"".join(records)
    cut = 24 + len(records[0]) + 7  # inside the second record's header
    parser = PcapParser()
    first = parser.feed_parts(blob[:cut])
    chunk = blob[cut:]
    straddling, rest = parser.feed_parts(chunk)
    assert [len(part) for part in first] == [1] and len(straddling) == 1 and len(rest) == 4
    assert rest.buffer is chunk
    assert [f.data for f in [*first[0], *straddling, *rest]] == _pkts(6)


def test_pcap_record_larger_than_the_next_chunk_waits() -> None:
    """A straddling record longer than the next chunk keeps both, and is read whole later."""
    big = os.urandom(5000)
    blob = pcap_global_header(1) + pcap_record(1, b"a") + pcap_record(2, big) + pcap_record(3, b"z")
    parser = PcapParser()
    out = []
    for at in range(0, len(blob), 1000):
        for part in parser.feed_parts(blob[at:at + 1000]):
            out += [f.data for f in part]
    assert parser.close() == 0
    assert out == [b"a", big, b"z"]


def test_sans_io_parser_bytewise() -> None:
    blob = pcap_global_header(1) + b"".join(pcap_record(i, p) for i, p in enumerate(_pkts(3)))
    parser = CaptureParser()
    out: list[Frame] = []
    for i in range(len(blob)):
        out += parser.feed(blob[i : i + 1])
    assert parser.close() == 0
    assert [f.data for f in out] == _pkts(3)


def test_reader_next_and_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "n.pcap"
    path.write_bytes(pcap_global_header(1) + pcap_record(1, b"a") + pcap_record(2, b"b"))
    with read_capture(path) as reader:
        assert next(reader).data == b"a"
        assert next(reader).data == b"b"
        with pytest.raises(StopIteration):
            next(reader)
    assert reader._file.closed


def test_read_stdin_dash_and_pipe(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    path.write_bytes(pcap_global_header(1) + b"".join(pcap_record(i, p) for i, p in enumerate(_pkts(5))))
    code = "from bridge.capture.pcapfile import read_capture; r=read_capture('-'); print(sum(len(f.data) for f in r), r.frames_read)"
    with path.open("rb") as f:
        res = subprocess.run([PY, "-c", code], stdin=f, capture_output=True, text=True, check=True, cwd="/work/main")
    assert res.stdout.split() == [str(sum(map(len, _pkts(5)))), "5"]
    # a real pipe delivering the bytes in small pieces
    feeder = subprocess.Popen(
        [PY, "-c", "import sys,time\nd=open(sys.argv[1],'rb').read()\nfor i in range(0,len(d),50):\n sys.stdout.buffer.write(d[i:i+50]); sys.stdout.flush()", str(path)],
        stdout=subprocess.PIPE,
    )
    assert feeder.stdout is not None
    frames = list(read_capture_stream(feeder.stdout))
    feeder.wait(10)
    assert [f.data for f in frames] == _pkts(5)


# --------------------------------------------------------------------------- tcpdump
@pytest.fixture
def netns():
    name = f"tlsb-pcap-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


_TCP_TALK = textwrap.dedent(
    """
    import socket, threading
    srv = socket.socket(); srv.bind(("127.0.0.1", 5555)); srv.listen(1)
    def serve():
        c, _ = srv.accept(); d = c.recv(100); c.sendall(d.upper()); c.close()
    t = threading.Thread(target=serve); t.start()
    cl = socket.create_connection(("127.0.0.1", 5555)); cl.sendall(b"hello-tcpdump")
    assert cl.recv(100) == b"HELLO-TCPDUMP"; cl.close(); t.join()
    """
)


@pytest.mark.real
@pytest.mark.parametrize("nano", [False, True])
def test_tcpdump_capture(tmp_path: Path, netns: str, nano: bool) -> None:
    assert shutil.which("tcpdump")
    out = tmp_path / "td.pcap"
    cmd = ["ip", "netns", "exec", netns, "tcpdump", "-i", "lo", "-n", "-U", "-Z", "root", "-w", str(out), "-c", "10"]
    if nano:
        cmd += ["--time-stamp-precision", "nano"]
    cmd += ["tcp", "port", "5555"]
    td = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert td.stderr is not None
        line = td.stderr.readline()
        assert "listening on" in line, line
        before = time.time_ns()
        subprocess.run(["ip", "netns", "exec", netns, PY, "-c", _TCP_TALK], check=True, timeout=20)
        td.wait(timeout=20)
    finally:
        if td.poll() is None:
            td.terminate()
            td.wait(5)
    magic = out.read_bytes()[:4]
    assert magic == (bytes.fromhex("4d3cb2a1") if nano else bytes.fromhex("d4c3b2a1"))
    reader, frames = _read_all(out)
    assert reader.frames_read == 10 and not reader.truncated
    segs = [decode_tcp(f.linktype, f.data, f.timestamp_ns) for f in frames]
    assert all(s is not None for s in segs)
    payloads = b"".join(s.payload for s in segs if s is not None)
    assert b"hello-tcpdump" in payloads and b"HELLO-TCPDUMP" in payloads
    for f in frames:
        assert before - 10**9 < f.timestamp_ns < time.time_ns() + 10**9
    if nano:  # at least one timestamp with sub-µs digits is overwhelmingly likely
        assert any(f.timestamp_ns % 1000 for f in frames)
    # cross-check with scapy
    assert [bytes(p) for p in rdpcap(str(out))] == [f.data for f in frames]


def test_udp_not_confused(tmp_path: Path) -> None:
    p = bytes(E() / IP() / UDP() / Raw(b"x"))
    path = tmp_path / "u.pcap"
    path.write_bytes(pcap_global_header(1) + pcap_record(1, p))
    _, frames = _read_all(path)
    assert decode_tcp(frames[0].linktype, frames[0].data, 0) is None
