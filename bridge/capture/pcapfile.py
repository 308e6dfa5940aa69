"""Reading classic pcap and pcapng capture files.

Layers:

* :class:`PcapParser` and :class:`PcapngParser` are sans-I/O parsers: ``feed(bytes)``
  returns the list of complete :class:`Frame` objects the bytes made available, and
  ``close()`` says how many bytes of an incomplete trailing record were left over.
  :class:`CaptureParser` sniffs the magic number and delegates to one of them.
* :class:`CaptureReader` is the thin driver: it reads a path, ``-`` (stdin) or a
  binary file object in large chunks (constant memory for multi-GB files), iterates
  frames and keeps stats (``frames_read``, ``truncated``, ``warnings``) so a caller
  can report "capture truncated after N frames" instead of crashing.

Malformed input raises :class:`~bridge.errors.CaptureFormatError`; a capture that
merely ends in the middle of a record (a killed tcpdump, a full disk) is *not* an
error: iteration stops cleanly and ``CaptureReader.truncated`` is set.

pcapng support: multiple sections (each with its own byte order), any number of
Interface Description Blocks (each with its own link type, snaplen, ``if_tsresol``
in the power-of-10 or power-of-2 form, and ``if_tsoffset``), Enhanced Packet
Blocks, Simple Packet Blocks (interface 0; they carry no timestamp, so they get the
timestamp of the previous packet of the section, 0 if none) and obsolete Packet
Blocks.  Other block types are skipped.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from bridge.capture import _records
from bridge.capture.frames import Frame, make_frame
from bridge.errors import CaptureFormatError

#: The frames of a classic pcap chunk, made objects when read (bridge/capture/_records.c).
FrameBatch = _records.FrameBatch

__all__ = [
    "MAX_RECORD_BYTES",
    "SNAPLEN_SLACK",
    "CaptureParser",
    "CaptureReader",
    "PcapParser",
    "PcapngParser",
    "read_capture",
    "read_capture_stream",
]

#: No record/block may be larger than this (a corrupt length field, not a packet).
MAX_RECORD_BYTES = 256 * 1024 * 1024
#: A record may exceed the declared snaplen by this much (tools are sloppy) but no more.
SNAPLEN_SLACK = 256 * 1024
DEFAULT_CHUNK_SIZE = 1 << 20

_NS = 1_000_000_000

# classic pcap magics, read as a little-endian u32 -> (byte order, ns?, record header length)
_PCAP_MAGICS: dict[int, tuple[str, bool, int]] = {
    0xA1B2C3D4: ("<", False, 16),
    0xD4C3B2A1: (">", False, 16),
    0xA1B23C4D: ("<", True, 16),
    0x4D3CB2A1: (">", True, 16),
    0xA1B2CD34: ("<", False, 24),  # Kuznetzov's "modified" pcap (extra 8 bytes per record)
    0x34CDB2A1: (">", False, 24),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPNG_BOM_LE = b"\x4d\x3c\x2b\x1a"
_PCAPNG_BOM_BE = b"\x1a\x2b\x3c\x4d"

# hints for the "not a capture" message
_KNOWN_NON_CAPTURE = {
    b"\x1f\x8b": "gzip-compressed data",
    b"\x28\xb5\x2f\xfd": "zstd-compressed data",
    b"BZh": "bzip2-compressed data",
    b"\xfd7zXZ": "xz-compressed data",
    b"PK\x03\x04": "a zip archive",
    b"\x00\x00\x00\x00": "zero bytes (sparse or preallocated file?)",
}


def _describe_magic(head: bytes) -> str:
    shown = head[:8].hex(" ") or "(none)"
    for prefix, what in _KNOWN_NON_CAPTURE.items():
        if head.startswith(prefix):
            return f"{shown}; looks like {what}"
    return shown


def _joined(parts: list[Sequence[Frame]]) -> Sequence[Frame]:
    """:meth:`feed`'s frames from :meth:`feed_parts`'s: the one part as it is, else a list."""
    if len(parts) == 1:
        return parts[0]
    return [frame for part in parts for frame in part]


class _BufferedParser:
    """Chunk bookkeeping shared by the two format parsers.

    Incoming chunks are only joined once enough bytes for the next record are
    present, so a huge record spread over many chunks is copied once, not per chunk.
    Subclasses implement ``_parse(buf, out) -> (consumed, needed)``: append the
    complete frames in ``buf`` to ``out``, return how many bytes they consumed and
    how many bytes (from there) the next record needs.
    """

    format_name = "?"

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._need = 1
        self._header_done = False
        self.frames_parsed = 0
        self.warnings: list[str] = []

    def feed(self, data: bytes) -> Sequence[Frame]:
        """Add bytes; return the frames that became complete (possibly none): a list,
        or (classic pcap) a :class:`FrameBatch`, whose frames are made when read."""
        return _joined(self.feed_parts(data))

    def feed_parts(self, data: bytes) -> list[Sequence[Frame]]:
        """As :meth:`feed`, the frames in parts (each a list or a :class:`FrameBatch`),
        without copying the chunk: the record that straddles the previous chunk's end
        is completed from this chunk's first bytes (only they are copied), then the
        rest of the chunk is parsed where it lies (joining the two chunks cost a copy
        of every byte of a capture, and a fresh buffer's page faults, per chunk)."""
        if not data:
            return []
        data = bytes(data)
        if self._pending_len + len(data) < self._need:
            self._pending.append(data)
            self._pending_len += len(data)
            return []
        parts: list[Sequence[Frame]] = []
        start = 0
        if self._pending:
            pending = self._pending
            head = pending[0] if len(pending) == 1 else b"".join(pending)
            used = 0  # bytes of data in head
            while True:
                take = self._need - len(head)
                if used + take > len(data):  # the record needs more than this chunk: keep it all
                    rest = data[used:]
                    self._pending = [head, rest]
                    self._pending_len = len(head) + len(rest)
                    return parts
                piece = head + data[used:used + take]
                pos = self._parse_part(piece, 0, parts)
                if pos >= len(head):  # the straddling record is done: the rest lies in data
                    start = used + pos - len(head)
                    break
                head = piece[pos:]
                used += take
        pos = self._parse_part(data, start, parts)
        rest = data[pos:] if pos < len(data) else b""
        self._pending = [rest] if rest else []
        self._pending_len = len(rest)
        return parts

    def _parse_part(self, buf: bytes, pos: int, parts: list[Sequence[Frame]]) -> int:
        """Parse ``buf`` from ``pos``; append its frames to ``parts`` as one part, and
        return where parsing stopped (the next record needs ``self._need`` bytes from there)."""
        out: list[Frame] = []
        try:
            pos, self._need = self._parse(buf, out, pos)
        except (struct.error, IndexError, ValueError, OverflowError) as exc:
            raise CaptureFormatError(f"malformed {self.format_name} data: {exc}") from exc
        if out:
            part: Sequence[Frame] = out[0] if len(out) == 1 and out[0].__class__ is FrameBatch else out  # type: ignore[assignment,comparison-overlap]
            self.frames_parsed += len(part)
            parts.append(part)
        return pos

    def close(self) -> int:
        """Signal end of input; return the number of leftover (truncated) bytes.

        Raises CaptureFormatError if the input ended inside the file header.
        """
        if not self._header_done:
            raise CaptureFormatError(
                f"{self.format_name} file header truncated ({self._pending_len} bytes)"
            )
        return self._pending_len

    def _parse(self, buf: bytes, out: list[Frame], pos: int = 0) -> tuple[int, int]:  # pragma: no cover
        raise NotImplementedError


def _check_caplen(caplen: int, snaplen: int, what: str) -> None:
    limit = MAX_RECORD_BYTES if snaplen == 0 else min(MAX_RECORD_BYTES, snaplen + SNAPLEN_SLACK)
    if caplen > limit:
        raise CaptureFormatError(
            f"{what}: captured length {caplen} is absurd (snaplen {snaplen}); file corrupt?"
        )


class PcapParser(_BufferedParser):
    """Sans-I/O parser of classic libpcap files (µs or ns, either byte order)."""

    format_name = "pcap"

    def __init__(self) -> None:
        super().__init__()
        self._need = 24
        self.linktype = -1
        self.snaplen = 0
        self.nanosecond = False
        self.byteorder = "<"
        self._rec = struct.Struct("<IIII")
        self._rec_len = 16
        self._frac_mult = 1000
        self._limit = MAX_RECORD_BYTES

    def _parse_header(self, buf: bytes) -> None:
        (magic,) = struct.unpack_from("<I", buf, 0)
        try:
            order, nano, rec_len = _PCAP_MAGICS[magic]
        except KeyError:
            raise CaptureFormatError(
                f"not a pcap file (magic bytes {_describe_magic(buf[:4])})"
            ) from None
        major, _minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
            order + "HHiIII", buf, 4
        )
        if major != 2:
            raise CaptureFormatError(f"unsupported pcap version {major}.{_minor}")
        self.byteorder = order
        self.nanosecond = nano
        self.snaplen = snaplen
        self.linktype = network & 0xFFFF  # upper bits: FCS length flags
        self._rec = struct.Struct(order + "IIII")
        self._rec_len = rec_len
        self._frac_mult = 1 if nano else 1000
        self._limit = (
            MAX_RECORD_BYTES if snaplen == 0 else min(MAX_RECORD_BYTES, snaplen + SNAPLEN_SLACK)
        )
        self._header_done = True

    def _parse(self, buf: bytes, out: list[Frame], pos: int = 0) -> tuple[int, int]:
        n = len(buf)
        if not self._header_done:
            if n - pos < 24:
                return pos, 24
            self._parse_header(buf[pos:pos + 24])
            pos += 24
        # The record loop is compiled (bridge/capture/_records.c): same frames, same bounds,
        # as one FrameBatch (the compiled engine reads its frames in place: no Frame made).
        batch, pos, need, absurd = _records.pcap_batch(Frame, buf, pos, self.byteorder == "<", self._rec_len,
                                                       self._frac_mult, self._limit, self.linktype)
        if len(batch):
            out.append(batch)  # feed() returns it as it is
        if absurd >= 0:
            _check_caplen(absurd, self.snaplen, f"pcap record at frame {self.frames_parsed + len(batch)}")
        return pos, need


