"""QUIC connections in the engine: UDP datagrams in, the same events as TCP's out.

:class:`QuicFlows` is the QUIC flow table the :class:`~bridge.engine.engine.Engine`
gives every frame that is not a TCP segment.  A UDP datagram starts a flow only
if it opens with a long header Initial of a version the bridge decrypts (v1,
v2); other UDP is counted and left alone.  Per flow: a
:class:`~bridge.quic.connection.QuicConnection` (keyed by the two endpoints;
connection IDs may change within it) and an
:class:`~bridge.quic.http3.Http3Session`.

Events, as for a TCP connection: :class:`FlowStarted` once the client is known
(its Initial authenticated), :class:`KeysWanted` when the ClientHello's client
random has no secrets in the store (``request_keys``), and at the end a
:class:`FlowFinished` whose summary is the flow log line (status and reason as
for TLS over TCP, plus a ``quic`` object: version, packets, streams, requests).
Each HTTP/3 request stream becomes a *synthetic* connection of its own, with
the QUIC connection's addresses and ports: :class:`FlowStarted`, the request and
the response as HTTP/1.1 (:class:`PlaintextData` C2S and S2C), and
:class:`FlowFinished` with ``parent`` naming the QUIC flow; the outputs
re-inject it as cleartext TCP and list it in the QUIC flow's ``synthetic``
field (no flow log line of its own).

Secrets come from the key store by client random, looked up when the
ClientHello is parsed, on each later datagram of a flow still waiting, and on
:meth:`QuicFlows.keys_arrived` (the store's arrival list belongs to the TCP
decryptor, so waiting QUIC flows are polled: at most ``max_flows`` dict lookups).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.capture.frames import Frame
from bridge.engine.events import Event, FlowFinished, FlowInfo, FlowStarted, KeysWanted, PlaintextData
from bridge.engine.settings import EngineSettings
from bridge.engine.summary import DirectionSummary, FlowSummary
from bridge.engine.udp import UdpDatagram, decode_udp
from bridge.errors import PacketDecodeError
from bridge.keys.store import KeyStore
from bridge.quic.connection import HelloSeen, Oriented, QuicConnection, QuicSettings, StreamChunk, opens_connection
from bridge.quic import synthetic
from bridge.quic.http3 import Exchange, Http3Session
from bridge.quic.versions import PacketType, version as find_version
from bridge.tls.certificates import describe_chain
from bridge.tls.state import Direction

NS = 1_000_000_000
C2S, S2C = Direction.C2S, Direction.S2C
#: after a CONNECTION_CLOSE, how long late packets may still come (capture time)
CLOSE_DRAIN_NS = 2 * NS
#: what a QUIC connection costs besides its buffers (its objects, keys, tables), charged to the budget
FLOW_BYTES = 16384
#: plaintext events of a synthetic connection carry at most this much (as TLS records
#: do): the synthetic peer acknowledges each, so no segment is beyond its window
PIECE = 16384
#: datagrams with QUIC's fixed bit of no flow yet (a mirror may deliver them
#: before the connection's first Initial): kept this long, at most this many
EARLY_WAIT_NS = 1 * NS
EARLY_MAX = 256

Endpoint = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class QuicFlowSummary(FlowSummary):
    """A QUIC connection's flow log line: the TLS fields, and ``quic``."""

    quic: dict[str, object] = field(default_factory=dict)

    def to_record(self, **annotations: object) -> dict[str, object]:
        record = FlowSummary.to_record(self)
        record["quic"] = self.quic
        record.update(annotations)
        return record


@dataclass(slots=True)
class QuicStats:
    udp_datagrams: int = 0
    #: UDP datagrams of no QUIC flow (and not opening one)
    not_quic: int = 0
    malformed: int = 0
    flows: int = 0
    flows_evicted: int = 0
    requests: int = 0
    #: datagrams that came before their connection's first Initial and were used
    early_datagrams: int = 0
    #: a connection seen on another pair of endpoints (found by its connection ID)
    migrations: int = 0
    #: connections evicted because the QUIC connections together held more than memory_limit
    evicted_for_memory: int = 0
    #: the most the QUIC connections held at once (bytes, as charged)
    memory_peak: int = 0
    #: finished QUIC connections by flow log status
    statuses: dict[str, int] = field(default_factory=dict)
    #: stream bytes of finished QUIC connections, both directions
    plaintext_bytes: int = 0


