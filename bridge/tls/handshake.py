"""Handshake messages (RFC 8446 §4, RFC 5246 §7.4): framing across records and
the few fields a passive decryptor needs."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bridge.errors import RecordDecodeError

CLIENT_HELLO = 1
SERVER_HELLO = 2
NEW_SESSION_TICKET = 4
END_OF_EARLY_DATA = 5
ENCRYPTED_EXTENSIONS = 8
CERTIFICATE = 11
SERVER_KEY_EXCHANGE = 12
CERTIFICATE_REQUEST = 13
SERVER_HELLO_DONE = 14
CERTIFICATE_VERIFY = 15
CLIENT_KEY_EXCHANGE = 16
FINISHED = 20
KEY_UPDATE = 24
MESSAGE_HASH = 254

EXT_SERVER_NAME = 0
EXT_ALPN = 16
EXT_ENCRYPT_THEN_MAC = 22
EXT_EXTENDED_MASTER_SECRET = 23
EXT_SESSION_TICKET = 35
EXT_PRE_SHARED_KEY = 41
EXT_EARLY_DATA = 42
EXT_SUPPORTED_VERSIONS = 43

TLS12 = 0x0303
TLS13 = 0x0304

#: ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3).
HELLO_RETRY_REQUEST_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")

#: A handshake message larger than this is refused (certificate chains included).
MAX_HANDSHAKE_MESSAGE = 256 * 1024


def version_name(version: int | None) -> str | None:
    return {0x0300: "SSLv3", 0x0301: "TLSv1.0", 0x0302: "TLSv1.1", TLS12: "TLSv1.2", TLS13: "TLSv1.3"}.get(
        version or 0, None if version is None else f"0x{version:04x}"
    )


class _Reader:
    """Bounds-checked reader; every overrun becomes a RecordDecodeError."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise RecordDecodeError(f"truncated {self.what}")
        piece = self.data[self.pos : self.pos + n]
        self.pos += n
        return piece

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.uint(length_size))

    def remaining(self) -> int:
        return len(self.data) - self.pos


def _extensions(reader: _Reader) -> dict[int, bytes]:
    if not reader.remaining():
        return {}
    block = reader.vector(2)
    extensions: dict[int, bytes] = {}
    for ext_type, at, end in _walk_extensions(block, 0, len(block), reader.what):
        extensions[ext_type] = block[at:end]
    return extensions


def _walk_extensions(data: bytes, position: int, end: int, what: str) -> list[tuple[int, int, int]]:
    """(type, start, end) of each extension in ``data[position:end]``, bounds checked."""
    spans = []
    while position < end:
        if position + 4 > end:
            raise RecordDecodeError(f"truncated {what} extensions")
        ext_type = (data[position] << 8) | data[position + 1]
        at = position + 4
        position = at + ((data[position + 2] << 8) | data[position + 3])
        if position > end:
            raise RecordDecodeError(f"truncated {what} extensions")
        spans.append((ext_type, at, position))
    return spans


def _check_list(data: bytes, at: int, end: int, entry_length_size: int, entry_offset: int, what: str) -> None:
    """A vector of vectors (2-byte outer length): every length inside its bounds,
    without building anything (server_name: entries have a type byte first)."""
    if at + 2 > end:
        raise RecordDecodeError(f"truncated {what}")
    stop = at + 2 + ((data[at] << 8) | data[at + 1])
    if stop > end:
        raise RecordDecodeError(f"truncated {what} list")
    position = at + 2
    while position < stop:
        position += entry_offset
        if position + entry_length_size > stop:
            raise RecordDecodeError(f"truncated {what} list")
        length = data[position] if entry_length_size == 1 else (data[position] << 8) | data[position + 1]
        position += entry_length_size + length
        if position > stop:
            raise RecordDecodeError(f"truncated {what} list")


