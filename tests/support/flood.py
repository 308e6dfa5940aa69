"""A ClientHello flood, as an attacker sends one: per connection a SYN and one real
ClientHello (curl's, taken from a committed capture), never answered, each from its
own source address and port with its own client random; and the real connections
of the committed captures interleaved in it.

Frames are built from the fixture's own frames (Ethernet, IPv4, TCP with
timestamps): only the source address, the source port, the sequence numbers and
the client random change, and the IPv4 and TCP checksums are computed anew, so
tshark reads the flood as it reads a real capture.  Used by ``bench/bench_flood.py``
(a million connections) and by ``tests/test_decrypt_flood.py`` (tens of thousands).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from bridge.capture.frames import LINKTYPE_ETHERNET, Frame
from tests.support.fixtures import Fixture

#: Where the flood's ClientHello comes from: curl's, TLS 1.3, in a committed capture.
SOURCE = Fixture("tls13-http1")
_ETH, _IP = 14, 20
#: The flood's servers (the per-server counts of its summary), port 8443.
SERVERS = (bytes([198, 51, 100, 10]), bytes([198, 51, 100, 11]), bytes([198, 51, 100, 12]))
SERVER_PORT = 8443


def _frame(timestamp_ns: int, data: bytes) -> Frame:
    return Frame(timestamp_ns, LINKTYPE_ETHERNET, data, len(data))


def _checksum(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _templates() -> tuple[bytes, bytes]:
    """The fixture's SYN and the frame that carries its ClientHello."""
    frames = SOURCE.frames()
    syn = frames[0].data
    hello = next(frame.data for frame in frames if len(frame.data) > 66 + 6 and frame.data[66] == 22
                 and frame.data[71] == 1)
    return syn, hello


class Flood:
    """Builds the flood's frames; ``hello_bytes`` is the size of its ClientHello message."""

    def __init__(self) -> None:
        self._syn, self._hello = _templates()
        tcp_at = _ETH + (self._hello[_ETH] & 0x0F) * 4
        self._tcp_at = tcp_at
        self._payload_at = tcp_at + (self._hello[tcp_at + 12] >> 4) * 4
        self.hello_bytes = len(self._hello) - self._payload_at - 5

    def _frame(self, template: bytes, src: bytes, dst: bytes, sport: int, seq: int, random: bytes | None) -> bytes:
        frame = bytearray(template)
        ip = _ETH
        tcp = self._tcp_at
        frame[ip + 12 : ip + 16] = src
        frame[ip + 16 : ip + 20] = dst
        frame[ip + 10 : ip + 12] = b"\0\0"
        frame[ip + 10 : ip + 12] = struct.pack("!H", _checksum(bytes(frame[ip : ip + _IP])))
        struct.pack_into("!HHI", frame, tcp, sport, SERVER_PORT, seq)
        if random is not None:
            # record header (5) + handshake header (4) + legacy_version (2)
            frame[self._payload_at + 11 : self._payload_at + 43] = random
        frame[tcp + 16 : tcp + 18] = b"\0\0"
        segment = bytes(frame[tcp:])
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
        frame[tcp + 16 : tcp + 18] = struct.pack("!H", _checksum(pseudo + segment))
        return bytes(frame)

    def connection(self, index: int, timestamp_ns: int) -> tuple[Frame, Frame]:
        """Connection ``index``: its SYN and its ClientHello, 10 µs apart."""
        host, port = divmod(index, 64_000)
        src = bytes([10, 64 + (host >> 16) % 64, (host >> 8) & 0xFF, host & 0xFF])
        sport = 1024 + port
        dst = SERVERS[index % len(SERVERS)]
        seq = (index * 2654435761) & 0xFFFFFFFF
        random = os.urandom(32)
        return (
            _frame(timestamp_ns, self._frame(self._syn, src, dst, sport, seq, None)),
            _frame(timestamp_ns + 10_000, self._frame(self._hello, src, dst, sport, seq + 1, random)),
        )

    def frames(self, count: int, *, start_ns: int, rate: float) -> Iterator[Frame]:
        """``count`` connections, ``rate`` new connections per second of capture time."""
        step = int(1e9 / rate)
        for index in range(count):
            yield from self.connection(index, start_ns + index * step)


def mixed(flood: Iterable[Frame], real: list[list[Frame]], *, every: int) -> Iterator[Frame]:
    """The flood with the real connections' frames interleaved: one real frame
    after every ``every`` flood frames, each real connection's frames in order,
    their timestamps moved onto the flood's clock (relative gaps kept, at least
    the flood's)."""
    queue = [frame for connection in real for frame in connection]
    position = 0
    offset: int | None = None
    last_ns = 0
    for count, frame in enumerate(flood, 1):
        yield frame
        last_ns = frame.timestamp_ns
        if count % every == 0 and position < len(queue):
            real_frame = queue[position]
            if offset is None:
                offset = last_ns - real_frame.timestamp_ns
            timestamp = max(real_frame.timestamp_ns + offset, last_ns)
            offset = timestamp - real_frame.timestamp_ns
            position += 1
            yield Frame(timestamp, real_frame.linktype, real_frame.data, real_frame.orig_len)
    for real_frame in queue[position:]:
        timestamp = max(real_frame.timestamp_ns + (offset or 0), last_ns)
        yield Frame(timestamp, real_frame.linktype, real_frame.data, real_frame.orig_len)


def write_pcap(path: Path, frames: Iterable[Frame]) -> int:
    """A little-endian, nanosecond pcap of Ethernet frames; returns how many."""
    count = 0
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        pack = struct.Struct("<IIII").pack
        buffer = []
        for frame in frames:
            seconds, nanoseconds = divmod(frame.timestamp_ns, 1_000_000_000)
            buffer.append(pack(seconds, nanoseconds, len(frame.data), len(frame.data)))
            buffer.append(frame.data)
            count += 1
            if len(buffer) >= 8192:
                out.write(b"".join(buffer))
                buffer.clear()
        out.write(b"".join(buffer))
    return count
