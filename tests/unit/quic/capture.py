"""The committed QUIC capture (tests/fixtures/quic-h3.*, made by
tests.fixtures.make_quic_fixtures): its datagrams by connection, the client's
secrets by client random, and what the clients and tshark recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bridge.capture.pcapfile import read_capture
from bridge.engine.udp import decode_udp
from bridge.keys.keylog import read_keylog
from bridge.quic.connection import HelloSeen, QuicConnection, StreamChunk

DIRECTORY = Path(__file__).resolve().parents[2] / "fixtures"
PCAP = DIRECTORY / "quic-h3.pcap"
KEYLOG = DIRECTORY / "quic-h3.keylog"
EXPECTED = json.loads((DIRECTORY / "quic-h3.expected.json").read_text())


@dataclass(frozen=True)
class Datagram:
    connection: int  # in order of appearance
    side: int  # 0: the lower endpoint
    payload: bytes
    timestamp_ns: int


def datagrams() -> list[Datagram]:
    keys: dict[tuple, int] = {}
    out = []
    for frame in read_capture(PCAP):
        datagram = decode_udp(frame.linktype, frame.data, frame.timestamp_ns)
        assert datagram is not None
        a, b = (datagram.src, datagram.sport), (datagram.dst, datagram.dport)
        key = (min(a, b), max(a, b))
        number = keys.setdefault(key, len(keys))
        out.append(Datagram(number, 0 if a == key[0] else 1, datagram.payload, frame.timestamp_ns))
    return out


def secrets() -> dict[bytes, dict[str, bytes]]:
    by_random: dict[bytes, dict[str, bytes]] = {}
    for entry in read_keylog(KEYLOG):
        by_random.setdefault(entry.client_random, {})[entry.label] = entry.secret
    return by_random


def tshark_streams() -> dict[tuple[int, int, int], tuple[int, str]]:
    """(connection, direction 0/1, stream id) → (bytes, sha256) as tshark decrypted it."""
    return {(s["connection"], 0 if s["direction"] == "c2s" else 1, s["stream_id"]): (s["bytes"], s["sha256"])
            for s in EXPECTED["tshark_streams"]}


class Replay:
    """Datagrams through one QuicConnection per connection, secrets given when
    the ClientHello names them (``keys``: False gives none)."""

    def __init__(self, keys: bool = True, **settings) -> None:  # type: ignore[no-untyped-def]
        self.secrets = secrets() if keys else {}
        self.connections: dict[int, QuicConnection] = {}
        self.streams: dict[tuple[int, int, int], bytearray] = {}
        self.chunks: list[tuple[int, StreamChunk]] = []
        self.settings = settings

    def connection(self, number: int) -> QuicConnection:
        if number not in self.connections:
            from bridge.quic.connection import QuicSettings
            self.connections[number] = QuicConnection(QuicSettings(**self.settings))
        return self.connections[number]

    def take(self, number: int, outputs: list) -> None:
        connection = self.connection(number)
        for output in outputs:
            if isinstance(output, StreamChunk):
                self.chunks.append((number, output))
                self.streams.setdefault((number, int(output.direction), output.stream_id),
                                        bytearray()).extend(output.data)
            elif isinstance(output, HelloSeen) and output.client_random in self.secrets:
                self.take(number, connection.give_secrets(self.secrets[output.client_random]))

    def feed(self, items: list[Datagram]) -> Replay:
        for d in items:
            self.take(d.connection, self.connection(d.connection).feed(d.side, d.payload, d.timestamp_ns))
        return self

    def finish(self) -> Replay:
        for number, connection in self.connections.items():
            self.take(number, connection.finish())
        return self