class _Flow:
    __slots__ = ("flow_id", "endpoints", "ip_version", "connection", "http3", "info", "first_ns", "last_ns",
                 "keys_given", "keys_requested", "key_origin", "closed_ns", "exchanges", "synthetic", "client_random",
                 "synthetic_ns", "paths", "ids_indexed", "charged")

    def __init__(self, flow_id: int, endpoints: tuple[Endpoint, Endpoint], ip_version: int, settings: QuicSettings,
                 max_body: int, ts: int) -> None:
        self.flow_id = flow_id
        self.endpoints = endpoints
        self.ip_version = ip_version
        self.connection = QuicConnection(settings)
        self.http3 = Http3Session(max_body=max_body)
        self.info: FlowInfo | None = None
        self.first_ns = self.last_ns = ts
        self.keys_given = False
        self.keys_requested = False
        self.key_origin: dict[str, object] | None = None
        self.closed_ns: int | None = None
        self.exchanges = 0
        #: the synthetic connections (flow ids) made of its requests
        self.synthetic: list[int] = []
        self.client_random: bytes | None = None
        #: when its last synthetic connection ended: the next starts no earlier (one 4-tuple)
        self.synthetic_ns = 0
        #: other endpoint pairs it moved to (connection migration, NAT rebinding)
        self.paths: list[tuple[Endpoint, Endpoint]] = []
        #: how many of its connection's issued IDs are in the table's index
        self.ids_indexed = 0
        #: bytes charged to the QUIC memory budget
        self.charged = FLOW_BYTES


