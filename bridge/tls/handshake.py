"""Handshake messages (RFC 8446 §4, RFC 5246 §7.4): framing across records and
the few fields a passive decryptor needs."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    block = _Reader(reader.vector(2), reader.what + " extensions")
    extensions: dict[int, bytes] = {}
    while block.remaining():
        ext_type = block.uint(2)
        extensions[ext_type] = block.vector(2)
    return extensions


def _server_name(data: bytes) -> str | None:
    reader = _Reader(data, "server_name extension")
    names = _Reader(reader.vector(2), "server_name list")
    while names.remaining():
        name_type = names.uint(1)
        name = names.vector(2)
        if name_type == 0:
            return name.decode("ascii", "replace")
    return None


def _alpn(data: bytes) -> list[str]:
    reader = _Reader(data, "ALPN extension")
    names = _Reader(reader.vector(2), "ALPN list")
    protocols = []
    while names.remaining():
        protocols.append(names.vector(1).decode("ascii", "replace"))
    return protocols


@dataclass(slots=True)
class ClientHello:
    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: list[int]
    extensions: dict[int, bytes]
    sni: str | None = None
    alpn: list[str] = field(default_factory=list)
    supported_versions: list[int] = field(default_factory=list)

    @property
    def offers_early_data(self) -> bool:
        return EXT_EARLY_DATA in self.extensions

    @property
    def offers_psk(self) -> bool:
        return EXT_PRE_SHARED_KEY in self.extensions

    @property
    def session_ticket(self) -> bytes:
        return self.extensions.get(EXT_SESSION_TICKET, b"")


def parse_client_hello(body: bytes) -> ClientHello:
    reader = _Reader(body, "ClientHello")
    legacy_version = reader.uint(2)
    random = reader.take(32)
    session_id = reader.vector(1)
    suites_raw = reader.vector(2)
    cipher_suites = [int.from_bytes(suites_raw[i : i + 2], "big") for i in range(0, len(suites_raw) - 1, 2)]
    reader.vector(1)  # compression methods
    extensions = _extensions(reader)
    hello = ClientHello(legacy_version, random, session_id, cipher_suites, extensions)
    if EXT_SERVER_NAME in extensions:
        hello.sni = _server_name(extensions[EXT_SERVER_NAME])
    if EXT_ALPN in extensions:
        hello.alpn = _alpn(extensions[EXT_ALPN])
    if EXT_SUPPORTED_VERSIONS in extensions:
        versions = _Reader(extensions[EXT_SUPPORTED_VERSIONS], "supported_versions").vector(1)
        hello.supported_versions = [int.from_bytes(versions[i : i + 2], "big") for i in range(0, len(versions) - 1, 2)]
    return hello


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


def parse_server_hello(body: bytes) -> ServerHello:
    reader = _Reader(body, "ServerHello")
    legacy_version = reader.uint(2)
    random = reader.take(32)
    session_id = reader.vector(1)
    cipher = reader.uint(2)
    reader.uint(1)  # compression method
    hello = ServerHello(legacy_version, random, session_id, cipher, _extensions(reader))
    hello.alpn = selected_alpn(hello.extensions)
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


@dataclass(frozen=True, slots=True)
class HandshakeMessage:
    msg_type: int
    body: bytes
    #: header + body, as hashed into the transcript.
    raw: bytes


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
            messages.append(HandshakeMessage(raw[0], raw[4:], raw))
            position = end
        del buffer[:position]
        return messages
