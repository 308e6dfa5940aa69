"""Decrypted connections as synthetic cleartext TCP connections (sans-I/O).

Suricata and Zeek cannot decrypt TLS, so every decrypted connection is replayed
to them as a plain TCP connection carrying the plaintext, as if the server had
spoken e.g. HTTP without TLS.  :class:`SyntheticFlows` takes the decryptor's
events (:class:`~bridge.engine.events.PlaintextData`,
:class:`~bridge.engine.events.FlowFinished`) and returns complete Ethernet frames
in bursts (:class:`FrameBurst`: the frames one event made, one timestamp; a
:class:`SegmentBurst`: the segments of one or more consecutive plaintexts of a
direction, each at its own time; no object per frame), or one by one
(:class:`OutputFrame`, :meth:`SyntheticFlows.handle`); writing them to an
interface or a pcap is a driver's job.  :meth:`SyntheticFlows.bursts_all` takes
an engine run's events at once: the frames are the same, made in fewer calls.

Per synthetic connection:

* on its first plaintext: the three-way handshake (SYN, SYN-ACK, ACK), ISNs
  derived deterministically from the flow (:meth:`SyntheticFlows.initial_sequence`);
* per plaintext event: MSS-sized data segments (PSH|ACK on the last one, ACK
  otherwise), then one pure ACK from the peer acknowledging them all, as a
  receiver's delayed ACK does (``ack_each_segment``: one after every segment), so
  an IDS stream engine sees every byte acknowledged;
* at the end: RST|ACK from the client if the original connection was reset,
  otherwise FIN|ACK / ACK / FIN|ACK / ACK; :meth:`SyntheticFlows.describe` then
  names the synthetic connection for the flow log's ``synthetic`` field
  (``None`` for connections without plaintext, which are never emitted).

Same addresses and ports as the original connection (the server port optionally
rewritten), marker MACs and an optional 802.1Q tag.  Only a few integers are kept
per open connection; no payload is buffered.

The per-byte work (segmenting, headers, the Internet checksum) is compiled:
:mod:`bridge.reinject._segments` (C, see its header), behind :meth:`SyntheticFlows._frame`
and :meth:`SyntheticFlows._plaintext`; the connection state stays here.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.capture import _records
from bridge.reinject import _segments

from bridge.engine.events import FlowFinished, FlowInfo, PlaintextData
from bridge.engine.packets import ACK, FIN, PSH, RST, SYN, format_endpoint
from bridge.tls.state import Direction

__all__ = [
    "FrameBurst",
    "OutputFrame",
    "SegmentBurst",
    "SyntheticFlows",
    "SyntheticOptions",
    "SyntheticStats",
    "internet_checksum",
    "format_mac",
]

_MOD32 = 0xFFFFFFFF
_WINDOW = 65535
_TTL = 64
_PROTO_TCP = 6
_IP4_HEADER = 20
_IP6_HEADER = 40
_TCP_HEADER = 20
_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = 0x8100



def internet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of ``data`` (the value to store, big-endian, in the field).

    Odd lengths are padded with a zero byte.  Verifying: the checksum of data
    that includes a correct checksum field is 0.
    """
    return _segments.checksum(data)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True, slots=True)
class SyntheticOptions:
    #: IP MTU of the output; MSS = mtu - IP header - 20 (jumbo up to 65535)
    mtu: int = 1500
    #: rewrite the server port (e.g. 443 -> 80); None keeps the original
    server_port: int | None = None
    #: locally administered marker MAC of client-side frames
    source_mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    #: MAC of server-side frames
    server_mac: bytes = b"\x02\x00\x00\x00\x00\x02"
    #: add an 802.1Q tag with this VLAN id as a marker
    vlan: int | None = None
    #: mixed into the ISN derivation (different seeds, different sequence spaces)
    isn_seed: int = 0
    #: the peer acknowledges every data segment (else once per plaintext event, as a delayed ACK)
    ack_each_segment: bool = False

    def __post_init__(self) -> None:
        if not 68 <= self.mtu <= 65535:
            raise ValueError(f"mtu must be within 68..65535, got {self.mtu}")
        if self.server_port is not None and not 1 <= self.server_port <= 65535:
            raise ValueError(f"server_port must be within 1..65535, got {self.server_port}")
        for name in ("source_mac", "server_mac"):
            mac = getattr(self, name)
            if not isinstance(mac, (bytes, bytearray)) or len(mac) != 6:
                raise ValueError(f"{name} must be 6 bytes")
        if self.vlan is not None and not 0 <= self.vlan <= 4094:
            raise ValueError(f"vlan must be within 0..4094, got {self.vlan}")

    def mss(self, ip_version: int) -> int:
        return self.mtu - (_IP4_HEADER if ip_version == 4 else _IP6_HEADER) - _TCP_HEADER


