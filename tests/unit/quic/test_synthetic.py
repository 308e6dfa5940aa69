"""What the IDS is shown of an HTTP/3 exchange: HTTP/1.1, or HTTP/2 frames (their
structure, the HPACK literals read back, RFC 7541's integer examples)."""

from __future__ import annotations

import struct

from bridge.quic.http3 import Exchange
from bridge.quic.synthetic import PREFACE, _integer, http1, http2, pieces
from bridge.tls.state import Direction


def _exchange(body: bytes = b"", response_body: bytes = b"hello", headers=()) -> Exchange:  # type: ignore[no-untyped-def]
    request = ((b":method", b"POST" if body else b"GET"), (b":scheme", b"https"), (b":authority", b"h.example"),
               (b":path", b"/p?q=1"), (b"user-agent", b"t"), *headers)
    return Exchange(stream_id=0, request_headers=request, request_body=body,
                    response_headers=((b":status", b"200"), (b"content-type", b"text/plain")),
                    response_body=response_body, method="POST" if body else "GET", path="/p?q=1",
                    authority="h.example", status=200, request_ns=1, response_ns=2, complete=True, truncated=0)


def test_hpack_integers_rfc7541_c1():
    assert _integer(10, 5) == bytes([0x0A])  # C.1.1
    assert _integer(1337, 5) == bytes([0x1F, 0x9A, 0x0A])  # C.1.2
    assert _integer(42, 8) == bytes([0x2A])  # C.1.3


def test_http1():
    request, response, cleaned = http1(_exchange(b"x" * 10))
    assert request == (b"POST /p?q=1 HTTP/1.1\r\nHost: h.example\r\nuser-agent: t\r\nContent-Length: 10\r\n\r\n"
                       + b"x" * 10)
    assert response == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    assert cleaned == 0


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, at = [], 0
    while at < len(data):
        high, low, kind, flags, stream = struct.unpack_from("!BHBBI", data, at)
        length = (high << 16) | low
        out.append((kind, flags, stream, data[at + 9:at + 9 + length]))
        at += 9 + length
    assert at == len(data)
    return out


def _literals(block: bytes) -> list[tuple[bytes, bytes]]:
    def integer(at: int) -> tuple[int, int]:
        value = block[at] & 0x7F
        at += 1
        if value == 0x7F:
            shift = 0
            while True:
                byte = block[at]
                at += 1
                value += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
        return value, at

    fields, at = [], 0
    while at < len(block):
        assert block[at] == 0x00  # literal without indexing, new name
        length, at = integer(at + 1)
        name = block[at:at + length]
        length, at = integer(at + length)
        fields.append((name, block[at:at + length]))
        at += length
    return fields


def test_http2_stream_structure_and_fields():
    exchange = _exchange(b"b" * 40000, b"r" * 20000, headers=((b"x-long", b"v" * 20000),))
    parts = http2(exchange)
    assert [d for d, _ in parts] == [Direction.C2S, Direction.S2C, Direction.C2S, Direction.S2C]
    client = b"".join(data for d, data in parts if d == Direction.C2S)
    server = b"".join(data for d, data in parts if d == Direction.S2C)
    assert client.startswith(PREFACE)
    frames = _frames(client[len(PREFACE):])
    kinds = [k for k, _, _, _ in frames]
    assert kinds[:3] == [4, 8, 4]  # SETTINGS, WINDOW_UPDATE, SETTINGS ACK
    headers = [f for f in frames if f[0] in (1, 9)]
    assert headers[0][0] == 1 and headers[-1][0] == 9 and headers[-1][1] & 0x4  # CONTINUATION ends the block
    assert _literals(b"".join(f[3] for f in headers)) == list(exchange.request_headers)
    data = [f for f in frames if f[0] == 0]
    assert b"".join(f[3] for f in data) == exchange.request_body and data[-1][1] & 0x1
    assert all(len(f[3]) <= 16384 and f[2] in (0, 1) for f in frames)
    frames = _frames(server)
    assert [k for k, _, _, _ in frames][:3] == [4, 4, 8]
    (response,) = [f for f in frames if f[0] == 1]
    assert _literals(response[3]) == list(exchange.response_headers) and response[1] == 0x4
    assert b"".join(f[3] for f in frames if f[0] == 0) == exchange.response_body


def test_a_bodiless_request_ends_its_stream_on_headers():
    parts = pieces(_exchange(), "http2")
    frames = _frames(parts[2][1])
    assert frames[-1][0] == 1 and frames[-1][1] == 0x5  # END_HEADERS | END_STREAM
    assert [d for d, _ in pieces(_exchange(), "http1")] == [Direction.C2S, Direction.S2C]