@dataclass(frozen=True, slots=True)
class InterfaceInfo:
    """What a pcapng Interface Description Block declared."""

    linktype: int
    snaplen: int
    ts_mult: int  # timestamp units -> ns: units * ts_mult // ts_div + offset_ns
    ts_div: int
    offset_ns: int


class _Order:
    """Precompiled structs for one byte order."""

    __slots__ = ("hdr", "u32", "epb", "pb", "opt", "i64", "shb", "idb")

    def __init__(self, order: str) -> None:
        self.hdr = struct.Struct(order + "II")
        self.u32 = struct.Struct(order + "I")
        self.epb = struct.Struct(order + "IIIII")  # if_id, ts_hi, ts_lo, caplen, origlen
        self.pb = struct.Struct(order + "HHIIII")  # if_id, drops, ts_hi, ts_lo, caplen, origlen
        self.opt = struct.Struct(order + "HH")
        self.i64 = struct.Struct(order + "q")
        self.shb = struct.Struct(order + "HHq")
        self.idb = struct.Struct(order + "HHI")


_ORDERS = {"<": _Order("<"), ">": _Order(">")}

_BT_SHB = 0x0A0D0D0A
_BT_IDB = 1
_BT_PB = 2
_BT_SPB = 3
_BT_EPB = 6
_OPT_ENDOFOPT = 0
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