@dataclass(frozen=True, slots=True)
class OutputFrame:
    timestamp_ns: int
    data: bytes  # a complete Ethernet frame


class FrameBurst:
    """Frames made by one event, all at its time, in order: the unit the outputs
    write (an object per burst, not per frame)."""

    __slots__ = ("timestamp_ns", "frames")

    def __init__(self, timestamp_ns: int, frames: list[bytes]) -> None:
        self.timestamp_ns = timestamp_ns
        #: complete Ethernet frames
        self.frames = frames

    def pack_pcap(self, buffer: bytearray, nanosecond: bool, snaplen: int) -> tuple[int, int]:
        """The frames as pcap records appended to ``buffer`` (a pcap writer's,
        :meth:`bridge.capture.pcapwriter.PcapWriter.extend`): (records, frame bytes)."""
        return len(self.frames), _records.pack_pcap(buffer, self.timestamp_ns, self.frames, nanosecond, snaplen)

    def stamped(self) -> list[tuple[int, bytes]]:
        """Each frame with its time (here all the burst's)."""
        timestamp_ns = self.timestamp_ns
        return [(timestamp_ns, frame) for frame in self.frames]

    def __repr__(self) -> str:
        return f"FrameBurst({self.timestamp_ns}, {len(self.frames)} frames)"


class SegmentBurst(FrameBurst):
    """The data segments and the peer's ACKs of one or more consecutive plaintext
    events of a direction (its *pieces*, each at its own time: :attr:`timestamp_ns`
    is the last's), described, and made when an output takes them: as
    :attr:`frames` (once, for the outputs that send frames), or straight into a pcap
    writer's buffer (:meth:`pack_pcap`: no object per frame, no copy in between).
    The connection's state moved on when it was described
    (:meth:`SyntheticFlows._plaintext`); whichever way they are made, the frames are
    checked to end where it says."""

    __slots__ = ("_arguments", "_ends", "_made", "_stamps", "_counts")

    def __init__(self, arguments: tuple, ends: tuple[int, int], stamps: list[int],  # type: ignore[type-arg]
                 counts: list[int]) -> None:
        self.timestamp_ns = stamps[-1]
        #: :func:`_segments.segments`'s arguments (the pieces the tenth)
        self._arguments = arguments
        #: the sequence number and IP id after the frames
        self._ends = ends
        #: each piece's time, and how many frames it makes
        self._stamps = stamps
        self._counts = counts
        self._made: list[bytes] | None = None

    @property  # type: ignore[override]
    def frames(self) -> list[bytes]:
        made = self._made
        if made is None:
            made, seq, ip_id = _segments.segments(*self._arguments)
            self._check(seq, ip_id)
            self._made = made
        return made

    def pack_pcap(self, buffer: bytearray, nanosecond: bool, snaplen: int) -> tuple[int, int]:
        if self._made is not None:  # made for another output already: each piece's frames at its time
            size = 0
            for timestamp_ns, frames in self._pieces():
                size += _records.pack_pcap(buffer, timestamp_ns, frames, nanosecond, snaplen)
            return len(self._made), size
        records, seq, ip_id, size = _segments.segments_pcap(buffer, self._stamps, nanosecond, snaplen,
                                                            *self._arguments)
        self._check(seq, ip_id)
        return records, size

    def stamped(self) -> list[tuple[int, bytes]]:
        return [(timestamp_ns, frame) for timestamp_ns, frames in self._pieces() for frame in frames]

    def _pieces(self) -> list[tuple[int, list[bytes]]]:
        """Each piece's time and frames (made now if they were not)."""
        made, pieces, at = self.frames, [], 0
        for timestamp_ns, count in zip(self._stamps, self._counts):
            pieces.append((timestamp_ns, made[at:at + count]))
            at += count
        return pieces

    def _check(self, seq: int, ip_id: int) -> None:
        if (seq, ip_id) != self._ends:
            raise RuntimeError(f"synthetic segments ended at seq {seq}, IP id {ip_id}, not {self._ends}")

    def __repr__(self) -> str:
        return f"SegmentBurst({self.timestamp_ns}, {len(self._stamps)} pieces, {sum(map(len, self._arguments[9]))} bytes)"


