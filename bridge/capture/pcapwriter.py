"""Writing classic pcap files (little-endian, ns or µs resolution).

:func:`pcap_global_header` and :func:`pcap_record` are pure byte builders;
:class:`PcapWriter` is a thin file driver around them.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

from bridge.capture.frames import LINKTYPE_ETHERNET
from bridge.errors import BridgeError

__all__ = ["DEFAULT_SNAPLEN", "PcapWriter", "pcap_global_header", "pcap_record"]

DEFAULT_SNAPLEN = 262144
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
    """Write a pcap file record by record.

    ``target`` is a path (opened and owned) or a binary file object (not closed).
    """

    def __init__(
        self,
        target: str | os.PathLike[str] | BinaryIO,
        linktype: int = LINKTYPE_ETHERNET,
        *,
        nanosecond: bool = True,
        snaplen: int = DEFAULT_SNAPLEN,
    ) -> None:
        self._owns = isinstance(target, (str, os.PathLike))
        if self._owns:
            try:
                self._file: BinaryIO = open(os.fspath(target), "wb")  # type: ignore[arg-type]  # noqa: SIM115
            except OSError as exc:
                raise BridgeError(f"cannot create pcap {os.fspath(target)!r}: {exc.strerror or exc}") from exc
        else:
            self._file = target  # type: ignore[assignment]
        self.linktype = linktype
        self.nanosecond = nanosecond
        self.snaplen = snaplen
        self.records = 0
        self._file.write(pcap_global_header(linktype, nanosecond=nanosecond, snaplen=snaplen))

    def write(self, timestamp_ns: int, data: bytes, *, orig_len: int | None = None) -> None:
        if len(data) > self.snaplen:
            if orig_len is None:
                orig_len = len(data)
            data = data[: self.snaplen]
        self._file.write(pcap_record(timestamp_ns, data, nanosecond=self.nanosecond, orig_len=orig_len))
        self.records += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        if self._owns:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