def _server_name(data: bytes, at: int = 0, end: int | None = None) -> str | None:
    end = len(data) if end is None else end
    _check_list(data, at, end, 2, 1, "server_name extension")
    stop = at + 2 + ((data[at] << 8) | data[at + 1])
    position = at + 2
    while position < stop:
        name_type = data[position]
        length = (data[position + 1] << 8) | data[position + 2]
        position += 3
        if name_type == 0:
            return bytes(data[position : position + length]).decode("ascii", "replace")
        position += length
    return None


def _alpn(data: bytes, at: int = 0, end: int | None = None) -> list[str]:
    end = len(data) if end is None else end
    _check_list(data, at, end, 1, 0, "ALPN extension")
    stop = at + 2 + ((data[at] << 8) | data[at + 1])
    position = at + 2
    protocols = []
    while position < stop:
        length = data[position]
        protocols.append(bytes(data[position + 1 : position + 1 + length]).decode("ascii", "replace"))
        position += 1 + length
    return protocols


def _uint16s(data: bytes, at: int, end: int) -> list[int]:
    return [(data[i] << 8) | data[i + 1] for i in range(at, end - 1, 2)]


_EARLY_DATA, _PSK = 1, 2
#: ClientHello spans (start, end) in the message bytes: session_id, cipher_suites,
#: extensions block, server_name, ALPN, supported_versions list, session_ticket.
_SPANS = struct.Struct("<14I")
_NO_SPAN = (0, 0)


class ClientHello:
    """A parsed ClientHello that holds the message bytes once (they are in the
    handshake transcript anyway) and where its fields are: the client random is
    read at once (it keys the secrets); every other field is decoded when it is
    first asked for.  :func:`parse_client_hello` checks every length, so the
    fields' decoding never fails later."""

    __slots__ = ("legacy_version", "random", "_data", "_spans", "_flags")

    def __init__(self, legacy_version: int, random: bytes, data: bytes, spans: bytes, flags: int) -> None:
        self.legacy_version = legacy_version
        self.random = random
        self._data = data
        self._spans = spans
        self._flags = flags

    def __repr__(self) -> str:
        return f"ClientHello(random={self.random.hex()}, sni={self.sni!r}, alpn={self.alpn!r})"

    def _span(self, index: int) -> tuple[int, int]:
        spans = _SPANS.unpack(self._spans)
        return spans[2 * index], spans[2 * index + 1]

    def _bytes(self, index: int) -> bytes:
        at, end = self._span(index)
        return bytes(self._data[at:end])

    @property
    def size(self) -> int:
        """Bytes held: the message (its body and what precedes it in the buffer)."""
        return len(self._data)

    @property
    def session_id(self) -> bytes:
        return self._bytes(0)

    @property
    def cipher_suites(self) -> list[int]:
        at, end = self._span(1)
        return _uint16s(self._data, at, end)

    @property
    def extensions(self) -> dict[int, bytes]:
        at, end = self._span(2)
        return {ext_type: bytes(self._data[start:stop])
                for ext_type, start, stop in _walk_extensions(self._data, at, end, "ClientHello")}

    @property
    def sni(self) -> str | None:
        at, end = self._span(3)
        return _server_name(self._data, at, end) if end else None

    @property
    def alpn(self) -> list[str]:
        at, end = self._span(4)
        return _alpn(self._data, at, end) if end else []

    @property
    def supported_versions(self) -> list[int]:
        at, end = self._span(5)
        return _uint16s(self._data, at, end)

    @property
    def offers_early_data(self) -> bool:
        return bool(self._flags & _EARLY_DATA)

    @property
    def offers_psk(self) -> bool:
        return bool(self._flags & _PSK)

    @property
    def session_ticket(self) -> bytes:
        return self._bytes(6)


def _hello_start(body: bytes | memoryview, offset: int, what: str) -> tuple[bytes, int, int, bytes, int, int]:
    """What both hellos begin with (RFC 8446 §4.1.2, §4.1.3): (the bytes, their end,
    legacy_version, random, where the session ID starts and ends)."""
    data = body if body.__class__ is bytes else bytes(body)
    end = len(data)
    if end - offset < 35:
        raise RecordDecodeError(f"truncated {what}")
    sid_at = offset + 35
    return (data, end, (data[offset] << 8) | data[offset + 1], data[offset + 2 : offset + 34], sid_at,
            sid_at + data[offset + 34])


