"""One QUIC connection seen from the side (sans-I/O): datagrams of either
endpoint in, handshake facts and stream data out.

The two endpoints are *sides* 0 and 1 until a client Initial authenticates
under the keys derived from its own Destination Connection ID (RFC 9001 §5.2):
its sender is the client.  Until then, and while the secrets of a packet number
space are missing, packets wait (bounded by ``max_pending`` bytes; past it the
oldest are dropped and counted).  Secrets are TLS 1.3's, by the key log labels
(``CLIENT_HANDSHAKE_TRAFFIC_SECRET``, ``CLIENT_TRAFFIC_SECRET_0``, ...) of the
client random of the ClientHello inside the client's Initial CRYPTO frames;
:meth:`QuicConnection.give_secrets` hands them over when they arrive.

Per direction and packet number space: the largest packet number (packet number
recovery), the CRYPTO stream (:class:`~bridge.quic.streams.StreamReassembly`)
and its TLS handshake messages (parsed by :mod:`bridge.tls.handshake`).  1-RTT
keys change with the key phase bit (RFC 9001 §6): the next phase's keys are
tried when the bit flips, the previous phase's for late packets.  A short
header's Destination Connection ID length is that of the IDs the peer issued
(long header Source Connection IDs, NEW_CONNECTION_ID frames): each known
length is tried, the AEAD deciding.

Output (:meth:`QuicConnection.feed`, :meth:`QuicConnection.give_secrets`):
:class:`StreamChunk` per contiguous piece of stream data, :class:`Oriented`
once the client is known, :class:`HelloSeen` with the ClientHello.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field

from bridge.errors import BridgeError, DecryptionError, PacketDecodeError, RecordDecodeError
from bridge.quic.frames import (
    ConnectionClose,
    CryptoFrame,
    HandshakeDone,
    NewConnectionId,
    ResetStream,
    StreamFrame,
    parse_frames,
)
from bridge.quic.packets import RawPacket, decode_packet_number, parse_datagram, remove_protection, short_header
from bridge.quic.protection import QUIC_SUITES, PacketKeys, initial_keys, retry_integrity_tag
from bridge.quic.streams import StreamReassembly
from bridge.quic.versions import PacketType, Version
from bridge.secrets import (
    CLIENT_EARLY_TRAFFIC_SECRET,
    CLIENT_HANDSHAKE_TRAFFIC_SECRET,
    CLIENT_TRAFFIC_SECRET_0,
    SERVER_HANDSHAKE_TRAFFIC_SECRET,
    SERVER_TRAFFIC_SECRET_0,
)
from bridge.tls import handshake as hs
from bridge.tls.ciphersuites import CipherSuite, cipher_suite
from bridge.tls.state import Direction

C2S, S2C = Direction.C2S, Direction.S2C
INITIAL, HANDSHAKE, APPLICATION = 0, 1, 2  # packet number spaces (RFC 9000 §12.3)
_SPACE = {PacketType.INITIAL: INITIAL, PacketType.HANDSHAKE: HANDSHAKE, PacketType.ZERO_RTT: APPLICATION,
          PacketType.ONE_RTT: APPLICATION}
_HANDSHAKE_LABELS = (CLIENT_HANDSHAKE_TRAFFIC_SECRET, SERVER_HANDSHAKE_TRAFFIC_SECRET)
_APPLICATION_LABELS = (CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0)
_MAX_KEY_PHASES = 1 << 16
_EXT_EARLY_DATA = 42
#: connection IDs remembered per connection (RFC 9000's active_connection_id_limit is 2..8 a side)
MAX_IDS = 64


@dataclass(frozen=True, slots=True)
class Oriented:
    """The client is known: ``client_side`` (0 or 1) sent a client Initial."""

    client_side: int


@dataclass(frozen=True, slots=True)
class HelloSeen:
    """The ClientHello was parsed: its client random names the secrets."""

    client_random: bytes


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """Contiguous data of one direction of a stream (``gap``: bytes before it are missing)."""

    direction: Direction
    stream_id: int
    data: bytes = field(repr=False)
    fin: bool
    gap: bool
    timestamp_ns: int
    reset: bool = False


Output = Oriented | HelloSeen | StreamChunk


@dataclass(slots=True)
class DirectionStats:
    packets: int = 0
    decrypted_packets: int = 0
    #: packets that did not authenticate (a wrong key, or not this connection's)
    failed_packets: int = 0
    #: packets never decrypted: their keys never came, or dropped past the pending bound
    undecrypted_packets: int = 0
    key_updates: int = 0
    stream_bytes: int = 0
    gap_bytes: int = 0
    retransmitted_bytes: int = 0
    frames_skipped: dict[str, int] = field(default_factory=dict)


class _OneRtt:
    """A direction's 1-RTT keys by key phase generation (RFC 9001 §6)."""

    __slots__ = ("generations", "current")

    def __init__(self, keys: PacketKeys) -> None:
        self.generations = [keys]
        self.current = 0

    def candidates(self, phase_bit: int) -> list[int]:
        current = self.current
        if phase_bit == current & 1:
            return [current] + ([current - 2] if current >= 2 else [])
        return [current + 1] + ([current - 1] if current >= 1 else [])

    def keys(self, generation: int) -> PacketKeys:
        while len(self.generations) <= generation:
            self.generations.append(self.generations[-1].next())
        return self.generations[generation]