def tsresol_to_ratio(value: int) -> tuple[int, int]:
    """``if_tsresol`` byte -> (mult, div) such that ns = units * mult // div."""
    exp = value & 0x7F
    if value & 0x80:  # 2^-exp seconds per unit
        return _NS, 1 << exp
    if exp <= 9:
        return 10 ** (9 - exp), 1
    return 1, 10 ** (exp - 9)


class PcapngParser(_BufferedParser):
    """Sans-I/O parser of pcapng files (sections, interfaces, EPB/SPB/PB)."""

    format_name = "pcapng"

    def __init__(self) -> None:
        super().__init__()
        self._need = 12
        self.byteorder: str | None = None
        self.sections = 0
        self.interfaces: list[InterfaceInfo] = []
        self._last_ts = 0
        self._s = _ORDERS["<"]

    def _parse(self, buf: bytes, out: list[Frame], pos: int = 0) -> tuple[int, int]:
        n = len(buf)
        append = out.append
        while True:
            if n - pos < 12:
                return pos, 12
            if buf[pos : pos + 4] == _PCAPNG_SHB:
                self._set_order(buf[pos + 8 : pos + 12])
            elif self.byteorder is None:
                raise CaptureFormatError(
                    f"not a pcapng file (magic bytes {_describe_magic(buf[pos:pos + 4])})"
                )
            s = self._s
            btype, blen = s.hdr.unpack_from(buf, pos)
            if blen < 12 or blen > MAX_RECORD_BYTES or blen & 3:
                raise CaptureFormatError(
                    f"pcapng block type {btype:#x} at offset +{pos} has bad length {blen}"
                )
            end = pos + blen
            if end > n:
                return pos, blen
            if s.u32.unpack_from(buf, end - 4)[0] != blen:
                raise CaptureFormatError(
                    f"pcapng block type {btype:#x}: trailing length does not match {blen}"
                )
            if btype == _BT_EPB:
                if blen < 32:
                    raise CaptureFormatError(f"pcapng EPB too short ({blen} bytes)")
                if_id, ts_hi, ts_lo, caplen, origlen = s.epb.unpack_from(buf, pos + 8)
                append(self._packet(buf, pos + 28, end - 4, if_id, ts_hi, ts_lo, caplen, origlen))
            elif btype == _BT_SPB:
                append(self._simple_packet(buf, pos, end))
            elif btype == _BT_IDB:
                self._interface(buf, pos, end)
            elif btype == _BT_SHB:
                self._section(buf, pos, end)
            elif btype == _BT_PB:
                if blen < 32:
                    raise CaptureFormatError(f"pcapng Packet Block too short ({blen} bytes)")
                if_id, _drops, ts_hi, ts_lo, caplen, origlen = s.pb.unpack_from(buf, pos + 8)
                append(self._packet(buf, pos + 28, end - 4, if_id, ts_hi, ts_lo, caplen, origlen))
            # any other block type: skipped
            pos = end

    def _set_order(self, bom: bytes) -> None:
        if bom == _PCAPNG_BOM_LE:
            order = "<"
        elif bom == _PCAPNG_BOM_BE:
            order = ">"
        else:
            raise CaptureFormatError(
                f"pcapng section header has bad byte-order magic {bom.hex(' ')}"
            )
        self.byteorder = order
        self._s = _ORDERS[order]

    def _section(self, buf: bytes, pos: int, end: int) -> None:
        if end - pos < 28:
            raise CaptureFormatError(f"pcapng section header too short ({end - pos} bytes)")
        major, minor, _section_len = self._s.shb.unpack_from(buf, pos + 12)
        if major != 1:
            raise CaptureFormatError(f"unsupported pcapng version {major}.{minor}")
        self.sections += 1
        self.interfaces = []
        self._last_ts = 0
        self._header_done = True

    def _interface(self, buf: bytes, pos: int, end: int) -> None:
        if end - pos < 20:
            raise CaptureFormatError(f"pcapng interface block too short ({end - pos} bytes)")
        s = self._s
        linktype, _reserved, snaplen = s.idb.unpack_from(buf, pos + 8)
        mult, div, offset = 1000, 1, 0  # default resolution: microseconds
        p = pos + 16
        opt_end = end - 4
        while p + 4 <= opt_end:
            code, olen = s.opt.unpack_from(buf, p)
            if code == _OPT_ENDOFOPT:
                break
            vstart = p + 4
            if vstart + olen > opt_end:
                self.warnings.append(
                    f"pcapng interface {len(self.interfaces)}: option {code} overruns block; "
                    "ignoring the rest of its options"
                )
                break
            if code == _OPT_IF_TSRESOL and olen >= 1:
                mult, div = tsresol_to_ratio(buf[vstart])
            elif code == _OPT_IF_TSOFFSET and olen >= 8:
                offset = s.i64.unpack_from(buf, vstart)[0] * _NS
            p = vstart + ((olen + 3) & ~3)
        self.interfaces.append(InterfaceInfo(linktype, snaplen, mult, div, offset))

    def _iface(self, if_id: int) -> InterfaceInfo:
        try:
            return self.interfaces[if_id]
        except IndexError:
            raise CaptureFormatError(
                f"pcapng packet refers to interface {if_id} but the section "
                f"declares {len(self.interfaces)} interface(s)"
            ) from None

    def _packet(
        self,
        buf: bytes,
        start: int,
        body_end: int,
        if_id: int,
        ts_hi: int,
        ts_lo: int,
        caplen: int,
        origlen: int,
    ) -> Frame:
        iface = self._iface(if_id)
        if start + caplen > body_end:
            raise CaptureFormatError(
                f"pcapng packet captured length {caplen} exceeds its block"
            )
        if caplen > iface.snaplen + SNAPLEN_SLACK and iface.snaplen:
            _check_caplen(caplen, iface.snaplen, "pcapng packet")
        ts = ((ts_hi << 32) | ts_lo) * iface.ts_mult // iface.ts_div + iface.offset_ns
        self._last_ts = ts
        return make_frame(ts, iface.linktype, buf[start : start + caplen], origlen)

    def _simple_packet(self, buf: bytes, pos: int, end: int) -> Frame:
        if end - pos < 16:
            raise CaptureFormatError(f"pcapng simple packet block too short ({end - pos} bytes)")
        iface = self._iface(0)
        origlen = self._s.u32.unpack_from(buf, pos + 8)[0]
        caplen = min(origlen, end - pos - 16)
        if iface.snaplen:
            caplen = min(caplen, iface.snaplen)
        return make_frame(self._last_ts, iface.linktype, buf[pos + 12 : pos + 12 + caplen], origlen)


