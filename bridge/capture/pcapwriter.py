"""Writing classic pcap files (little-endian, ns or µs resolution).

:func:`pcap_global_header` and :func:`pcap_record` are pure byte builders;
:class:`PcapWriter` is a thin file driver around them: records are appended to
one buffer that goes to the file in large writes (``chunk_bytes``, 1 MiB by
default), a system call per chunk instead of one per 8 KiB; the bytes are the
same as record by record.  A live writer that sees little traffic still reaches
the file within ``flush_interval`` seconds of a record (checked when the next
one is written), and at :meth:`PcapWriter.flush` and :meth:`PcapWriter.close`.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Callable
from typing import BinaryIO

from bridge.capture import _records
from bridge.capture.frames import LINKTYPE_ETHERNET
from bridge.errors import BridgeError

__all__ = ["DEFAULT_CHUNK", "DEFAULT_SNAPLEN", "PcapWriter", "pcap_global_header", "pcap_record"]



DEFAULT_SNAPLEN = 262144
DEFAULT_CHUNK = 1 << 20
_NS = 1_000_000_000
_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D


def pcap_global_header(
    linktype: int, *, nanosecond: bool = True, snaplen: int = DEFAULT_SNAPLEN
) -> bytes:
    """The 24-byte pcap file header."""
    magic = _MAGIC_NS if nanosecond else _MAGIC_US
    return _GLOBAL.pack(magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(
    timestamp_ns: int,
    data: bytes,
    *,
    nanosecond: bool = True,
    orig_len: int | None = None,
) -> bytes:
    """One record: 16-byte header followed by ``data``."""
    if timestamp_ns < 0:
        raise ValueError("timestamp_ns must not be negative")
    sec, frac_ns = divmod(timestamp_ns, _NS)
    frac = frac_ns if nanosecond else frac_ns // 1000
    n = len(data)
    return _RECORD.pack(sec & 0xFFFFFFFF, frac, n, n if orig_len is None else orig_len) + bytes(data)


class PcapWriter:
    """Write a pcap file record by record (buffered in chunks of ``chunk_bytes``).

    ``target`` is a path (opened and owned) or a binary file object (not closed;
    flushed on :meth:`flush` and :meth:`close`).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        linktype: int = LINKTYPE_ETHERNET,
        *,
        nanosecond: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
        chunk_bytes: int = DEFAULT_CHUNK,
        flush_interval: float = 1.0,
    ) -> None:
        self._owns = isinstance(target, (str, os.PathLike))
        if self._owns:
            try:
                # unbuffered: our own buffer is the only one
                self._file: BinaryIO = open(os.fspath(target), "wb", buffering=0)  # type: ignore[arg-type]  # noqa: SIM115
            except OSError as exc:
                raise BridgeError(f"cannot create pcap {os.fspath(target)!r}: {exc.strerror or exc}") from exc
        else:
            self._file = target  # type: ignore[assignment]
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.chunk_bytes = chunk_bytes
        self.flush_interval = flush_interval
        self.records = 0
        self._buffer = bytearray(pcap_global_header(linktype, nanosecond=nanosecond, snaplen=snaplen))
        self._written_at = time.monotonic()

    def write(self, timestamp_ns: int, data: bytes, *, orig_len: int | None = None) -> None:
        n = len(data)
        if n > self.snaplen:
            if orig_len is None:
                orig_len = n
            data = data[: self.snaplen]
            n = self.snaplen
        if timestamp_ns < 0:
            raise ValueError("timestamp_ns must not be negative")
        sec, frac = divmod(timestamp_ns, _NS)
        if not self.nanosecond:
            frac //= 1000
        buffer = self._buffer
        buffer += _RECORD.pack(sec & 0xFFFFFFFF, frac, n, n if orig_len is None else orig_len)
        buffer += data
        self.records += 1
        if len(buffer) >= self.chunk_bytes or time.monotonic() - self._written_at >= self.flush_interval:
            self._write_out()

    def write_burst(self, timestamp_ns: int, frames: list[bytes]) -> int:
        """Records for ``frames``, all stamped ``timestamp_ns`` (what one event made),
        in order, as :meth:`write` would write them (packed in C,
        :mod:`bridge.capture._records`); returns the bytes of frame data."""
        buffer = self._buffer
        total = _records.pack_pcap(buffer, timestamp_ns, frames, self.nanosecond, self.snaplen)
        self.records += len(frames)
        if len(buffer) >= self.chunk_bytes or time.monotonic() - self._written_at >= self.flush_interval:
            self._write_out()
        return total

    def extend(self, pack: Callable[[bytearray, bool, int], tuple[int, int]]) -> tuple[int, int]:
        """Records that ``pack(buffer, nanosecond, snaplen) -> (records, frame bytes)``
        appends to the writer's buffer itself, in this file's format (a compiled packer:
        no copy in between; :meth:`bridge.reinject.synthetic.FrameBurst.pack_pcap`);
        returns what it returned."""
        records, size = pack(self._buffer, self.nanosecond, self.snaplen)
        self.records += records
        if len(self._buffer) >= self.chunk_bytes or time.monotonic() - self._written_at >= self.flush_interval:
            self._write_out()
        return records, size

    def _write_out(self) -> None:
        buffer = self._buffer
        done = 0
        try:
            while done < len(buffer):
                written = self._file.write(buffer if not done else buffer[done:])
                if written is None:  # a non-blocking target that is full
                    raise BlockingIOError(errno.EAGAIN, "the pcap target would block")
                done += written
        finally:
            del buffer[:done]
        self._written_at = time.monotonic()

    def flush(self) -> None:
        """Everything written so far goes to the file (and the file object's own buffer)."""
        self._write_out()
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._write_out()
        finally:
            if self._owns:
                self._file.close()
            else:
                self._file.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
