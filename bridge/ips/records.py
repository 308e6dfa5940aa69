"""Where the TLS records of one direction end, from the bytes in stream order.

Pure.  The inline IPS needs to know which segment carries the last byte of each
record: an endpoint can use a record only once all of it arrived (every record
is authenticated whole), so that segment is the one to hold until the record's
plaintext has a verdict, and the segments before it may pass.  Only the 5-byte
record headers are read; no payload is kept.  A header that is not TLS
(content type 20..24, major version 3, a length within RFC 8446/5246's bounds)
marks the stream ``broken``: it is not TLS and nothing more is framed.
"""

from __future__ import annotations

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
MAX_RECORD = (1 << 14) + 2048  # TLS 1.2's ciphertext bound (TLS 1.3's is 2^14 + 256)
_HELLO_PREFIX = 43  # record header, handshake header, version: the client random is bytes 11..43
PREFIX = 1024  # the first bytes kept: a ClientHello's random, a ServerHello's extensions
TLS13 = 0x0304


class RecordBoundaries:
    """Feed one direction's bytes in order; get the records that end in them."""

    __slots__ = ("_end", "_header", "_next", "_type", "broken", "offset", "prefix")

    def __init__(self) -> None:
        self.offset = 0  # bytes fed so far
        self.broken = False
        self._next = 0  # where the next record header begins
        self._header = bytearray()
        self._end = -1  # end offset of the record being read (-1: reading a header)
        self._type = 0
        self.prefix = bytearray()  # the first bytes (a ClientHello's random)

    def feed(self, data: bytes | memoryview) -> list[tuple[int, int]]:
        """(end offset, content type) of each record whose last byte is in ``data``."""
        out: list[tuple[int, int]] = []
        start = self.offset
        size = len(data)
        self.offset += size
        if len(self.prefix) < PREFIX:
            self.prefix += data[:PREFIX - len(self.prefix)]
        if self.broken:
            return out
        position = 0
        while position < size:
            if self._end < 0:
                take = min(5 - len(self._header), size - position)
                self._header += data[position:position + take]
                position += take
                if len(self._header) < 5:
                    break
                kind, major, length = self._header[0], self._header[1], (self._header[3] << 8) | self._header[4]
                if not (CHANGE_CIPHER_SPEC <= kind <= HEARTBEAT) or major != 3 or length > MAX_RECORD:
                    self.broken = True
                    return out
                self._type = kind
                self._end = self._next + 5 + length
                self._header.clear()
            remaining = self._end - (start + position)
            if remaining > size - position:
                break
            position += remaining
            out.append((self._end, self._type))
            self._next, self._end = self._end, -1
        return out

    @property
    def client_random(self) -> bytes | None:
        """The random of a ClientHello at the start of the stream, if that is what it is."""
        p = self.prefix
        if len(p) >= _HELLO_PREFIX and p[0] == HANDSHAKE and p[5] == 1:
            return bytes(p[11:43])
        return None

    @property
    def looks_like_tls(self) -> bool:
        return not self.broken and (len(self.prefix) == 0 or self.prefix[0] == HANDSHAKE)

    @property
    def server_version(self) -> int | None:
        """The version a ServerHello at the start of the stream chose (its
        supported_versions extension, else its legacy version), or None while it is
        not all here (or it is not one)."""
        return server_hello_version(bytes(self.prefix))


def server_hello_version(data: bytes) -> int | None:
    """The negotiated version in a ServerHello record at the start of ``data`` (RFC 8446 4.1.3)."""
    if len(data) < 9 or data[0] != HANDSHAKE or data[5] != 2:
        return None
    end = 5 + min((data[3] << 8) | data[4], 4 + ((data[6] << 16) | (data[7] << 8) | data[8]))
    if len(data) < end:
        return None
    try:
        legacy = (data[9] << 8) | data[10]
        position = 11 + 32
        position += 1 + data[position]  # legacy_session_id_echo
        position += 3  # cipher suite, compression
        if position + 2 > end:
            return legacy
        extensions_end = min(end, position + 2 + ((data[position] << 8) | data[position + 1]))
        position += 2
        while position + 4 <= extensions_end:
            kind, length = (data[position] << 8) | data[position + 1], (data[position + 2] << 8) | data[position + 3]
            if kind == 43 and length == 2:
                return (data[position + 4] << 8) | data[position + 5]
            position += 4 + length
        return legacy
    except IndexError:
        return None