def detect_format(head: bytes) -> str:
    """'pcap' or 'pcapng' from the first 4 bytes; CaptureFormatError otherwise."""
    if len(head) < 4:
        raise CaptureFormatError(
            f"capture too short to identify ({len(head)} bytes: {head.hex(' ') or 'empty'})"
        )
    if head[:4] == _PCAPNG_SHB:
        return "pcapng"
    if struct.unpack_from("<I", head)[0] in _PCAP_MAGICS:
        return "pcap"
    raise CaptureFormatError(
        f"not a pcap or pcapng capture (magic bytes {_describe_magic(head)})"
    )


class CaptureParser:
    """Sans-I/O parser that sniffs the format from the first bytes fed."""

    def __init__(self) -> None:
        self._impl: PcapParser | PcapngParser | None = None
        self._head = b""

    @property
    def format(self) -> str | None:
        return None if self._impl is None else self._impl.format_name

    @property
    def impl(self) -> PcapParser | PcapngParser | None:
        return self._impl

    @property
    def warnings(self) -> list[str]:
        return [] if self._impl is None else self._impl.warnings

    def feed(self, data: bytes) -> Sequence[Frame]:
        return _joined(self.feed_parts(data))

    def feed_parts(self, data: bytes) -> list[Sequence[Frame]]:
        """The frames that became complete, in parts (see :meth:`_BufferedParser.feed_parts`)."""
        impl = self._impl
        if impl is None:
            self._head += data
            if len(self._head) < 4:
                return []
            kind = detect_format(self._head)
            impl = self._impl = PcapParser() if kind == "pcap" else PcapngParser()
            data, self._head = self._head, b""
        return impl.feed_parts(data)

    def close(self) -> int:
        """End of input: leftover byte count (0 = clean end). Errors if nothing valid came."""
        if self._impl is None:
            detect_format(self._head)  # raises: too short / empty
        assert self._impl is not None
        return self._impl.close()