@dataclass(slots=True)
class SyntheticStats:
    flows_started: int = 0
    #: closed with FIN (original ended by fin/idle/evicted/end_of_capture)
    flows_closed: int = 0
    #: closed with RST (original ended by rst)
    flows_reset: int = 0
    #: still open at :meth:`SyntheticFlows.close`, closed with FIN there
    flows_closed_at_end: int = 0
    #: finished without any plaintext: nothing emitted
    flows_not_emitted: int = 0
    frames: int = 0
    #: data segments
    segments: int = 0
    #: payload bytes
    bytes: int = 0


class _Flow:
    """State of one open synthetic connection: a few integers."""

    __slots__ = (
        "info", "server_port", "client_next", "server_next", "last_ns",
        "segments", "bytes_c2s", "bytes_s2c",
    )

    def __init__(self, info: FlowInfo, server_port: int, client_isn: int, server_isn: int, ts: int) -> None:
        self.info = info
        self.server_port = server_port
        self.client_next = client_isn
        self.server_next = server_isn
        self.last_ns = ts
        self.segments = 0
        self.bytes_c2s = 0
        self.bytes_s2c = 0


class SyntheticFlows:
    """Plaintext events in, Ethernet frames of synthetic cleartext connections out."""

    def __init__(self, options: SyntheticOptions = SyntheticOptions()) -> None:
        self.options = options
        self.stats = SyntheticStats()
        self._flows: dict[int, _Flow] = {}
        #: flow_id → what :meth:`describe` says of a finished connection (taken once)
        self._described: dict[int, dict[str, object] | None] = {}
        self._ip_id = 0
        tag = b"" if options.vlan is None else struct.pack("!HH", _ETHERTYPE_VLAN, options.vlan)
        client, server = bytes(options.source_mac), bytes(options.server_mac)
        # [ip_version == 6][direction] -> Ethernet header
        self._eth = tuple(
            (
                server + client + tag + ethertype.to_bytes(2, "big"),  # C2S
                client + server + tag + ethertype.to_bytes(2, "big"),  # S2C
            )
            for ethertype in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6)
        )
        self._mss = (options.mss(4), options.mss(6))

    @property
    def open_flows(self) -> int:
        return len(self._flows)

    # --- events ---------------------------------------------------------------------

    def bursts(self, event: object) -> list[FrameBurst]:
        """Frames caused by one decryptor event, in bursts (other objects: none)."""
        return self.bursts_all([event])

    def bursts_all(self, events: list[object]) -> list[FrameBurst]:
        """Frames caused by decryptor events, in order: those of :meth:`bursts` on each
        in turn, with the plaintexts of one direction that follow each other in one
        :class:`SegmentBurst` (an engine run delivers a direction's records in a row:
        one burst for them, not one each)."""
        out: list[FrameBurst] = []
        i, n = 0, len(events)
        while i < n:
            event = events[i]
            i += 1
            if isinstance(event, PlaintextData):
                flow_id, direction = event.flow.flow_id, event.direction
                j = i
                while j < n:
                    following = events[j]
                    if not isinstance(following, PlaintextData) or following.flow.flow_id != flow_id \
                            or following.direction != direction:
                        break
                    j += 1
                self._plaintext(events[i - 1:j], out)  # type: ignore[arg-type]
                i = j
            elif isinstance(event, FlowFinished):
                self._finished(event, out)
        return out

    def close_bursts(self, timestamp_ns: int) -> list[FrameBurst]:
        """End of input: close every open synthetic connection with FIN.

        Call it after the engine's final events: a later ``FlowFinished`` of a
        flow closed here is described as ``None``.
        """
        out: list[FrameBurst] = []
        for flow in self._flows.values():
            self._fin(flow, max(timestamp_ns, flow.last_ns), out)
            self.stats.flows_closed_at_end += 1
        self._flows.clear()
        return out

    def handle(self, event: object) -> list[OutputFrame]:
        """:meth:`bursts`, frame by frame."""
        return _frames(self.bursts(event))

    def close(self, timestamp_ns: int) -> list[OutputFrame]:
        """:meth:`close_bursts`, frame by frame."""
        return _frames(self.close_bursts(timestamp_ns))

    def describe(self, flow_id: int) -> dict[str, object] | None:
        """The synthetic connection of a finished flow, for the flow log's
        ``synthetic`` field (None: nothing was emitted); asked once, after its
        :class:`~bridge.engine.events.FlowFinished` was handled."""
        return self._described.pop(flow_id, None)

    def initial_sequence(self, flow: FlowInfo, direction: Direction) -> int:
        """The ISN of ``direction``: deterministic from the flow (override to choose)."""
        key = struct.pack(
            "!QqB", flow.flow_id & 0xFFFFFFFFFFFFFFFF, self.options.isn_seed, int(direction)
        ) + flow.client_ip + flow.client_port.to_bytes(2, "big") + flow.server_ip + flow.server_port.to_bytes(2, "big")
        return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big")

    # --- internals ------------------------------------------------------------------

    def _plaintext(self, run: Sequence[PlaintextData], out: list[FrameBurst]) -> None:
        """Plaintext events of one flow and direction that follow each other: their
        data segments and the peer's ACKs (each event's at its time), as one burst."""
        info = run[0].flow
        flow = self._flows.get(info.flow_id)
        mss = self._mss[info.ip_version == 6]
        ack_each = self.options.ack_each_segment
        pieces: list[bytes] = []
        stamps: list[int] = []
        counts: list[int] = []
        total = segments = count = 0
        for event in run:
            data = event.data
            if not data:
                continue
            ts = event.timestamp_ns
            if flow is None:
                flow = self._start(info, ts, out)
            if ts < flow.last_ns:
                ts = flow.last_ns
            flow.last_ns = ts
            # the frames are made when an output takes them (SegmentBurst): their count and
            # where they end are known now (a data segment per MSS, then one ACK or one after
            # each; IPv4 numbers every frame)
            size = len(data)
            cut = (size + mss - 1) // mss
            frames = cut * 2 if ack_each else cut + 1
            pieces.append(data)
            stamps.append(ts)
            counts.append(frames)
            total += size
            segments += cut
            count += frames
        if not pieces:  # nothing but empty plaintexts
            return
        direction = run[0].direction
        eth = self._eth[info.ip_version == 6]
        ip_id = self._ip_id
        if direction == Direction.C2S:
            arguments = (eth[0], eth[1], info.client_ip, info.server_ip, info.client_port, flow.server_port,
                         flow.client_next, flow.server_next, mss, pieces, ip_id, ack_each)
            seq = (flow.client_next + total) & _MOD32
            flow.client_next = seq
            flow.bytes_c2s += total
        else:
            arguments = (eth[1], eth[0], info.server_ip, info.client_ip, flow.server_port, info.client_port,
                         flow.server_next, flow.client_next, mss, pieces, ip_id, ack_each)
            seq = (flow.server_next + total) & _MOD32
            flow.server_next = seq
            flow.bytes_s2c += total
        if info.ip_version == 4:
            self._ip_id = (ip_id + count) & 0xFFFF
        out.append(SegmentBurst(arguments, (seq, self._ip_id), stamps, counts))
        flow.segments += segments
        stats = self.stats
        stats.segments += segments
        stats.bytes += total
        stats.frames += count

    def _start(self, info: FlowInfo, ts: int, out: list[FrameBurst]) -> _Flow:
        client_isn = self.initial_sequence(info, Direction.C2S) & _MOD32
        server_isn = self.initial_sequence(info, Direction.S2C) & _MOD32
        port = self.options.server_port
        flow = _Flow(info, info.server_port if port is None else port, client_isn, server_isn, ts)
        self._flows[info.flow_id] = flow
        c1 = (client_isn + 1) & _MOD32
        s1 = (server_isn + 1) & _MOD32
        out.append(FrameBurst(ts, [self._frame(flow, Direction.C2S, client_isn, 0, SYN, b""),
                                   self._frame(flow, Direction.S2C, server_isn, c1, SYN | ACK, b""),
                                   self._frame(flow, Direction.C2S, c1, s1, ACK, b"")]))
        flow.client_next, flow.server_next = c1, s1
        self.stats.flows_started += 1
        self.stats.frames += 3
        return flow

    def _finished(self, event: FlowFinished, out: list[FrameBurst]) -> None:
        flow = self._flows.pop(event.flow.flow_id, None)
        if flow is None:
            self.stats.flows_not_emitted += 1
            self._described[event.flow.flow_id] = None
            return
        ts = max(flow.last_ns, round(event.summary.ts_end * 1_000_000) * 1000)  # ts_end has µs resolution
        if event.ended_by == "rst":
            # every byte is already acknowledged: the client resets right away
            out.append(FrameBurst(ts, [self._frame(flow, Direction.C2S, flow.client_next, flow.server_next, RST | ACK,
                                                   b"")]))
            self.stats.frames += 1
            self.stats.flows_reset += 1
        else:
            self._fin(flow, ts, out)
            self.stats.flows_closed += 1
        info = flow.info
        options = self.options
        self._described[info.flow_id] = {
            "client": info.client,
            "server": format_endpoint(info.server_ip, flow.server_port),
            "vlan": options.vlan,
            "source_mac": format_mac(options.source_mac),
            "segments": flow.segments,
            "bytes_c2s": flow.bytes_c2s,
            "bytes_s2c": flow.bytes_s2c,
        }

    def _fin(self, flow: _Flow, ts: int, out: list[FrameBurst]) -> None:
        c, s = flow.client_next, flow.server_next
        c1, s1 = (c + 1) & _MOD32, (s + 1) & _MOD32
        frame = self._frame
        out.append(FrameBurst(ts, [frame(flow, Direction.C2S, c, s, FIN | ACK, b""),
                                   frame(flow, Direction.S2C, s, c1, ACK, b""),
                                   frame(flow, Direction.S2C, s, c1, FIN | ACK, b""),
                                   frame(flow, Direction.C2S, c1, s1, ACK, b"")]))
        flow.client_next, flow.server_next = c1, s1
        flow.last_ns = ts
        self.stats.frames += 4

    def _frame(self, flow: _Flow, direction: Direction, seq: int, ack: int, flags: int, payload: bytes | memoryview) -> bytes:
        """One Ethernet frame of ``flow`` sent in ``direction``."""
        info = flow.info
        if direction == Direction.C2S:
            src_ip, dst_ip = info.client_ip, info.server_ip
            sport, dport = info.client_port, flow.server_port
        else:
            src_ip, dst_ip = info.server_ip, info.client_ip
            sport, dport = flow.server_port, info.client_port
        eth = self._eth[info.ip_version == 6][direction]
        frame = _segments.frame(eth, src_ip, dst_ip, sport, dport, seq, ack, flags, payload, self._ip_id)
        if info.ip_version == 4:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
        return frame


def _frames(bursts: list[FrameBurst]) -> list[OutputFrame]:
    return [OutputFrame(timestamp_ns, frame) for burst in bursts for timestamp_ns, frame in burst.stamped()]
