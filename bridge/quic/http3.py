"""HTTP/3 (RFC 9114) seen from the side: a QUIC connection's stream data in, each
request stream out as an HTTP/1.1 request and response (:class:`Exchange`).

Frames (RFC 9114 §7): HEADERS and DATA on request streams; SETTINGS on the
control streams; the QPACK encoder streams (RFC 9204 §4.2) feed the decoders.
Header blocks are decoded by pylsqpack (the QPACK library aioquic uses), one
decoder per direction, sized by the *peer's* SETTINGS (a decoder's dynamic
table is the capacity its endpoint advertised): header blocks that arrive
before those SETTINGS, or before the encoder instructions they refer to, wait
(bounded) and are decoded when they can be.

Bodies are kept until the exchange is complete, at most ``max_body`` bytes per
message (the rest is counted in :attr:`Exchange.truncated`, never guessed).
What the IDS is shown (HTTP/1.1 or HTTP/2) is :mod:`bridge.quic.synthetic`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pylsqpack

from bridge.errors import PacketDecodeError
from bridge.quic.connection import StreamChunk
from bridge.quic.packets import read_varint
from bridge.tls.state import Direction

C2S, S2C = Direction.C2S, Direction.S2C
FRAME_DATA, FRAME_HEADERS, FRAME_SETTINGS = 0x00, 0x01, 0x04
STREAM_CONTROL, STREAM_PUSH, STREAM_ENCODER, STREAM_DECODER = 0x00, 0x01, 0x02, 0x03
SETTINGS_QPACK_MAX_TABLE_CAPACITY, SETTINGS_QPACK_BLOCKED_STREAMS = 0x01, 0x07
_MAX_FRAME = 1 << 20  # a non-DATA frame held whole
_MAX_WAITING_BLOCKS = 256


@dataclass(slots=True)
class Message:
    headers: list[tuple[bytes, bytes]] | None = None
    body: bytearray = field(default_factory=bytearray)
    truncated: int = 0
    complete: bool = False
    reset: bool = False
    gap: bool = False
    first_ns: int = 0
    last_ns: int = 0
    interim: int = 0
    trailers: int = 0


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request stream: its header fields (pseudo-headers first, as decoded) and
    bodies; rendered for the IDS by :mod:`bridge.quic.synthetic`."""

    stream_id: int
    request_headers: tuple[tuple[bytes, bytes], ...] = field(repr=False)
    request_body: bytes = field(repr=False)
    #: None: no response headers (the stream was reset, or the connection ended first)
    response_headers: tuple[tuple[bytes, bytes], ...] | None = field(repr=False)
    response_body: bytes = field(repr=False)
    method: str
    path: str
    authority: str | None
    status: int | None
    request_ns: int
    response_ns: int
    #: request and response both complete (else: reset, a gap, or the connection ended first)
    complete: bool
    truncated: int


class _Parser:
    """One direction of one stream: frames out of the byte stream."""

    __slots__ = ("buffer", "data_left", "stream_type", "broken")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.data_left = 0
        self.stream_type: int | None = None
        self.broken = False


