"""TLS record framing (RFC 8446 §5.1, RFC 5246 §6.2): a byte stream in, records out."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.errors import RecordDecodeError

CONTENT_CHANGE_CIPHER_SPEC = 20
CONTENT_ALERT = 21
CONTENT_HANDSHAKE = 22
CONTENT_APPLICATION_DATA = 23
CONTENT_HEARTBEAT = 24
CONTENT_TYPES = frozenset({20, 21, 22, 23, 24})

#: 2^14 plaintext + 2048 expansion (RFC 5246 §6.2.3); TLS 1.3 allows only +256.
MAX_RECORD_LENGTH = 2**14 + 2048
HEADER_LENGTH = 5


@dataclass(slots=True)
class Record:
    content_type: int
    version: int
    fragment: bytes
    #: Offset of the record's first byte in its direction's byte stream.
    stream_offset: int = 0
    #: Order of arrival among both directions' records, and capture time (set by the connection).
    arrival: int = 0
    timestamp_ns: int = 0
    #: When it began to wait for secrets (the connection's clock), if it did.
    held_at: float = 0.0


def looks_like_sslv2_hello(data: bytes) -> bool:
    """An SSLv2-style (or SSLv2-compatible) ClientHello: 2-byte length with the
    top bit set, then message type 1 (RFC 5246 appendix E.2)."""
    return len(data) >= 3 and data[0] & 0x80 != 0 and data[2] == 1


def looks_like_tls(data: bytes) -> bool:
    """True if ``data`` starts like a TLS record (type, 3.x version)."""
    return len(data) >= 3 and data[0] in CONTENT_TYPES and data[1] == 3 and data[2] <= 4


class RecordReader:
    """Incremental record framer for one direction of one connection."""

    __slots__ = ("_buffer", "_offset", "_need")

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Stream offset of ``_buffer[0]``.
        self._offset = 0
        #: Bytes the buffer must hold before the next record can complete.
        self._need = HEADER_LENGTH

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def boundary(self) -> tuple[bytes, int]:
        """Where the record being read ends: (its header's first bytes when fewer
        than 5 are here, else b""; the bytes still to come until it is complete,
        0 while its header is incomplete)."""
        size = len(self._buffer)
        if size < HEADER_LENGTH:
            return bytes(self._buffer), 0
        return b"", self._need - size

    def pending_bytes(self) -> bytes:
        """The bytes of the record not yet complete."""
        return bytes(self._buffer)

    def hand_over(self) -> None:
        """Another framer takes over from :meth:`pending_bytes`'s bytes on (they are
        counted by :meth:`skip` when it reports records)."""
        self._buffer = bytearray()
        self._need = HEADER_LENGTH

    def skip(self, size: int) -> None:
        """``size`` bytes of whole records, from the stream's current offset, were
        framed elsewhere (only when nothing is buffered)."""
        assert not self._buffer
        self._offset += size

    def feed(self, data: bytes) -> list[Record]:
        """Add stream bytes; return every record now complete.  Raises
        :class:`RecordDecodeError` when the stream is not (or no longer) TLS."""
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []  # the common case: a segment in the middle of a record
        elif len(data) < self._need:
            buffer += data
            return []
        else:
            # Nothing buffered (the compiled path's chunks end where records end): the
            # records are read from the bytes given, each copied once, the rest kept.
            buffer = data  # type: ignore[assignment]
        records: list[Record] = []
        position = 0
        end = len(buffer)
        while end - position >= HEADER_LENGTH:
            content_type = buffer[position]
            if content_type not in CONTENT_TYPES or buffer[position + 1] != 3:
                if position == 0 and self._offset == 0 and looks_like_sslv2_hello(buffer):
                    raise RecordDecodeError("SSLv2-style ClientHello is not supported")
                raise RecordDecodeError(
                    f"not a TLS record at stream offset {self._offset + position} "
                    f"(type {content_type}, version {buffer[position + 1]}.{buffer[position + 2]})"
                )
            length = (buffer[position + 3] << 8) | buffer[position + 4]
            if length > MAX_RECORD_LENGTH:
                raise RecordDecodeError(f"record length {length} exceeds the TLS maximum")
            if end - position < HEADER_LENGTH + length:
                self._need = HEADER_LENGTH + length
                break
            version = (buffer[position + 1] << 8) | buffer[position + 2]
            start = position + HEADER_LENGTH
            records.append(
                Record(content_type, version, bytes(buffer[start : start + length]), self._offset + position)
            )
            position = start + length
        else:
            self._need = HEADER_LENGTH
        if buffer is data:
            if position < end:
                self._buffer += data[position:]
            self._offset += position
        elif position:
            del buffer[:position]
            self._offset += position
        return records
