"""What an IDS is shown of an HTTP/3 exchange (:class:`~bridge.quic.http3.Exchange`):
the byte streams of a synthetic cleartext TCP connection, as (direction, bytes)
pieces in the order they are sent.

* :func:`http1` (the default): one HTTP/1.1 request and its response.  The
  pseudo-headers become the request line / status line and ``Host``; framing
  fields (Content-Length, Transfer-Encoding, Connection, Keep-Alive) are replaced by
  a Content-Length of the body as carried; CR, LF and NUL in names or values (not
  valid in HTTP/3 either) are dropped and counted.  Suricata and Zeek parse it.
* :func:`http2`: HTTP/2 with prior knowledge (RFC 9113 §3.3) on stream 1: the
  preface and SETTINGS of both sides (initial windows at their maximum, and the
  connection window opened, so no flow control stops a body), HEADERS (+
  CONTINUATION) with the fields as HPACK literals without indexing (RFC 7541 §6.2.2,
  no Huffman: a decoder needs no state), DATA frames of at most 16,384 bytes.  The
  header fields pass as HTTP/3 carried them (lower-case names, pseudo-headers
  first; connection-specific fields dropped).  Suricata parses it; Zeek has no
  HTTP/2 analyzer.
"""

from __future__ import annotations

import http
import struct

from bridge.quic.http3 import Exchange
from bridge.tls.state import Direction

C2S, S2C = Direction.C2S, Direction.S2C
Pieces = list[tuple[Direction, bytes]]
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"host", b"keep-alive"})
_H2_DROPPED = frozenset({b"connection", b"transfer-encoding", b"keep-alive", b"proxy-connection", b"upgrade"})


def _clean(value: bytes, counter: list[int]) -> bytes:
    if b"\r" in value or b"\n" in value or b"\x00" in value:
        counter[0] += 1
        return value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
    return value


def http1(exchange: Exchange) -> tuple[bytes, bytes, int]:
    """(request, response, fields cleaned) as HTTP/1.1; the response is empty
    without response headers."""
    cleaned = [0]
    method = exchange.method.encode("latin-1")
    path = exchange.path.encode("latin-1") or b"/"
    head = [method + b" " + _clean(path, cleaned) + b" HTTP/1.1"]
    if exchange.authority:
        head.append(b"Host: " + _clean(exchange.authority.encode("latin-1"), cleaned))
    head += _fields(exchange.request_headers, cleaned)
    body = exchange.request_body
    if body or method in (b"POST", b"PUT", b"PATCH"):
        head.append(b"Content-Length: " + str(len(body)).encode())
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    response = b""
    if exchange.response_headers is not None:
        status = exchange.status
        try:
            reason = http.HTTPStatus(status).phrase.encode() if status else b"Unknown"
        except ValueError:
            reason = b"Unknown"
        head = [b"HTTP/1.1 " + (str(status).encode() if status else b"500") + b" " + reason]
        head += _fields(exchange.response_headers, cleaned)
        head.append(b"Content-Length: " + str(len(exchange.response_body)).encode())
        response = b"\r\n".join(head) + b"\r\n\r\n" + exchange.response_body
    return request, response, cleaned[0]


def _fields(headers: tuple[tuple[bytes, bytes], ...], cleaned: list[int]) -> list[bytes]:
    return [_clean(name, cleaned) + b": " + _clean(value, cleaned) for name, value in headers
            if not name.startswith(b":") and name.lower() not in _FRAMING]


# --- HTTP/2 (RFC 9113) ----------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x4, 0x8, 0x9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
MAX_FRAME = 16384
_MAX_WINDOW = (1 << 31) - 1
_FRAME = struct.Struct("!BHBBI")  # length (24 bits: high byte + 16), type, flags, stream id


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _FRAME.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2)."""
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def _headers(stream_id: int, block: bytes, end_stream: bool) -> bytes:
    pieces = [block[i:i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)] or [b""]
    out = [frame(HEADERS, (END_STREAM if end_stream else 0) | (END_HEADERS if len(pieces) == 1 else 0),
                 stream_id, pieces[0])]
    for index, piece in enumerate(pieces[1:], 1):
        out.append(frame(CONTINUATION, END_HEADERS if index == len(pieces) - 1 else 0, stream_id, piece))
    return b"".join(out)


def _data(stream_id: int, body: bytes) -> bytes:
    chunks = [body[i:i + MAX_FRAME] for i in range(0, len(body), MAX_FRAME)]
    return b"".join(frame(DATA, END_STREAM if i == len(chunks) - 1 else 0, stream_id, chunk)
                    for i, chunk in enumerate(chunks))


def _block(headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    pseudo = [(n, v) for n, v in headers if n.startswith(b":")]
    regular = [(n.lower(), v) for n, v in headers if not n.startswith(b":") and n.lower() not in _H2_DROPPED]
    return b"".join(hpack_literal(n, v) for n, v in pseudo + regular)


def http2(exchange: Exchange) -> Pieces:
    """The exchange as an HTTP/2 connection with one stream."""
    settings = frame(SETTINGS, 0, 0, struct.pack("!HI", 0x4, _MAX_WINDOW))  # SETTINGS_INITIAL_WINDOW_SIZE
    window = frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", _MAX_WINDOW - 65535))
    request_headers = exchange.request_headers or ((b":method", b"GET"), (b":path", b"/"))
    request = _headers(1, _block(request_headers), not exchange.request_body)
    if exchange.request_body:
        request += _data(1, exchange.request_body)
    pieces: Pieces = [
        (C2S, PREFACE + settings + window),
        (S2C, settings + frame(SETTINGS, ACK, 0) + window),
        (C2S, frame(SETTINGS, ACK, 0) + request),
    ]
    if exchange.response_headers is not None:
        response = _headers(1, _block(exchange.response_headers), not exchange.response_body)
        if exchange.response_body:
            response += _data(1, exchange.response_body)
        pieces.append((S2C, response))
    return pieces


def pieces(exchange: Exchange, protocol: str) -> Pieces:
    """What the synthetic connection carries: ``protocol`` "http1" or "http2"."""
    if protocol == "http2":
        return http2(exchange)
    request, response, _ = http1(exchange)
    return [(C2S, request)] + ([(S2C, response)] if response else [])