class Http3Session:
    def __init__(self, *, max_body: int = 8 << 20) -> None:
        self.max_body = max_body
        self._parsers: dict[tuple[int, int], _Parser] = {}
        #: requests and responses by stream id
        self._messages: dict[int, tuple[Message, Message]] = {}
        self._emitted: set[int] = set()
        #: the decoder of header blocks sent in a direction (sized by the other side's SETTINGS)
        self._decoders: list[pylsqpack.Decoder | None] = [None, None]
        self._settings: list[dict[int, int] | None] = [None, None]
        self._encoder_waiting: list[bytearray] = [bytearray(), bytearray()]
        #: per direction: header blocks waiting for a decoder, in order: (stream id, block)
        self._blocks_waiting: list[list[tuple[int, bytes]]] = [[], []]
        #: per direction: streams whose header block is blocked on encoder instructions
        self._blocked: list[set[int]] = [set(), set()]
        self.errors: dict[str, int] = {}
        #: bytes held for request streams: bodies until their exchange is emitted, frames not yet whole
        self.held = 0

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    # --- input ---------------------------------------------------------------------

    def feed(self, chunk: StreamChunk) -> list[Exchange]:
        direction, stream_id = chunk.direction, chunk.stream_id
        out: list[Exchange] = []
        if stream_id & 0x02:  # unidirectional
            self._unidirectional(direction, stream_id, chunk, out)
            return out
        if stream_id & 0x01:
            self._error("server-initiated bidirectional stream")
            return out
        if stream_id in self._emitted:
            return out
        request, response = self._messages.setdefault(stream_id, (Message(), Message()))
        message = request if direction == C2S else response
        if not message.first_ns:
            message.first_ns = chunk.timestamp_ns
        message.last_ns = chunk.timestamp_ns
        parser = self._parsers.setdefault((direction, stream_id), _Parser())
        before = len(parser.buffer) + len(message.body)
        if chunk.gap:
            message.gap = parser.broken = True
        if chunk.reset:
            message.reset = True
        if chunk.data and not parser.broken:
            parser.buffer += chunk.data
            try:
                self._request_frames(direction, stream_id, parser, message)
            except PacketDecodeError as exc:
                self._error(f"HTTP/3 frames: {str(exc)[:60]}")
                parser.broken = True
        if chunk.fin:
            message.complete = not message.reset and not message.gap
            self._parsers.pop((direction, stream_id), None)
            self.held -= len(parser.buffer)
        self.held += len(parser.buffer) + len(message.body) - before
        self._ready(stream_id, out)
        return out

    def finish(self) -> list[Exchange]:
        """End of the connection: header blocks still waiting are tried without
        SETTINGS (a zero dynamic table); every exchange with a request is emitted."""
        out: list[Exchange] = []
        for direction in (C2S, S2C):
            if self._decoders[direction] is None and self._blocks_waiting[direction]:
                self._settings[direction.peer] = {}
                self._make_decoder(direction, out)
        for stream_id in sorted(self._messages):
            self._ready(stream_id, out, final=True)
        return out

    # --- streams -------------------------------------------------------------------

    def _unidirectional(self, direction: Direction, stream_id: int, chunk: StreamChunk, out: list[Exchange]) -> None:
        parser = self._parsers.setdefault((direction, stream_id), _Parser())
        if parser.broken or not chunk.data:
            return
        if chunk.gap:
            parser.broken = True
            self._error("gap in a control or QPACK stream")
            return
        parser.buffer += chunk.data
        try:
            if parser.stream_type is None:
                parser.stream_type, used = read_varint(parser.buffer, 0)
                del parser.buffer[:used]
            kind = parser.stream_type
            if kind == STREAM_CONTROL:
                for frame_type, payload in self._frames(parser):
                    if frame_type == FRAME_SETTINGS and self._settings[direction] is None:
                        self._settings[direction] = _settings(payload)
                        self._make_decoder(direction.peer, out)
            elif kind == STREAM_ENCODER:
                data = bytes(parser.buffer)
                parser.buffer.clear()
                self._encoder(direction, data, out)
            else:  # push, QPACK decoder stream, reserved types: not needed here
                parser.buffer.clear()
                parser.broken = True
        except PacketDecodeError as exc:
            if "truncated variable-length integer" not in str(exc):
                self._error(f"HTTP/3 control: {str(exc)[:60]}")
                parser.broken = True

    def _frames(self, parser: _Parser) -> list[tuple[int, bytes]]:
        """Whole frames at the front of a control stream's buffer."""
        frames = []
        buffer = parser.buffer
        while buffer:
            try:
                frame_type, at = read_varint(buffer, 0)
                length, at = read_varint(buffer, at)
            except PacketDecodeError:
                break
            if length > _MAX_FRAME:
                raise PacketDecodeError(f"HTTP/3 frame of {length} bytes")
            if at + length > len(buffer):
                break
            frames.append((frame_type, bytes(buffer[at:at + length])))
            del buffer[:at + length]
        return frames

    def _request_frames(self, direction: Direction, stream_id: int, parser: _Parser, message: Message) -> None:
        buffer = parser.buffer
        while buffer:
            if parser.data_left:
                take = min(parser.data_left, len(buffer))
                room = self.max_body - len(message.body)
                if room >= take:
                    message.body += buffer[:take]
                else:
                    message.body += buffer[:max(room, 0)]
                    message.truncated += take - max(room, 0)
                del buffer[:take]
                parser.data_left -= take
                continue
            try:
                frame_type, at = read_varint(buffer, 0)
                length, at = read_varint(buffer, at)
            except PacketDecodeError:
                return  # the frame header is not all here yet
            if frame_type == FRAME_DATA:
                del buffer[:at]
                parser.data_left = length
                continue
            if length > _MAX_FRAME:
                raise PacketDecodeError(f"HTTP/3 frame of {length} bytes")
            if at + length > len(buffer):
                return
            payload = bytes(buffer[at:at + length])
            del buffer[:at + length]
            if frame_type == FRAME_HEADERS:
                self._header_block(direction, stream_id, payload)

    # --- QPACK ---------------------------------------------------------------------

    def _make_decoder(self, direction: Direction, out: list[Exchange]) -> None:
        """The decoder of ``direction``'s header blocks, once the other side's SETTINGS are known."""
        settings = self._settings[direction.peer]
        if self._decoders[direction] is not None or settings is None:
            return
        self._decoders[direction] = pylsqpack.Decoder(settings.get(SETTINGS_QPACK_MAX_TABLE_CAPACITY, 0),
                                                      settings.get(SETTINGS_QPACK_BLOCKED_STREAMS, 0))
        waiting_encoder = bytes(self._encoder_waiting[direction])
        self._encoder_waiting[direction].clear()
        if waiting_encoder:
            self._encoder(direction, waiting_encoder, out)
        blocks, self._blocks_waiting[direction] = self._blocks_waiting[direction], []
        for stream_id, block in blocks:
            self._header_block(direction, stream_id, block)
            self._ready(stream_id, out)

    def _encoder(self, direction: Direction, data: bytes, out: list[Exchange]) -> None:
        decoder = self._decoders[direction]
        if decoder is None:
            if len(self._encoder_waiting[direction]) + len(data) > _MAX_FRAME:
                self._error("QPACK encoder stream before SETTINGS: too much")
                return
            self._encoder_waiting[direction] += data
            return
        try:
            unblocked = decoder.feed_encoder(data)
        except pylsqpack.EncoderStreamError:
            self._error("QPACK encoder stream error")
            return
        for stream_id in unblocked:
            self._blocked[direction].discard(stream_id)
            try:
                _, headers = decoder.resume_header(stream_id)
            except pylsqpack.DecompressionFailed:
                self._error("QPACK decompression failed")
                continue
            self._headers(direction, stream_id, headers)
            self._ready(stream_id, out)

    def _header_block(self, direction: Direction, stream_id: int, block: bytes) -> None:
        decoder = self._decoders[direction]
        if decoder is None:
            if len(self._blocks_waiting[direction]) >= _MAX_WAITING_BLOCKS:
                self._error("header blocks waiting for SETTINGS: too many")
                return
            self._blocks_waiting[direction].append((stream_id, block))
            return
        try:
            _, headers = decoder.feed_header(stream_id, block)
        except pylsqpack.StreamBlocked:
            self._blocked[direction].add(stream_id)
            return
        except pylsqpack.DecompressionFailed:
            self._error("QPACK decompression failed")
            return
        self._headers(direction, stream_id, headers)

    def _headers(self, direction: Direction, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        messages = self._messages.get(stream_id)
        if messages is None:
            return
        message = messages[direction]
        if direction == S2C:
            status = dict(headers).get(b":status", b"")
            if status[:1] == b"1" and message.headers is None:
                message.interim += 1
                return
        if message.headers is None:
            message.headers = headers
        else:
            message.trailers += 1

    # --- exchanges -----------------------------------------------------------------

    def _ready(self, stream_id: int, out: list[Exchange], final: bool = False) -> None:
        messages = self._messages.get(stream_id)
        if messages is None or stream_id in self._emitted:
            return
        request, response = messages
        done = lambda m: (m.complete and m.headers is not None) or m.reset or m.gap  # noqa: E731
        if not final and not (done(request) and done(response)):
            return
        if request.headers is None:
            if final:
                self._error("request stream without decodable headers")
                del self._messages[stream_id]
                self.held -= len(request.body) + len(response.body)
            return
        del self._messages[stream_id]
        self._emitted.add(stream_id)
        self.held -= len(request.body) + len(response.body)
        for direction in (C2S, S2C):
            parser = self._parsers.pop((direction, stream_id), None)
            if parser is not None:
                self.held -= len(parser.buffer)
        out.append(self._exchange(stream_id, request, response))

    def _exchange(self, stream_id: int, request: Message, response: Message) -> Exchange:
        pseudo = {k: v for k, v in (request.headers or []) if k.startswith(b":")}
        method = pseudo.get(b":method", b"GET")
        authority = pseudo.get(b":authority")
        path = pseudo.get(b":path") or (authority if method == b"CONNECT" else b"/")
        status = None
        if response.headers is not None:
            raw_status = dict(response.headers).get(b":status", b"")
            status = int(raw_status) if raw_status.isdigit() and len(raw_status) == 3 else None
        return Exchange(
            stream_id=stream_id, request_headers=tuple(request.headers or ()), request_body=bytes(request.body),
            response_headers=None if response.headers is None else tuple(response.headers),
            response_body=bytes(response.body), method=method.decode("latin-1"),
            path=(path or b"").decode("latin-1"), authority=authority.decode("latin-1") if authority else None,
            status=status, request_ns=request.first_ns, response_ns=max(response.last_ns, request.last_ns),
            complete=request.complete and response.complete and response.headers is not None,
            truncated=request.truncated + response.truncated)


def _settings(payload: bytes) -> dict[int, int]:
    settings: dict[int, int] = {}
    position = 0
    while position < len(payload) and len(settings) < 64:
        identifier, position = read_varint(payload, position)
        value, position = read_varint(payload, position)
        settings[identifier] = value
    return settings