def parse_capture_bytes(data: bytes) -> list[Frame]:
    """Parse a whole in-memory capture (tests, small files). Truncation is ignored."""
    parser = CaptureParser()
    frames = list(parser.feed(data))
    parser.close()
    return frames


class CaptureReader:
    """Iterate the frames of a capture file or stream, with stats.

    ``for frame in reader`` is the fast path (a generator); the reader is also an
    iterator itself (``next(reader)``).  After iteration, ``truncated`` tells whether
    the capture ended inside a record and ``warnings`` holds human-readable notes.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._owns = False
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if path == "-":
                self._file: BinaryIO = sys.stdin.buffer
                self.name = "<stdin>"
            else:
                try:
                    self._file = open(path, "rb")  # noqa: SIM115 - closed by close()/generator
                except OSError as exc:
                    raise CaptureFormatError(
                        f"cannot open capture {path!r}: {exc.strerror or exc}"
                    ) from exc
                self._owns = True
                self.name = path
        else:
            self._file = source
            self.name = getattr(source, "name", "<stream>")
        self._chunk_size = chunk_size
        self._parser = CaptureParser()
        self._gen: Iterator[Frame] | None = None
        self.frames_read = 0
        self.truncated = False
        self.trailing_bytes = 0
        self.finished = False
        self.warnings: list[str] = []

    @property
    def format(self) -> str | None:
        """'pcap' / 'pcapng' once the first bytes were read, else None."""
        return self._parser.format

    def __iter__(self) -> Iterator[Frame]:
        if self._gen is None:
            self._gen = self._frames()
        return self._gen

    def __next__(self) -> Frame:
        return next(iter(self))

    def _frames(self) -> Iterator[Frame]:
        for frames in self.batches():
            yield from frames

    def batches(self) -> Iterator[Sequence[Frame]]:
        """The frames a chunk at a time (a list or a :class:`FrameBatch` per read of
        ``chunk_size`` bytes, and one for the record that straddled the previous read's
        end): what :meth:`bridge.engine.Engine.run` takes in one call of the compiled path."""
        f = self._file
        read = getattr(f, "read1", None) or f.read
        size = self._chunk_size
        parser = self._parser
        try:
            while True:
                try:
                    chunk = read(size)
                except OSError as exc:
                    raise CaptureFormatError(f"error reading {self.name}: {exc}") from exc
                if not chunk:
                    break
                for frames in parser.feed_parts(chunk):
                    self.frames_read += len(frames)
                    yield frames
            leftover = parser.close()
            self.warnings.extend(parser.warnings)
            if leftover:
                self.truncated = True
                self.trailing_bytes = leftover
                self.warnings.append(
                    f"capture truncated after {self.frames_read} frames "
                    f"({leftover} bytes of an incomplete final record ignored)"
                )
            self.finished = True
        finally:
            if self._owns:
                f.close()

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()  # type: ignore[attr-defined]
        if self._owns:
            self._file.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_capture(
    path: str | os.PathLike[str], *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> CaptureReader:
    """Frames of a pcap/pcapng file (``-`` = stdin); see :class:`CaptureReader`."""
    return CaptureReader(path, chunk_size=chunk_size)


def read_capture_stream(
    fileobj: BinaryIO, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> CaptureReader:
    """Frames from a binary file object (e.g. ``sys.stdin.buffer``, a pipe)."""
    return CaptureReader(fileobj, chunk_size=chunk_size)