@dataclass(slots=True)
class QuicSettings:
    max_pending: int = 4 << 20
    max_stream_buffer: int = 4 << 20
    max_streams: int = 10_000
    #: each stream's SHA-256 (stream_digest); False: none computed
    digest: bool = True


def _client_initial(data: bytes, packet: RawPacket) -> bool:
    """``packet`` is a client Initial: it authenticates under the keys of its own DCID."""
    if packet.packet_type is not PacketType.INITIAL or packet.version is None:
        return False
    keys = initial_keys(packet.version, packet.dcid)[0]
    try:
        unprotected = remove_protection(data, packet, keys)
        number = decode_packet_number(-1, unprotected.truncated_pn, unprotected.pn_length)
        keys.open(number, unprotected.header, unprotected.ciphertext)
    except (DecryptionError, PacketDecodeError):
        return False
    return True


def opens_connection(datagram: bytes) -> bool:
    """A datagram whose first packet is a client Initial that authenticates (RFC 9001
    §5.2): what starts a QUIC connection for an observer.  Anyone can make one, but
    it costs them what it costs us (a key derivation and an AEAD), and random bytes
    never pass."""
    try:
        packets, _ = parse_datagram(datagram)
    except PacketDecodeError:
        return False
    return bool(packets) and _client_initial(datagram, packets[0])


