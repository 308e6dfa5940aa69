"""HTTP/3 → HTTP/1.1 on the committed capture, against the clients' own record;
QPACK blocked streams and SETTINGS that come late; malformed input."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings, strategies as st

from bridge.quic.connection import StreamChunk
from bridge.quic.http3 import Http3Session
from bridge.quic.synthetic import http1
from bridge.quic.packets import encode_varint as v
from bridge.tls.state import Direction
from tests.unit.quic.capture import EXPECTED, Replay, datagrams

DATAGRAMS = datagrams()


def _exchanges(chunks):
    sessions: dict[int, Http3Session] = {}
    out = []
    for number, chunk in chunks:
        session = sessions.setdefault(number, Http3Session())
        out += [(number, e) for e in session.feed(chunk)]
    for number, session in sessions.items():
        out += [(number, e) for e in session.finish()]
        assert not session.errors
    return out


def _split(message: bytes) -> tuple[bytes, bytes]:
    head, _, body = message.partition(b"\r\n\r\n")
    return head, body


def _check_against_the_clients(exchanges):
    by_connection = {n: {e.stream_id: e for m, e in exchanges if m == n} for n in (0, 1)}
    for number, client in enumerate(EXPECTED["clients"]):
        seen = by_connection[number]
        assert sorted(seen) == sorted(r["stream_id"] for r in client["requests"])
        for request in client["requests"]:
            exchange = seen[request["stream_id"]]
            assert exchange.complete and exchange.method == request["method"] and exchange.path == request["path"]
            assert exchange.status == request["status"] and exchange.authority == "quic.example.test"
            head, body = _split(http1(exchange)[0])
            assert head.startswith(f"{request['method']} {request['path']} HTTP/1.1\r\n".encode())
            assert b"\r\nHost: quic.example.test\r\n" in head + b"\r\n"
            assert hashlib.sha256(body).hexdigest() == request["request_sha256"]
            head, body = _split(http1(exchange)[1])
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and f"Content-Length: {len(body)}".encode() in head
            assert hashlib.sha256(body).hexdigest() == request["response_sha256"]


def test_requests_and_responses_as_the_clients_recorded_them():
    replay = Replay().feed(DATAGRAMS).finish()
    _check_against_the_clients(_exchanges(replay.chunks))


@settings(max_examples=20, deadline=None)
@given(st.randoms(use_true_random=False))
def test_stream_chunks_in_another_order(rnd):
    """Each stream's own order is kept (reassembly does it); streams interleave
    anyhow: header blocks before the SETTINGS or the encoder instructions they need."""
    replay = Replay().feed(DATAGRAMS).finish()
    queues: dict[tuple, list] = {}
    for number, chunk in replay.chunks:
        queues.setdefault((number, chunk.direction, chunk.stream_id), []).append((number, chunk))
    order = []
    while queues:
        key = rnd.choice(sorted(queues))
        order.append(queues[key].pop(0))
        if not queues[key]:
            del queues[key]
    _check_against_the_clients(_exchanges(order))


def _chunk(direction, stream_id, data, fin=False, gap=False, reset=False):
    return StreamChunk(Direction(direction), stream_id, data, fin, gap, 1, reset)


def test_without_settings_a_static_table_block_is_decoded_at_the_end():
    session = Http3Session()
    # HEADERS: required insert count 0, base 0; :method GET (static 17), :path / (static 1),
    # :scheme https (static 23), :authority "a" (literal with static name ref 0)
    block = bytes([0, 0, 0xC0 | 17, 0xC0 | 1, 0xC0 | 23, 0x50, 1]) + b"a"
    session.feed(_chunk(0, 0, v(1) + v(len(block)) + block, fin=True))
    assert session.feed(_chunk(1, 0, b"", fin=True)) == []  # waits for the SETTINGS
    (exchange,) = session.finish()
    assert exchange.method == "GET" and exchange.path == "/" and http1(exchange)[0].startswith(b"GET / HTTP/1.1\r\nHost: a")
    assert not exchange.complete  # no response headers


def test_a_gap_or_reset_ends_the_exchange_incomplete():
    session = Http3Session()
    session.feed(_chunk(1, 3, v(0) + v(4) + v(0) + v(0)))  # server control stream: empty SETTINGS
    block = bytes([0, 0, 0xC0 | 17, 0xC0 | 1])
    session.feed(_chunk(0, 0, v(1) + v(len(block)) + block + v(0) + v(100) + b"x" * 10))
    out = session.feed(_chunk(0, 0, b"y" * 5, gap=True, fin=True))
    out += session.feed(_chunk(1, 0, b"", fin=True, reset=True))
    (exchange,) = out
    assert not exchange.complete and http1(exchange)[0].endswith(b"x" * 10)  # bytes after the gap are not used


def test_bodies_beyond_the_limit_are_cut_and_counted():
    session = Http3Session(max_body=100)
    session.feed(_chunk(1, 3, v(0) + v(4) + v(0)))
    block = bytes([0, 0, 0xC0 | 20, 0xC0 | 1])  # :method POST
    session.feed(_chunk(0, 0, v(1) + v(len(block)) + block + v(0) + v(1000) + b"z" * 1000, fin=True))
    (exchange,) = session.feed(_chunk(1, 0, b"", fin=True, reset=True))
    assert exchange.truncated == 900 and http1(exchange)[0].endswith(b"\r\n\r\n" + b"z" * 100)
    assert b"Content-Length: 100\r\n" in http1(exchange)[0]


def test_crlf_in_a_value_is_dropped():
    session = Http3Session()
    session.feed(_chunk(1, 3, v(0) + v(4) + v(0)))
    block = bytes([0, 0, 0xC0 | 17, 0x51, 5]) + b"/a\r\nb"  # :path with CR LF
    session.feed(_chunk(0, 0, v(1) + v(len(block)) + block, fin=True))
    (exchange,) = session.feed(_chunk(1, 0, b"", fin=True, reset=True))
    assert exchange.path == "/a\r\nb" and http1(exchange)[0].startswith(b"GET /ab HTTP/1.1\r\n")
    assert http1(exchange)[2] == 1


@given(st.binary(max_size=300), st.integers(0, 15))
def test_arbitrary_stream_bytes_never_crash(data, stream_id):
    session = Http3Session()
    session.feed(_chunk(0, stream_id, data, fin=True))
    session.feed(_chunk(1, stream_id, data[::-1], fin=True))
    session.finish()
