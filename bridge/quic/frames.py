"""QUIC frames (RFC 9000 §19, RFC 9221's DATAGRAM): a packet's payload in, the
frames the observer uses out (CRYPTO, STREAM, RESET_STREAM, NEW_CONNECTION_ID,
CONNECTION_CLOSE, HANDSHAKE_DONE); the others are parsed to be skipped and
counted by type.  A frame that cannot be parsed raises
:class:`~bridge.errors.PacketDecodeError`: the rest of the packet cannot be
delimited (an unknown frame type has no length on the wire)."""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.errors import PacketDecodeError
from bridge.quic.packets import read_varint


@dataclass(slots=True)
class CryptoFrame:
    offset: int
    data: bytes = field(repr=False)


@dataclass(slots=True)
class StreamFrame:
    stream_id: int
    offset: int
    data: bytes = field(repr=False)
    fin: bool


@dataclass(frozen=True, slots=True)
class ResetStream:
    stream_id: int
    error_code: int
    final_size: int


@dataclass(frozen=True, slots=True)
class NewConnectionId:
    sequence: int
    connection_id: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClose:
    error_code: int
    application: bool
    reason: str


@dataclass(frozen=True, slots=True)
class HandshakeDone:
    pass


Frame = CryptoFrame | StreamFrame | ResetStream | NewConnectionId | ConnectionClose | HandshakeDone

_NAMES = {
    0x00: "padding", 0x01: "ping", 0x02: "ack", 0x03: "ack", 0x05: "stop_sending", 0x07: "new_token",
    0x10: "max_data", 0x11: "max_stream_data", 0x12: "max_streams", 0x13: "max_streams", 0x14: "data_blocked",
    0x15: "stream_data_blocked", 0x16: "streams_blocked", 0x17: "streams_blocked", 0x19: "retire_connection_id",
    0x1A: "path_challenge", 0x1B: "path_response", 0x30: "datagram", 0x31: "datagram",
}
#: frames with a fixed number of varints after the type
_VARINTS = {0x05: 2, 0x10: 1, 0x11: 2, 0x12: 1, 0x13: 1, 0x14: 1, 0x15: 2, 0x16: 1, 0x17: 1, 0x19: 1}


def parse_frames(payload: bytes, skipped: dict[str, int] | None = None) -> list[Frame]:
    """The frames of one decrypted payload; others are counted in ``skipped`` by name."""
    frames: list[Frame] = []
    position = 0
    end = len(payload)
    while position < end:
        frame_type, position = read_varint(payload, position, end)
        if frame_type == 0x00:  # PADDING: skip the run at once
            while position < end and payload[position] == 0:
                position += 1
            continue
        if 0x08 <= frame_type <= 0x0F:  # STREAM
            stream_id, position = read_varint(payload, position, end)
            offset = 0
            if frame_type & 0x04:
                offset, position = read_varint(payload, position, end)
            if frame_type & 0x02:
                length, position = read_varint(payload, position, end)
            else:
                length = end - position
            if position + length > end:
                raise PacketDecodeError("STREAM frame overruns the packet")
            if offset + length >= 1 << 62:
                raise PacketDecodeError("STREAM frame beyond the largest offset")
            frames.append(StreamFrame(stream_id, offset, payload[position:position + length], bool(frame_type & 1)))
            position += length
        elif frame_type == 0x06:  # CRYPTO
            offset, position = read_varint(payload, position, end)
            length, position = read_varint(payload, position, end)
            if position + length > end:
                raise PacketDecodeError("CRYPTO frame overruns the packet")
            frames.append(CryptoFrame(offset, payload[position:position + length]))
            position += length
        elif frame_type in (0x02, 0x03):  # ACK
            _, position = read_varint(payload, position, end)  # largest acknowledged
            _, position = read_varint(payload, position, end)  # delay
            ranges, position = read_varint(payload, position, end)
            _, position = read_varint(payload, position, end)  # first range
            if ranges > end:
                raise PacketDecodeError("ACK frame with more ranges than bytes")
            for _ in range(2 * ranges + (3 if frame_type == 0x03 else 0)):
                _, position = read_varint(payload, position, end)
            _count(skipped, "ack")
        elif frame_type == 0x04:  # RESET_STREAM
            stream_id, position = read_varint(payload, position, end)
            error, position = read_varint(payload, position, end)
            final_size, position = read_varint(payload, position, end)
            frames.append(ResetStream(stream_id, error, final_size))
        elif frame_type == 0x18:  # NEW_CONNECTION_ID
            sequence, position = read_varint(payload, position, end)
            _, position = read_varint(payload, position, end)  # retire prior to
            if position >= end:
                raise PacketDecodeError("truncated NEW_CONNECTION_ID frame")
            length = payload[position]
            if not 1 <= length <= 20 or position + 1 + length + 16 > end:
                raise PacketDecodeError("malformed NEW_CONNECTION_ID frame")
            frames.append(NewConnectionId(sequence, payload[position + 1:position + 1 + length]))
            position += 1 + length + 16
        elif frame_type in (0x1C, 0x1D):  # CONNECTION_CLOSE
            error, position = read_varint(payload, position, end)
            if frame_type == 0x1C:
                _, position = read_varint(payload, position, end)  # frame type
            length, position = read_varint(payload, position, end)
            if position + length > end:
                raise PacketDecodeError("CONNECTION_CLOSE reason overruns the packet")
            reason = payload[position:position + length].decode("utf-8", "replace")
            position += length
            frames.append(ConnectionClose(error, frame_type == 0x1D, reason))
        elif frame_type == 0x1E:
            frames.append(HandshakeDone())
        elif frame_type == 0x01:
            _count(skipped, "ping")
        elif frame_type in _VARINTS:
            for _ in range(_VARINTS[frame_type]):
                _, position = read_varint(payload, position, end)
            _count(skipped, _NAMES[frame_type])
        elif frame_type == 0x07 or frame_type == 0x31:  # NEW_TOKEN, DATAGRAM with length
            length, position = read_varint(payload, position, end)
            if position + length > end:
                raise PacketDecodeError(f"{_NAMES[frame_type]} frame overruns the packet")
            position += length
            _count(skipped, _NAMES[frame_type])
        elif frame_type == 0x30:  # DATAGRAM to the end
            position = end
            _count(skipped, "datagram")
        elif frame_type in (0x1A, 0x1B):
            if position + 8 > end:
                raise PacketDecodeError("truncated PATH_CHALLENGE/RESPONSE frame")
            position += 8
            _count(skipped, _NAMES[frame_type])
        else:
            raise PacketDecodeError(f"unknown QUIC frame type 0x{frame_type:x}")
    return frames


def _count(skipped: dict[str, int] | None, name: str) -> None:
    if skipped is not None:
        skipped[name] = skipped.get(name, 0) + 1