def parse_client_hello(body: bytes | memoryview, offset: int = 0) -> ClientHello:
    """The ClientHello whose body starts at ``offset`` of ``body`` (4 for a whole
    handshake message): one pass over the bytes, every length checked, nothing
    copied but the client random."""
    data, end, legacy_version, random, sid_at, sid_end = _hello_start(body, offset, "ClientHello")
    if sid_end + 2 > end:
        raise RecordDecodeError("truncated ClientHello")
    suites_at = sid_end + 2
    suites_end = suites_at + ((data[sid_end] << 8) | data[sid_end + 1])
    if suites_end + 1 > end:
        raise RecordDecodeError("truncated ClientHello")
    position = suites_end + 1 + data[suites_end]  # compression methods
    if position > end:
        raise RecordDecodeError("truncated ClientHello")
    ext_at = ext_end = 0
    sni = alpn = versions = ticket = _NO_SPAN
    flags = 0
    if position < end:
        if position + 2 > end:
            raise RecordDecodeError("truncated ClientHello")
        ext_at = position + 2
        ext_end = ext_at + ((data[position] << 8) | data[position + 1])
        if ext_end > end:
            raise RecordDecodeError("truncated ClientHello")
        position = ext_at
        while position < ext_end:
            if position + 4 > ext_end:
                raise RecordDecodeError("truncated ClientHello extensions")
            ext_type = (data[position] << 8) | data[position + 1]
            at = position + 4
            position = at + ((data[position + 2] << 8) | data[position + 3])
            if position > ext_end:
                raise RecordDecodeError("truncated ClientHello extensions")
            if ext_type == EXT_SERVER_NAME:
                _check_list(data, at, position, 2, 1, "server_name extension")
                sni = (at, position)
            elif ext_type == EXT_ALPN:
                _check_list(data, at, position, 1, 0, "ALPN extension")
                alpn = (at, position)
            elif ext_type == EXT_SUPPORTED_VERSIONS:
                if at >= position or at + 1 + data[at] > position:
                    raise RecordDecodeError("truncated supported_versions")
                versions = (at + 1, at + 1 + data[at])
            elif ext_type == EXT_SESSION_TICKET:
                ticket = (at, position)
            elif ext_type == EXT_EARLY_DATA:
                flags |= _EARLY_DATA
            elif ext_type == EXT_PRE_SHARED_KEY:
                flags |= _PSK
    spans = _SPANS.pack(sid_at, sid_end, suites_at, suites_end, ext_at, ext_end, *sni, *alpn, *versions, *ticket)
    return ClientHello(legacy_version, random, data, spans, flags)


@dataclass(slots=True)
class ServerHello:
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suite: int
    extensions: dict[int, bytes]

    @property
    def is_hello_retry_request(self) -> bool:
        return self.random == HELLO_RETRY_REQUEST_RANDOM

    @property
    def version(self) -> int:
        """The negotiated version: supported_versions when present (RFC 8446 §4.2.1)."""
        selected = self.extensions.get(EXT_SUPPORTED_VERSIONS)
        if selected is not None and len(selected) == 2:
            return int.from_bytes(selected, "big")
        return self.legacy_version

    #: The selected ALPN protocol (ServerHello in TLS 1.2, EncryptedExtensions in 1.3).
    alpn: str | None = None

    @property
    def encrypt_then_mac(self) -> bool:
        return EXT_ENCRYPT_THEN_MAC in self.extensions

    @property
    def extended_master_secret(self) -> bool:
        return EXT_EXTENDED_MASTER_SECRET in self.extensions

    @property
    def accepts_psk(self) -> bool:
        return EXT_PRE_SHARED_KEY in self.extensions

    @property
    def will_send_ticket(self) -> bool:
        return EXT_SESSION_TICKET in self.extensions