class QuicConnection:
    def __init__(self, settings: QuicSettings | None = None) -> None:
        self.settings = settings or QuicSettings()
        self.client_side: int | None = None
        self.version: Version | None = None
        self.client_hello: hs.ClientHello | None = None
        self.server_hello: hs.ServerHello | None = None
        self.alpn: str | None = None
        self.certificates: list[bytes] = []
        self.session_tickets = 0
        self.retry = False
        self.retry_valid: bool | None = None
        self.version_negotiation: tuple[int, ...] | None = None
        self.handshake_done = False
        self.early_data_accepted = False
        #: 0-RTT packets decrypted
        self.zero_rtt_packets = 0
        self.close: ConnectionClose | None = None
        self.suite: CipherSuite | None = None
        self.secrets: dict[str, bytes] = {}
        self.errors: dict[str, int] = {}
        self.stats = (DirectionStats(), DirectionStats())
        self.streams_dropped = 0
        #: client Initial DCIDs in order (the last one is what server Initials are keyed on)
        self._initial_dcids: list[bytes] = []
        #: the client's Initial attempts in order, (version, DCID): after a Retry or a
        #: Version Negotiation it starts its handshake over (a new ClientHello)
        self._epochs: list[tuple[int, bytes]] = []
        self._initial: dict[tuple[int, bytes], tuple[PacketKeys, PacketKeys]] = {}
        self._handshake_keys: list[PacketKeys | None] = [None, None]
        self._one_rtt: list[_OneRtt | None] = [None, None]
        self._early: PacketKeys | None = None
        #: a 1-RTT packet authenticated (the secrets are this connection's)
        self._one_rtt_ok = False
        self._largest = [[-1, -1, -1], [-1, -1, -1]]
        self._crypto = [[StreamReassembly(1 << 20, 1024) for _ in range(3)] for _ in range(2)]
        self._readers = [[hs.HandshakeReader() for _ in range(3)] for _ in range(2)]
        #: Initial CRYPTO streams per (direction, the DCID the Initial keys came from):
        #: after a Retry the client starts its handshake over under new keys
        self._initial_crypto: dict[tuple[int, tuple[int, bytes]], tuple[StreamReassembly, hs.HandshakeReader]] = {}
        self._hello_epoch = -1
        #: per direction: the lengths of the connection IDs it addresses in short headers
        self._dcid_lengths: list[set[int]] = [set(), set()]
        #: connection IDs each side issued (long header SCIDs, NEW_CONNECTION_ID), at
        #: most MAX_IDS: the engine finds a connection by them when its path changes
        self.issued: dict[bytes, Direction] = {}
        #: per direction: the connection IDs its 1-RTT packets were addressed to (at most MAX_IDS)
        self.short_header_ids: tuple[set[bytes], set[bytes]] = (set(), set())
        self._streams: dict[tuple[int, int], StreamReassembly] = {}
        self._stream_hashes: dict[tuple[int, int], hashlib._Hash] = {}
        #: (side, timestamp, datagram, packet start, packet or None for a short header)
        self._pending: deque[tuple[int, int, bytes, int, RawPacket | None]] = deque()
        self._pending_bytes = 0
        #: bytes the streams' reassembly holds ahead of holes
        self._stream_buffered = 0
        self.pending_dropped = 0
        self._out: list[Output] = []

    # --- facts ------------------------------------------------------------------

    @property
    def client_random(self) -> bytes | None:
        return self.client_hello.random if self.client_hello is not None else None

    @property
    def decrypted_any(self) -> bool:
        return any(s.decrypted_packets for s in self.stats)

    @property
    def held_bytes(self) -> int:
        """What it holds: packets waiting for keys, stream and CRYPTO data ahead of holes."""
        held = self._pending_bytes + self._stream_buffered
        if not self.handshake_done:  # CRYPTO data ahead of holes: during the handshake (bounded, small after)
            held += sum(c.buffered for row in self._crypto for c in row)
            held += sum(pair[0].buffered for pair in self._initial_crypto.values())
        return held

    @property
    def application_decrypted(self) -> bool:
        """A 1-RTT packet was decrypted (the secrets of the client random work)."""
        return self._one_rtt_ok

    @property
    def waiting(self) -> int:
        """Packets waiting for keys."""
        return len(self._pending)

    def direction(self, side: int) -> Direction:
        return C2S if side == self.client_side else S2C

    def status(self) -> tuple[str, str]:
        """(status, reason) as the flow log says them."""
        if self.client_hello is None:
            if self.version_negotiation is not None and not self.decrypted_any:
                return "unsupported", "version negotiation only"
            if self.client_side is None:
                return "no_handshake", "no client Initial with a ClientHello seen"
            return "no_handshake", "the client's Initial was seen, its ClientHello not (lost or incomplete)"
        application = self._one_rtt[0] is not None or self._one_rtt[1] is not None
        c, s = self.stats
        one_rtt_failed = c.failed_packets + s.failed_packets
        if not application:
            if not any(label in self.secrets for label in _APPLICATION_LABELS):
                return "no_keys", "secrets not available for the client random"
            if self.suite is None:
                return "partial", "handshake incomplete: no cipher suite"
        if self._applied_without_success():
            return "wrong_key", f"{one_rtt_failed} packets did not authenticate under the secrets given"
        gap = c.gap_bytes + s.gap_bytes
        if gap:
            return "gap", f"{gap} bytes of stream data missing"
        undecrypted = c.undecrypted_packets + s.undecrypted_packets + len(self._pending)
        if undecrypted:
            return "partial", f"{undecrypted} packets not decrypted (keys missing)"
        if self.errors:
            return "partial", "; ".join(f"{k} ({v})" for k, v in sorted(self.errors.items()))
        return "decrypted", ""

    def _applied_without_success(self) -> bool:
        """1-RTT keys were made from the secrets given and no packet authenticated under them."""
        return (self._one_rtt[0] is not None or self._one_rtt[1] is not None) and not self._one_rtt_ok and \
            any(s.failed_packets for s in self.stats)

    # --- input ------------------------------------------------------------------

    def feed(self, side: int, datagram: bytes, timestamp_ns: int) -> list[Output]:
        """One UDP payload sent by ``side``."""
        self._out = out = []
        self._datagram(side, datagram, timestamp_ns)
        if out and self._pending:
            self._retry_pending()
        return out

    def give_secrets(self, secrets: dict[str, bytes]) -> list[Output]:
        """Secrets of this connection's client random (all known so far)."""
        self._out = out = []
        new = {k: v for k, v in secrets.items() if self.secrets.get(k) != v}
        if not new:
            return out
        self.secrets.update(new)
        self._install_keys()
        self._retry_pending()
        return out

    def finish(self) -> list[Output]:
        """End of the connection: what still waits is counted; every stream ends."""
        self._out = out = []
        for side, _, _, _, _ in self._pending:
            self.stats[self.direction(side) if self.client_side is not None else 0].undecrypted_packets += 1
        self._pending.clear()
        self._stream_buffered = 0
        for (direction, stream_id), stream in self._streams.items():
            missing = stream.finish()
            if missing:
                self.stats[direction].gap_bytes += missing
        for direction in (C2S, S2C):
            for space in (HANDSHAKE, APPLICATION):
                missing = self._crypto[direction][space].finish()
                if missing:
                    self.stats[direction].gap_bytes += missing
        for (direction, _), (crypto, _) in self._initial_crypto.items():
            missing = crypto.finish()
            if missing:
                self.stats[direction].gap_bytes += missing
        return out

    def stream_digest(self, direction: Direction) -> str | None:
        """SHA-256 over each stream's SHA-256 in stream order: the same whatever the
        packets' order on the wire (None: no digest, ``QuicSettings.digest``)."""
        if not self.settings.digest:
            return None
        total = hashlib.sha256()
        for (d, stream_id) in sorted(self._stream_hashes):
            if d == direction:
                total.update(stream_id.to_bytes(8, "big") + self._stream_hashes[(d, stream_id)].digest())
        return total.hexdigest()

    # --- datagrams and packets ---------------------------------------------------

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def _datagram(self, side: int, data: bytes, ts: int) -> None:
        try:
            packets, short_at = parse_datagram(data)
        except PacketDecodeError as exc:
            self._error(f"malformed datagram: {str(exc)[:60]}")
            return
        for packet in packets:
            self._packet(side, data, packet, ts)
        if short_at >= 0:
            self._short(side, data, short_at, ts)

    def _wait(self, side: int, ts: int, data: bytes, start: int, packet: RawPacket | None) -> None:
        self._pending.append((side, ts, data, start, packet))
        self._pending_bytes += len(data)
        while self._pending_bytes > self.settings.max_pending and self._pending:
            dropped = self._pending.popleft()
            self._pending_bytes -= len(dropped[2])
            self.pending_dropped += 1
            if self.client_side is not None:
                self.stats[self.direction(dropped[0])].undecrypted_packets += 1

    def _retry_pending(self) -> None:
        """Keys or the orientation arrived: packets that waited are tried again, in
        arrival order, until a pass makes no progress."""
        while self._pending:
            waiting = list(self._pending)
            self._pending.clear()
            self._pending_bytes = 0
            before = len(waiting)
            for side, ts, data, start, packet in waiting:
                if packet is None:
                    self._short(side, data, start, ts)
                else:
                    self._packet(side, data, packet, ts)
            if len(self._pending) >= before:
                break

    def _packet(self, side: int, data: bytes, packet: RawPacket, ts: int) -> None:
        packet_type = packet.packet_type
        if packet_type is PacketType.VERSION_NEGOTIATION:
            self.version_negotiation = packet.supported_versions
            return
        if packet_type is PacketType.UNKNOWN_VERSION:
            self._error(f"unknown QUIC version 0x{packet.version_number:08x}")
            return
        if self.version is None:
            self.version = packet.version
        if packet_type is PacketType.RETRY:
            self._retry_packet(side, data, packet)
            return
        if self.client_side is None:
            if packet_type is not PacketType.INITIAL or not self._orient(side, data, packet, ts):
                self._wait(side, ts, data, packet.start, packet)
            return
        direction = self.direction(side)
        stats = self.stats[direction]
        if packet.scid:
            self._dcid_lengths[direction.peer].add(len(packet.scid))
            self._issue(packet.scid, direction)
        if packet_type is PacketType.INITIAL:
            candidates = self._initial_candidates(direction, packet)
        elif packet_type is PacketType.HANDSHAKE:
            keys = self._handshake_keys[direction]
            if keys is None:
                self._wait(side, ts, data, packet.start, packet)
                return
            candidates = [(b"", keys)]
        else:  # 0-RTT
            if self._early is None:  # its secret (and the suite, from the ServerHello) may come later
                self._wait(side, ts, data, packet.start, packet)
                return
            candidates = [(b"", self._early)]
        stats.packets += 1
        space = _SPACE[packet_type]
        for epoch, keys in candidates:
            try:
                unprotected = remove_protection(data, packet, keys)
                number = decode_packet_number(self._largest[direction][space], unprotected.truncated_pn,
                                              unprotected.pn_length)
                payload = keys.open(number, unprotected.header, unprotected.ciphertext)
            except (DecryptionError, PacketDecodeError):
                continue
            break
        else:
            stats.failed_packets += 1
            return
        stats.decrypted_packets += 1
        if packet_type is PacketType.ZERO_RTT:
            self.zero_rtt_packets += 1
        if number > self._largest[direction][space]:
            self._largest[direction][space] = number
        attempt = (0, b"")
        if packet_type is PacketType.INITIAL:
            assert packet.version is not None
            attempt = (packet.version.number, epoch)
            if direction == C2S and epoch not in self._initial_dcids:
                self._initial_dcids.append(epoch)
                del self._initial_dcids[:-16]
            if direction == C2S and attempt not in self._epochs:
                self._epochs.append(attempt)
                del self._epochs[:-16]
            if direction == S2C or self.server_hello is None:
                # the version in use: the client's latest attempt (after a Version Negotiation),
                # then the server's (RFC 9368: the server may answer in another compatible version)
                self.version = packet.version
        self._frames(direction, space, payload, ts, attempt)

    def _initial_candidates(self, direction: Direction, packet: RawPacket) -> list[tuple[bytes, PacketKeys]]:
        """(DCID, keys) to try: Initial keys come from the DCID of the client's first
        Initial (after a Retry: of the Initial that follows it); its later Initials
        address the server's chosen ID."""
        version = packet.version
        assert version is not None
        known = [(dcid, self._initial_keys(version, dcid)[direction]) for dcid in reversed(self._initial_dcids)]
        if direction == C2S and packet.dcid not in self._initial_dcids:
            return [(packet.dcid, self._initial_keys(version, packet.dcid)[0]), *known]
        return known

    def _initial_keys(self, version: Version, dcid: bytes) -> tuple[PacketKeys, PacketKeys]:
        """Initial keys of a DCID in the packet's version (its salt and labels)."""
        keys = self._initial.get((version.number, dcid))
        if keys is None:
            keys = self._initial[(version.number, dcid)] = initial_keys(version, dcid)
            if len(self._initial) > 16:  # a client retrying Initials with ever new DCIDs
                oldest = next(iter(self._initial))
                del self._initial[oldest]
        return keys

    def _orient(self, side: int, data: bytes, packet: RawPacket, ts: int) -> bool:
        """A client Initial authenticates under the keys of its own DCID: its sender is the client."""
        if not _client_initial(data, packet):
            return False
        self.client_side = side
        self.version = packet.version
        self._out.append(Oriented(side))
        self._packet(side, data, packet, ts)
        return True

    def _retry_packet(self, side: int, data: bytes, packet: RawPacket) -> None:
        self.retry = True
        if self._initial_dcids and packet.version is not None:
            body = data[packet.start:packet.end - 16]
            tag = retry_integrity_tag(packet.version, self._initial_dcids[-1], body)
            self.retry_valid = tag == data[packet.end - 16:packet.end]

    def _short(self, side: int, data: bytes, start: int, ts: int) -> None:
        if self.client_side is None:
            self._wait(side, ts, data, start, None)
            return
        direction = self.direction(side)
        stats = self.stats[direction]
        one_rtt = self._one_rtt[direction]
        if one_rtt is None:  # secrets, or the suite, not here yet: it waits (bounded), counted at the end
            self._wait(side, ts, data, start, None)
            return
        stats.packets += 1
        lengths = self._dcid_lengths[direction] or {0, 8, 16, 20}
        largest = self._largest[direction][APPLICATION]
        for length in sorted(lengths):
            try:
                packet = short_header(data, start, length)
                unprotected = remove_protection(data, packet, one_rtt.generations[0])
            except PacketDecodeError:
                continue
            number = decode_packet_number(largest, unprotected.truncated_pn, unprotected.pn_length)
            for generation in one_rtt.candidates(unprotected.key_phase):
                if generation < 0 or generation > one_rtt.current + 1 or generation >= _MAX_KEY_PHASES:
                    continue
                keys = one_rtt.keys(generation)
                try:
                    payload = keys.open(number, unprotected.header, unprotected.ciphertext)
                except DecryptionError:
                    continue
                if generation > one_rtt.current:
                    one_rtt.current = generation
                    stats.key_updates += 1
                stats.decrypted_packets += 1
                self._one_rtt_ok = True
                used = self.short_header_ids[direction]
                if len(used) < MAX_IDS:
                    used.add(packet.dcid)
                if number > largest:
                    self._largest[direction][APPLICATION] = number
                self._frames(direction, APPLICATION, payload, ts, (0, b""))
                return
        stats.failed_packets += 1

    def _issue(self, connection_id: bytes, direction: Direction) -> None:
        if connection_id not in self.issued and len(self.issued) < MAX_IDS:
            self.issued[connection_id] = direction

    def sender_of(self, datagram: bytes) -> Direction | None:
        """Who sent a short header datagram, by the connection ID it is addressed to
        (the other side issued it); None if no issued ID matches."""
        if len(datagram) < 2:
            return None
        for length in sorted(self._dcid_lengths[C2S] | self._dcid_lengths[S2C]):
            issuer = self.issued.get(datagram[1:1 + length])
            if issuer is not None:
                return issuer.peer
        return None

    # --- frames --------------------------------------------------------------------

    def _frames(self, direction: Direction, space: int, payload: bytes, ts: int, epoch: tuple[int, bytes]) -> None:
        stats = self.stats[direction]
        try:
            frames = parse_frames(payload, stats.frames_skipped)
        except PacketDecodeError as exc:
            self._error(f"malformed frames: {str(exc)[:60]}")
            return
        for frame in frames:
            kind = frame.__class__
            if kind is StreamFrame:
                if space == APPLICATION:
                    self._stream(direction, frame, ts)  # type: ignore[arg-type]
                else:
                    self._error("STREAM frame outside 0-RTT/1-RTT")
            elif kind is CryptoFrame:
                self._crypto_frame(direction, space, frame, epoch)  # type: ignore[arg-type]
            elif kind is NewConnectionId:
                # IDs a side issues are what the other addresses
                self._dcid_lengths[direction.peer].add(len(frame.connection_id))  # type: ignore[union-attr]
                self._issue(frame.connection_id, direction)  # type: ignore[union-attr]
            elif kind is ResetStream:
                self._reset(direction, frame, ts)  # type: ignore[arg-type]
            elif kind is ConnectionClose:
                self.close = frame  # type: ignore[assignment]
            elif kind is HandshakeDone:
                self.handshake_done = True

    def _stream(self, direction: Direction, frame: StreamFrame, ts: int) -> None:
        key = (direction, frame.stream_id)
        stream = self._streams.get(key)
        if stream is None:
            if len(self._streams) >= self.settings.max_streams:
                self.streams_dropped += 1
                self.stats[direction].gap_bytes += len(frame.data)
                return
            stream = self._streams[key] = StreamReassembly(self.settings.max_stream_buffer)
            if self.settings.digest:
                self._stream_hashes[key] = hashlib.sha256()
        gaps, gap_bytes, retransmitted, done = stream.gaps, stream.gap_bytes, stream.retransmitted_bytes, stream.complete
        buffered = stream.buffered
        data = stream.add(frame.offset, frame.data, frame.fin)
        self._stream_buffered += stream.buffered - buffered
        stats = self.stats[direction]
        stats.retransmitted_bytes += stream.retransmitted_bytes - retransmitted
        stats.gap_bytes += stream.gap_bytes - gap_bytes
        gap = stream.gaps > gaps
        fin = stream.complete and not done
        if data or fin:
            stats.stream_bytes += len(data)
            if self.settings.digest:
                self._stream_hashes[key].update(data)
            self._out.append(StreamChunk(direction, frame.stream_id, data, fin, gap, ts))

    def _reset(self, direction: Direction, frame: ResetStream, ts: int) -> None:
        stream = self._streams.get((direction, frame.stream_id))
        if stream is not None and stream.complete:
            return
        self._out.append(StreamChunk(direction, frame.stream_id, b"", True, False, ts, reset=True))

    def _crypto_frame(self, direction: Direction, space: int, frame: CryptoFrame, epoch: tuple[int, bytes]) -> None:
        if space == INITIAL:
            pair = self._initial_crypto.get((direction, epoch))
            if pair is None:
                if len(self._initial_crypto) >= 32:
                    self._error("too many Initial key epochs")
                    return
                pair = self._initial_crypto[(direction, epoch)] = (StreamReassembly(1 << 20, 1024),
                                                                   hs.HandshakeReader())
            crypto, reader = pair
        else:
            crypto, reader = self._crypto[direction][space], self._readers[direction][space]
        data = crypto.add(frame.offset, frame.data)
        if not data:
            return
        try:
            messages = reader.feed(data)
        except RecordDecodeError as exc:
            self._error(f"handshake: {str(exc)[:60]}")
            return
        for message in messages:
            try:
                self._handshake_message(direction, space, message, epoch)
            except (RecordDecodeError, BridgeError) as exc:
                self._error(f"handshake message {message.msg_type}: {str(exc)[:60]}")

    def _handshake_message(self, direction: Direction, space: int, message: hs.HandshakeMessage,
                           epoch: tuple[int, bytes]) -> None:
        kind = message.msg_type
        if kind == 1 and direction == C2S:  # ClientHello: the one of the latest Initial keys (after a Retry)
            index = self._epochs.index(epoch) if epoch in self._epochs else -1
            if self.client_hello is not None and index <= self._hello_epoch:
                return
            hello = hs.parse_client_hello(message.body)
            self._hello_epoch = index
            if self.client_hello is None or hello.random != self.client_hello.random:
                self.client_hello = hello
                self._out.append(HelloSeen(hello.random))
        elif kind == 2 and direction == S2C and self.server_hello is None:  # ServerHello
            self.server_hello = hs.parse_server_hello(message.body)
            suite = cipher_suite(self.server_hello.cipher_suite)
            if suite is None or suite.code not in QUIC_SUITES:
                self._error(f"cipher suite 0x{self.server_hello.cipher_suite:04x} not usable by QUIC")
            else:
                self.suite = suite
                self._install_keys()
        elif kind == 8 and direction == S2C:  # EncryptedExtensions
            extensions = hs.parse_encrypted_extensions(message.body)
            self.alpn = hs.selected_alpn(extensions)
            self.early_data_accepted = _EXT_EARLY_DATA in extensions
        elif kind == 11 and direction == S2C and not self.certificates:
            self.certificates = hs.parse_certificate(message.body, tls13=True)
        elif kind == 4 and direction == S2C:  # NewSessionTicket
            self.session_tickets += 1

    # --- keys -------------------------------------------------------------------------

    def _install_keys(self) -> None:
        version = self.version
        if version is None:
            return
        suite = self.suite
        secrets = self.secrets
        for direction, label in zip((C2S, S2C), _HANDSHAKE_LABELS):
            if self._handshake_keys[direction] is None and suite is not None and label in secrets:
                self._handshake_keys[direction] = self._keys(version, suite, secrets[label])
        if self._early is None and CLIENT_EARLY_TRAFFIC_SECRET in secrets and suite is not None:
            self._early = self._keys(version, suite, secrets[CLIENT_EARLY_TRAFFIC_SECRET])
        if suite is None:
            return
        for direction, label in zip((C2S, S2C), _APPLICATION_LABELS):
            if self._one_rtt[direction] is None and label in secrets:
                keys = self._keys(version, suite, secrets[label])
                if keys is not None:
                    self._one_rtt[direction] = _OneRtt(keys)

    def _keys(self, version: Version, suite: CipherSuite, secret: bytes) -> PacketKeys | None:
        if len(secret) != suite.hash_length:
            self._error("secret length does not match the cipher suite")
            return None
        return PacketKeys(version, suite, secret)