class QuicFlows:
    def __init__(self, keys: KeyStore, settings: EngineSettings, allocate_id: Callable[[], int], *,
                 request_keys: bool = False) -> None:
        self.keys = keys
        self.settings = settings
        self.allocate_id = allocate_id
        self.request_keys = request_keys
        self.stats = QuicStats()
        self._quic_settings = QuicSettings(max_pending=settings.max_pending_per_direction,
                                           max_stream_buffer=settings.max_out_of_order_bytes, digest=settings.digest)
        self._flows: OrderedDict[tuple[Endpoint, Endpoint], _Flow] = OrderedDict()
        #: datagrams of no flow yet that may be QUIC, oldest first: (key, datagram)
        self._early: OrderedDict[int, tuple[tuple[Endpoint, Endpoint], UdpDatagram]] = OrderedDict()
        self._early_seq = 0
        #: connection ID → the flow that issued it; endpoint pairs a flow migrated to
        self._by_id: OrderedDict[bytes, tuple[Endpoint, Endpoint]] = OrderedDict()
        self._id_lengths: set[int] = set()
        self._aliases: dict[tuple[Endpoint, Endpoint], tuple[Endpoint, Endpoint]] = {}
        #: bytes the QUIC connections hold (FLOW_BYTES each, packets waiting for keys, stream
        #: data ahead of holes, HTTP/3 bodies until their exchange is emitted)
        self.charged = 0
        self._next_tick_ns = 0

    @property
    def active_flows(self) -> int:
        return len(self._flows)

    @property
    def waiting_flows(self) -> int:
        """Flows whose ClientHello names secrets the store does not have yet."""
        return sum(1 for flow in self._flows.values() if flow.client_random is not None and not flow.keys_given)

    # --- input -----------------------------------------------------------------------

    def frame(self, frame: Frame) -> list[Event]:
        """A frame that is not a TCP segment."""
        try:
            datagram = decode_udp(frame.linktype, frame.data, frame.timestamp_ns)
        except PacketDecodeError:
            self.stats.malformed += 1
            return []
        if datagram is None:
            return []
        return self.datagram(datagram)

    def datagram(self, datagram: UdpDatagram) -> list[Event]:
        self.stats.udp_datagrams += 1
        source, destination = (datagram.src, datagram.sport), (datagram.dst, datagram.dport)
        key = (source, destination) if source <= destination else (destination, source)
        events: list[Event] = []
        flow = self._flows.get(key)
        ts = datagram.timestamp_ns
        if flow is None:
            flow = self._migrated(key, datagram.payload)
        if flow is None:
            if not _opens_quic(datagram.payload):
                self._wait_early(key, datagram)
                return self._tick(ts, events)
            flow = self._new_flow(key, datagram.ip_version, ts, events)
            self._feed(flow, key, datagram, events)
            for seq, (early_key, early) in list(self._early.items()):
                if early_key == key:
                    del self._early[seq]
                    self.stats.early_datagrams += 1
                    self.stats.not_quic -= 1
                    self._feed(flow, key, early, events)
            return self._tick(ts, events)
        self._flows.move_to_end(flow.endpoints)
        self._feed(flow, key, datagram, events)
        return self._tick(ts, events)

    def _migrated(self, key: tuple[Endpoint, Endpoint], payload: bytes) -> _Flow | None:
        """The flow of a datagram on endpoints it moved to: by an alias, or a short
        header addressed to a connection ID it issued (RFC 9000 §9)."""
        home = self._aliases.get(key)
        if home is None:
            if len(payload) < 2 or payload[0] & 0xC0 != 0x40:
                return None
            for length in self._id_lengths:
                home = self._by_id.get(payload[1:1 + length])
                if home is not None:
                    break
            else:
                return None
            flow = self._flows.get(home)
            if flow is None or flow.info is None or len(flow.paths) >= 16:
                return None
            self._aliases[key] = home
            flow.paths.append(key)
            self.stats.migrations += 1
        return self._flows.get(home)

    def _index_ids(self, flow: _Flow) -> None:
        issued = flow.connection.issued
        if len(issued) <= flow.ids_indexed:
            return
        for connection_id in list(issued)[flow.ids_indexed:]:
            self._by_id[connection_id] = flow.endpoints
            self._id_lengths.add(len(connection_id))
        flow.ids_indexed = len(issued)
        while len(self._by_id) > 8 * self.settings.max_flows:
            self._by_id.popitem(last=False)

    def _forget(self, flow: _Flow) -> None:
        for connection_id in flow.connection.issued:
            if self._by_id.get(connection_id) == flow.endpoints:
                del self._by_id[connection_id]
        for path in flow.paths:
            self._aliases.pop(path, None)

    def _wait_early(self, key: tuple[Endpoint, Endpoint], datagram: UdpDatagram) -> None:
        """UDP of no flow: counted as not QUIC, and one that may be QUIC kept a while
        in case its connection's Initial comes next (a mirror reorders)."""
        self.stats.not_quic += 1
        payload = datagram.payload
        if len(payload) < 21 or not payload[0] & 0x40:  # QUIC's fixed bit (RFC 9000 §17)
            return
        self._early[self._early_seq] = (key, datagram)
        self._early_seq += 1
        while len(self._early) > EARLY_MAX:
            self._early.popitem(last=False)
        while self._early:
            _, (_, oldest) = next(iter(self._early.items()))
            if datagram.timestamp_ns - oldest.timestamp_ns <= EARLY_WAIT_NS:
                break
            self._early.popitem(last=False)

    def _feed(self, flow: _Flow, key: tuple[Endpoint, Endpoint], datagram: UdpDatagram, events: list[Event]) -> None:
        source = (datagram.src, datagram.sport)
        ts = datagram.timestamp_ns
        flow.last_ns = max(flow.last_ns, ts)
        if key == flow.endpoints:
            side = 0 if source == key[0] else 1
        else:  # a path it migrated to: who sent it, by the connection ID, else by the server's endpoint
            connection = flow.connection
            sender = connection.sender_of(datagram.payload)
            info = flow.info
            assert info is not None and connection.client_side is not None
            if sender is None:
                sender = S2C if source == (info.server_ip, info.server_port) else C2S
            side = connection.client_side if sender == C2S else 1 - connection.client_side
        self._outputs(flow, flow.connection.feed(side, datagram.payload, ts), events)
        self._index_ids(flow)
        if flow.client_random is not None and not flow.keys_given:
            self._give_keys(flow, events)
        if flow.connection.close is not None and flow.closed_ns is None:
            flow.closed_ns = ts
        self._charge(flow, events)

    def _charge(self, flow: _Flow, events: list[Event]) -> None:
        """Charge the flow what it holds now; past ``memory_limit``, the least recently
        active other flows are evicted (finished, ``evicted``) until it fits."""
        charge = FLOW_BYTES + flow.connection.held_bytes + flow.http3.held
        self.charged += charge - flow.charged
        flow.charged = charge
        limit = self.settings.memory_limit
        while self.charged > limit and len(self._flows) > 1:
            key, oldest = next(iter(self._flows.items()))
            if oldest is flow:
                self._flows.move_to_end(key)
                continue
            del self._flows[key]
            self.stats.evicted_for_memory += 1
            self._finish(oldest, "evicted", events)
        if self.charged > self.stats.memory_peak:  # one connection alone is bounded by its own limits
            self.stats.memory_peak = self.charged

    def _new_flow(self, key: tuple[Endpoint, Endpoint], ip_version: int, ts: int, events: list[Event]) -> _Flow:
        flow = _Flow(self.allocate_id(), key, ip_version, self._quic_settings, self.settings.max_out_of_order_bytes,
                     ts)
        self._flows[key] = flow
        self.charged += flow.charged
        self.stats.flows += 1
        while len(self._flows) > self.settings.max_flows:
            _, oldest = self._flows.popitem(last=False)
            self.stats.flows_evicted += 1
            self._finish(oldest, "evicted", events)
        return flow

    def _outputs(self, flow: _Flow, outputs: list, events: list[Event]) -> None:
        for output in outputs:
            kind = output.__class__
            if kind is StreamChunk:
                for exchange in flow.http3.feed(output):
                    self._exchange(flow, exchange, events)
            elif kind is Oriented:
                self._orient(flow, output.client_side, events)
            elif kind is HelloSeen:
                flow.client_random = output.client_random
                self._give_keys(flow, events)

    def _orient(self, flow: _Flow, client_side: int, events: list[Event]) -> None:
        (client_ip, client_port) = flow.endpoints[client_side]
        (server_ip, server_port) = flow.endpoints[1 - client_side]
        flow.info = FlowInfo(flow.flow_id, flow.ip_version, client_ip, client_port, server_ip, server_port,
                             flow.first_ns)
        events.append(FlowStarted(flow.info))

    def _give_keys(self, flow: _Flow, events: list[Event]) -> None:
        random = flow.client_random
        assert random is not None
        secrets = self.keys.lookup(random)
        if secrets is None:
            if self.request_keys and not flow.keys_requested and flow.info is not None:
                flow.keys_requested = True
                events.append(KeysWanted(flow.info, random))
            return
        flow.key_origin = secrets.origin
        self._outputs(flow, flow.connection.give_secrets(dict(secrets.secrets)), events)
        flow.keys_given = {"CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"} <= flow.connection.secrets.keys()

    def keys_arrived(self) -> list[Event]:
        """Secrets may have arrived: flows waiting for theirs look again."""
        events: list[Event] = []
        for flow in list(self._flows.values()):
            if flow.client_random is not None and not flow.keys_given:
                self._give_keys(flow, events)
        return events

    # --- synthetic connections ------------------------------------------------------

    def _exchange(self, flow: _Flow, exchange: Exchange, events: list[Event]) -> None:
        info = flow.info
        if info is None:
            return
        self.stats.requests += 1
        flow.exchanges += 1
        # requests on one QUIC connection overlap; their synthetic connections share its
        # 4-tuple, so each starts after the previous ended (time never goes back)
        start_ns = max(exchange.request_ns, flow.synthetic_ns)
        end_ns = max(exchange.response_ns, start_ns)
        flow.synthetic_ns = end_ns + 1000
        child = FlowInfo(self.allocate_id(), info.ip_version, info.client_ip, info.client_port, info.server_ip,
                         info.server_port, start_ns)
        flow.synthetic.append(child.flow_id)
        events.append(FlowStarted(child))
        sent: list[list[bytes]] = [[], []]
        pieces = synthetic.pieces(exchange, self.settings.http3_as)
        for index, (direction, data) in enumerate(pieces):
            sent[direction].append(data)
            ts = end_ns if direction == S2C and index == len(pieces) - 1 else start_ns  # the response: at its end
            for at in range(0, len(data), PIECE):
                events.append(PlaintextData(child, direction, data[at:at + PIECE], ts))
        ended_by = "fin" if exchange.complete else "rst"
        status, reason = ("decrypted", "") if exchange.complete else ("partial", "request stream reset or cut short")
        if exchange.truncated:
            status, reason = "partial", f"{exchange.truncated} body bytes beyond the per-message limit not carried"
        summary = FlowSummary(
            flow_id=child.flow_id, ts_start=_seconds(start_ns), ts_end=_seconds(end_ns),
            client=child.client, server=child.server, status=status, reason=reason, ended_by=ended_by,
            handshake_seen=True, client_random=None, tls_version=None, cipher_suite=None,
            sni=exchange.authority, alpn="h2c" if self.settings.http3_as == "http2" else "http/1.1", alpn_offered=[],
            resumed=False, hello_retry_request=False,
            early_data_offered=False, early_data_accepted=False, encrypt_then_mac=False,
            extended_master_secret=False, server_random=None, session_id=False, session_ticket=False,
            session_tickets_issued=0, key_updates=0, certificates=[], key_origin=flow.key_origin,
            c2s=_direction(b"".join(sent[C2S]), self.settings.digest),
            s2c=_direction(b"".join(sent[S2C]), self.settings.digest))
        events.append(FlowFinished(child, ended_by, summary, parent=flow.flow_id))

    # --- time and the end --------------------------------------------------------------

    def _tick(self, now_ns: int, events: list[Event]) -> list[Event]:
        if now_ns >= self._next_tick_ns:
            self._next_tick_ns = now_ns + NS
            events.extend(self.tick(now_ns))
        return events

    def tick(self, now_ns: int) -> list[Event]:
        """Flows idle past ``idle_timeout``, or closed and drained, are finished."""
        events: list[Event] = []
        idle_ns = int(self.settings.idle_timeout * NS)
        for key, flow in list(self._flows.items()):
            if flow.closed_ns is not None and now_ns - flow.closed_ns >= CLOSE_DRAIN_NS:
                del self._flows[key]
                self._finish(flow, "close", events)
            elif now_ns - flow.last_ns >= idle_ns:
                del self._flows[key]
                self._finish(flow, "idle", events)
        return events

    def finish(self) -> list[Event]:
        events: list[Event] = []
        while self._flows:
            _, flow = self._flows.popitem(last=False)
            self._finish(flow, "end_of_capture", events)
        return events

    def _finish(self, flow: _Flow, ended_by: str, events: list[Event]) -> None:
        self._forget(flow)
        self.charged -= flow.charged
        flow.charged = 0
        if flow.client_random is not None and not flow.keys_given:
            self._give_keys(flow, events)
        self._outputs(flow, flow.connection.finish(), events)
        if flow.info is None:  # never oriented: the higher port is taken for the client's
            side = 0 if flow.endpoints[0][1] > flow.endpoints[1][1] else 1
            self._orient(flow, side, events)
        for exchange in flow.http3.finish():
            self._exchange(flow, exchange, events)
        assert flow.info is not None
        summary = self._summary(flow, ended_by)
        self.stats.statuses[summary.status] = self.stats.statuses.get(summary.status, 0) + 1
        self.stats.plaintext_bytes += summary.c2s.bytes + summary.s2c.bytes
        events.append(FlowFinished(flow.info, ended_by, summary))
        random = flow.client_random
        if random is not None:
            if self.request_keys and flow.keys_requested and not flow.connection.application_decrypted \
                    and self.keys.lookup(random) is None:
                events.append(KeysWanted(flow.info, random, ended=True))
            if self.settings.forget_keys:
                self.keys.forget(random)

    def _summary(self, flow: _Flow, ended_by: str) -> QuicFlowSummary:
        connection = flow.connection
        status, reason = connection.status()
        if status == "decrypted" and flow.http3.errors:
            status, reason = "partial", "; ".join(f"{k} ({v})" for k, v in sorted(flow.http3.errors.items()))
        hello = connection.client_hello
        server_hello = connection.server_hello
        info = flow.info
        assert info is not None
        directions = []
        for direction in (C2S, S2C):
            stats = connection.stats[direction]
            directions.append(DirectionSummary(
                bytes=stats.stream_bytes, sha256=connection.stream_digest(direction), packets=stats.packets,
                records=stats.packets, decrypted_records=stats.decrypted_packets,
                skipped_records=stats.failed_packets + stats.undecrypted_packets, alerts=0,
                key_updates=stats.key_updates, gap_bytes=stats.gap_bytes,
                retransmitted_bytes=stats.retransmitted_bytes))
        version = connection.version
        quic = {
            "version": version.name if version else None,
            "retry": connection.retry,
            #: the Retry Integrity Tag checked against the client's first DCID (RFC 9001 §5.8)
            "retry_tag_valid": connection.retry_valid,
            "version_negotiation": list(connection.version_negotiation or ()) or None,
            "handshake_done": connection.handshake_done,
            "zero_rtt_packets": connection.zero_rtt_packets,
            "requests": flow.exchanges,
            #: pairs of endpoints it was seen on (more than one: migration, NAT rebinding)
            "paths": 1 + len(flow.paths),
            #: connection IDs its 1-RTT packets were addressed to, per direction (a client moves to new ones)
            "connection_ids": {"c2s": len(connection.short_header_ids[C2S]),
                               "s2c": len(connection.short_header_ids[S2C])},
            "close": None if connection.close is None else {
                "error_code": connection.close.error_code, "application": connection.close.application,
                "reason": connection.close.reason[:200]},
            "errors": dict(connection.errors) | {f"http3: {k}": v for k, v in flow.http3.errors.items()},
        }
        return QuicFlowSummary(
            flow_id=flow.flow_id, ts_start=_seconds(flow.first_ns), ts_end=_seconds(flow.last_ns),
            client=info.client, server=info.server, status=status, reason=reason, ended_by=ended_by,
            handshake_seen=hello is not None, client_random=hello.random.hex() if hello else None,
            tls_version="TLSv1.3" if server_hello is not None or connection.decrypted_any else None,
            cipher_suite=connection.suite.name if connection.suite else None,
            sni=hello.sni if hello else None, alpn=connection.alpn, alpn_offered=list(hello.alpn) if hello else [],
            resumed=bool(server_hello and server_hello.accepts_psk), hello_retry_request=False,
            early_data_offered=bool(hello and hello.offers_early_data),
            early_data_accepted=connection.early_data_accepted,
            encrypt_then_mac=False, extended_master_secret=False,
            server_random=server_hello.random.hex() if server_hello else None, session_id=False,
            session_ticket=connection.session_tickets > 0, session_tickets_issued=connection.session_tickets,
            key_updates=sum(s.key_updates for s in connection.stats),
            certificates=describe_chain(connection.certificates), key_origin=flow.key_origin,
            c2s=directions[0], s2c=directions[1], quic=quic)


def _opens_quic(payload: bytes) -> bool:
    """A client's first Initial, of a version the bridge decrypts, that authenticates
    under the keys of its DCID (cheap checks first)."""
    if len(payload) < 7 or payload[0] & 0xC0 != 0xC0:
        return False
    version = find_version(int.from_bytes(payload[1:5], "big"))
    if version is None or version.long_types[(payload[0] >> 4) & 3] is not PacketType.INITIAL:
        return False
    return opens_connection(payload)


def _direction(data: bytes, digest: bool) -> DirectionSummary:
    return DirectionSummary(bytes=len(data), sha256=hashlib.sha256(data).hexdigest() if digest else None, packets=0,
                            records=0,
                            decrypted_records=0, skipped_records=0, alerts=0, key_updates=0, gap_bytes=0,
                            retransmitted_bytes=0)


def _seconds(timestamp_ns: int) -> float:
    return round(timestamp_ns / NS, 6)