def parse_server_hello(body: bytes | memoryview, offset: int = 0) -> ServerHello:
    """The ServerHello whose body starts at ``offset`` of ``body``: one pass, every
    length checked; its extensions (a few, small) are kept by type."""
    data, end, legacy_version, random, sid_at, sid_end = _hello_start(body, offset, "ServerHello")
    if sid_end + 3 > end:
        raise RecordDecodeError("truncated ServerHello")
    cipher = (data[sid_end] << 8) | data[sid_end + 1]
    position = sid_end + 3  # cipher suite, compression method
    extensions: dict[int, bytes] = {}
    if position < end:
        if position + 2 > end:
            raise RecordDecodeError("truncated ServerHello")
        ext_at = position + 2
        ext_end = ext_at + ((data[position] << 8) | data[position + 1])
        if ext_end > end:
            raise RecordDecodeError("truncated ServerHello")
        for ext_type, at, stop in _walk_extensions(data, ext_at, ext_end, "ServerHello"):
            extensions[ext_type] = data[at:stop]
    hello = ServerHello(legacy_version, random, data[sid_at:sid_end], cipher, extensions)
    alpn = extensions.get(EXT_ALPN)
    if alpn is not None:
        protocols = _alpn(alpn)
        hello.alpn = protocols[0] if protocols else None
    return hello


def selected_alpn(extensions: dict[int, bytes]) -> str | None:
    """The protocol a server selected in its ALPN extension, if any."""
    if EXT_ALPN not in extensions:
        return None
    protocols = _alpn(extensions[EXT_ALPN])
    return protocols[0] if protocols else None


def parse_encrypted_extensions(body: bytes) -> dict[int, bytes]:
    return _extensions(_Reader(body, "EncryptedExtensions"))


def parse_certificate(body: bytes, *, tls13: bool) -> list[bytes]:
    """DER certificates of a Certificate message, leaf first."""
    reader = _Reader(body, "Certificate")
    if tls13:
        reader.vector(1)  # certificate_request_context
    entries = _Reader(reader.vector(3), "certificate_list")
    certificates = []
    while entries.remaining():
        certificates.append(entries.vector(3))
        if tls13:
            entries.vector(2)  # per-certificate extensions
    return certificates


def parse_new_session_ticket(body: bytes, *, tls13: bool) -> bytes:
    """The opaque ticket of a NewSessionTicket message."""
    reader = _Reader(body, "NewSessionTicket")
    reader.uint(4)  # ticket_lifetime
    if tls13:
        reader.uint(4)  # ticket_age_add
        reader.vector(1)  # ticket_nonce
    return reader.vector(2)


def parse_key_update(body: bytes) -> bool:
    """True if the peer is asked to update too (update_requested)."""
    if len(body) != 1 or body[0] > 1:
        raise RecordDecodeError("malformed KeyUpdate")
    return body[0] == 1


class HandshakeMessage:
    """One handshake message: its type and its bytes (header + body, as hashed into
    the transcript), held once; the body is sliced from them when asked for."""

    __slots__ = ("msg_type", "raw")

    def __init__(self, msg_type: int, raw: bytes) -> None:
        self.msg_type = msg_type
        #: header + body, as hashed into the transcript.
        self.raw = raw

    @property
    def body(self) -> bytes:
        return self.raw[4:]


class HandshakeReader:
    """Reassembles handshake messages that span (or share) records."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def feed(self, fragment: bytes) -> list[HandshakeMessage]:
        buffer = self._buffer
        buffer += fragment
        messages = []
        position = 0
        while len(buffer) - position >= 4:
            length = int.from_bytes(buffer[position + 1 : position + 4], "big")
            if length > MAX_HANDSHAKE_MESSAGE:
                raise RecordDecodeError(f"handshake message of {length} bytes exceeds the limit")
            end = position + 4 + length
            if end > len(buffer):
                break
            raw = bytes(buffer[position:end])
            messages.append(HandshakeMessage(raw[0], raw))
            position = end
        del buffer[:position]
        return messages
