"""Record ends from the bytes of one direction, on the committed captures (tshark
counted their records when they were made: tests/fixtures/*.expected.json)."""

from __future__ import annotations

import pytest

from bridge.engine.packets import classify
from bridge.ips.records import (
    APPLICATION_DATA,
    HANDSHAKE,
    TLS13,
    RecordBoundaries,
    server_hello_version,
)
from tests.support.fixtures import Fixture


def _streams(name: str) -> tuple[bytes, bytes]:
    """(client bytes, server bytes) of the capture's one connection, in order, without retransmissions."""
    segments = [s for f in Fixture(name).frames() if (s := classify(f.linktype, f.data, f.timestamp_ns)).__class__
                .__name__ == "TcpSegment"]
    client = segments[0].src, segments[0].sport
    out: dict[bool, dict[int, bytes]] = {True: {}, False: {}}
    for s in segments:
        if s.payload:
            out[(s.src, s.sport) == client].setdefault(s.seq, s.payload)
    return (b"".join(v for _, v in sorted(out[True].items())), b"".join(v for _, v in sorted(out[False].items())))


def _records(stream: bytes) -> list[tuple[int, int]]:
    """The ends, read header by header: the reference."""
    out, position = [], 0
    while position + 5 <= len(stream):
        end = position + 5 + int.from_bytes(stream[position + 3:position + 5], "big")
        out.append((end, stream[position]))
        position = end
    return out


@pytest.mark.parametrize("name", ["tls13-http1", "tls12-gcm-h2"])
@pytest.mark.parametrize("piece", [1, 3, 5, 7, 1448, 100_000])
def test_record_ends_whatever_the_segmentation(name, piece):
    client, server = _streams(name)
    for stream in (client, server):
        framer = RecordBoundaries()
        ends = [end for start in range(0, len(stream), piece) for end in framer.feed(stream[start:start + piece])]
        assert ends == _records(stream) and not framer.broken
        assert ends[0][1] == HANDSHAKE and any(kind == APPLICATION_DATA for _, kind in ends)
        assert ends[-1][0] == len(stream)  # the last segment completes the last record


def test_the_client_random_and_the_negotiated_version():
    client, server = _streams("tls13-http1")
    framer = RecordBoundaries()
    framer.feed(client[:100])
    assert framer.client_random == client[11:43]
    assert server_hello_version(server) == TLS13
    assert server_hello_version(_streams("tls12-gcm-h2")[1]) == 0x0303  # no supported_versions: the legacy field
    assert server_hello_version(server[:20]) is None  # not all here yet
    assert server_hello_version(client) is None  # a ClientHello is not a ServerHello


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n", b"\x17\x02\x00\x00\x10", b"\x17\x03\x03\xff\xff"])
def test_what_is_not_tls_breaks_the_framing(garbage):
    framer = RecordBoundaries()
    assert framer.feed(garbage) == [] and framer.broken and not framer.looks_like_tls
    assert framer.feed(b"\x17\x03\x03\x00\x01x") == []  # nothing more is framed
