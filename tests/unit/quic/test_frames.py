"""Frame parsing (RFC 9000 §19)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from bridge.errors import PacketDecodeError
from bridge.quic.frames import (
    ConnectionClose,
    CryptoFrame,
    HandshakeDone,
    NewConnectionId,
    ResetStream,
    StreamFrame,
    parse_frames,
)
from bridge.quic.packets import encode_varint as v


def test_every_kind_of_frame():
    payload = (
        b"\x00\x00\x00" + b"\x01"  # PADDING run, PING
        + b"\x03" + v(100) + v(5) + v(1) + v(3) + v(2) + v(4) + v(1) + v(2) + v(3)  # ACK_ECN, one range
        + b"\x06" + v(0) + v(5) + b"hello"  # CRYPTO
        + b"\x0f" + v(4) + v(1000) + v(3) + b"abc"  # STREAM with offset, length, FIN
        + b"\x04" + v(8) + v(0x10C) + v(77)  # RESET_STREAM
        + b"\x18" + v(1) + v(0) + bytes([8]) + bytes(range(8)) + bytes(16)  # NEW_CONNECTION_ID
        + b"\x07" + v(3) + b"tok" + b"\x10" + v(1 << 20) + b"\x1a" + bytes(8)  # NEW_TOKEN, MAX_DATA, PATH_CHALLENGE
        + b"\x1e"  # HANDSHAKE_DONE
        + b"\x1d" + v(0x100) + v(3) + b"bye"  # CONNECTION_CLOSE (application)
        + b"\x08" + v(0) + b"to the end"  # STREAM without length: to the end of the packet
    )
    skipped: dict[str, int] = {}
    frames = parse_frames(payload, skipped)
    assert frames == [
        CryptoFrame(0, b"hello"), StreamFrame(4, 1000, b"abc", True), ResetStream(8, 0x10C, 77),
        NewConnectionId(1, bytes(range(8))), HandshakeDone(), ConnectionClose(0x100, True, "bye"),
        StreamFrame(0, 0, b"to the end", False),
    ]
    assert skipped == {"ping": 1, "ack": 1, "new_token": 1, "max_data": 1, "path_challenge": 1}


@pytest.mark.parametrize("payload", [
    b"\x21",  # an unknown frame type: the rest cannot be delimited
    b"\x06" + v(0) + v(50) + b"short",  # CRYPTO overruns the packet
    b"\x0a" + v(0) + v(9) + b"abc",  # STREAM overruns
    b"\x18" + v(1) + v(0) + bytes([21]) + bytes(40),  # a 21-byte connection ID
    b"\x02" + v(1) + v(0) + v(1 << 30) + v(0),  # more ACK ranges than bytes
])
def test_malformed_frames_raise(payload):
    with pytest.raises(PacketDecodeError):
        parse_frames(payload)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_the_decode_error(payload):
    try:
        parse_frames(payload)
    except PacketDecodeError:
        pass
