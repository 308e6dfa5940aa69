"""Each TLS 1.2 connection's first protected record, captured on the wire: what
proves a master secret read through an unconfirmed layout, after the connection is gone.

A master secret read through a layout that is not known good for the build (a
candidate, a learned layout) is published only once confirmed
(:mod:`bridge.harvest.confirm`).  From memory alone that takes the connection's
key block, live in the process while the connection is: a connection that ended
before the harvester looked (``openssl s_server -www`` closes right after its
answer) cannot be confirmed that way.  The wire keeps what memory does not: the
ServerHello (server random, cipher suite, encrypt-then-MAC) and the client's
first protected record, its Finished (RFC 5246 §7.4.9) — the first record after
its ChangeCipherSpec, sequence number 0.  Decrypting it with the key block
derived from the master secret authenticates the secret (an AEAD tag, or the
HMAC for CBC suites) whenever the connection ended.

:class:`FirstRecords` is fed TCP segments (sans-I/O, by the harvesters' wire
readers, :func:`bridge.harvest.wire_search.hellos`) and answers by client
random.  Memory is bounded: connections followed at once, bytes buffered per
direction, out-of-order segments held, and answers kept are all capped; what
goes over a cap is counted in :attr:`FirstRecords.counts`, never buffered.
TLS 1.3 connections are dropped at their ServerHello (their secrets are
confirmed by HMAC relations, :func:`bridge.harvest.confirm.confirm_tls13`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from bridge.engine.packets import TcpSegment
from bridge.errors import RecordDecodeError
from bridge.tls.handshake import parse_server_hello
from bridge.tls.records import CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, HEADER_LENGTH, MAX_RECORD_LENGTH
from bridge.tls.sniff import SERVER_HELLO, client_hello_random, hello_type

Endpoint = tuple[bytes, int]

#: Connections followed at once (from their ClientHello to their first protected record).
MAX_FLOWS = 4096
#: Answers kept (client random → first record), the oldest forgotten first.
MAX_CAPTURED = 4096
#: Bytes buffered per direction before the record is found (a client certificate chain fits).
MAX_STREAM = 64 * 1024
#: Segments ahead of the next expected byte held per direction.
MAX_OUT_OF_ORDER = 8
_TLS13 = 0x0304


@dataclass(frozen=True, slots=True)
class FirstRecord:
    """What one TLS 1.2 connection showed on the wire: enough to decrypt its first
    client record with the key block of a candidate master secret."""

    client_random: bytes
    server_random: bytes
    cipher_suite: int
    encrypt_then_mac: bool
    #: The client's first protected record (its Finished): type, version, fragment.
    content_type: int
    version: int
    fragment: bytes


@dataclass(slots=True)
class FirstRecordCounts:
    captured: int = 0
    tls13: int = 0  # dropped at their ServerHello (confirmed otherwise)
    not_tls: int = 0  # a stream that stopped being TLS records
    over_bound: int = 0  # more bytes or out-of-order segments than the bounds allow
    evicted: int = 0  # followed connections pushed out by newer ones (MAX_FLOWS)
    ended: int = 0  # a FIN or RST before the record was seen
    truncated: int = 0  # a segment the capture cut short (snaplen) where its bytes were needed


def _signed(delta: int) -> int:
    delta &= 0xFFFFFFFF
    return delta - (1 << 32) if delta >= 1 << 31 else delta


@dataclass(slots=True)
class _Stream:
    """One direction's bytes in order from a known sequence number (bounded)."""

    next_seq: int
    data: bytearray = field(default_factory=bytearray)
    ahead: dict[int, bytes] = field(default_factory=dict)

    def add(self, seq: int, payload: bytes) -> bool:
        """False when a bound is exceeded."""
        offset = _signed(seq - self.next_seq)
        if offset > 0:
            if len(self.ahead) >= MAX_OUT_OF_ORDER:
                return False
            self.ahead[seq] = payload
            return True
        if -offset < len(payload):  # a retransmission may overlap what is here
            self._append(payload[-offset:])
        while self.ahead:
            for held in list(self.ahead):
                offset = _signed(held - self.next_seq)
                if offset <= 0:
                    payload = self.ahead.pop(held)
                    if -offset < len(payload):
                        self._append(payload[-offset:])
                    break
            else:
                break
        return len(self.data) <= MAX_STREAM

    def _append(self, payload: bytes) -> None:
        self.data += payload
        self.next_seq = (self.next_seq + len(payload)) & 0xFFFFFFFF


def _records(data: bytes | bytearray):  # type: ignore[no-untyped-def]
    """(type, version, fragment) of each complete record at the start of a stream;
    raises RecordDecodeError where the bytes are not TLS records."""
    position = 0
    while len(data) - position >= HEADER_LENGTH:
        content_type, major, minor = data[position], data[position + 1], data[position + 2]
        length = int.from_bytes(data[position + 3 : position + 5], "big")
        if not 20 <= content_type <= 24 or major != 3 or length > MAX_RECORD_LENGTH:
            raise RecordDecodeError(f"not a TLS record at offset {position}")
        end = position + HEADER_LENGTH + length
        if end > len(data):
            return
        yield content_type, (major << 8) | minor, bytes(data[position + HEADER_LENGTH : end])
        position = end


@dataclass(slots=True)
class _Flow:
    client_random: bytes
    client: _Stream
    server: _Stream | None = None
    server_random: bytes | None = None
    cipher_suite: int | None = None
    encrypt_then_mac: bool = False


class FirstRecords:
    """TLS 1.2 connections' ServerHellos and first client records, from TCP segments.

    :meth:`feed` takes every TCP segment of the traffic (one thread); :meth:`get`
    answers from any thread."""

    def __init__(self, *, max_flows: int = MAX_FLOWS, max_captured: int = MAX_CAPTURED) -> None:
        self.max_flows = max_flows
        self.max_captured = max_captured
        self.counts = FirstRecordCounts()
        self._flows: OrderedDict[tuple[Endpoint, Endpoint], _Flow] = OrderedDict()
        self._captured: OrderedDict[bytes, FirstRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        #: A wire reader feeds this (False: nothing will ever be captured).
        self.attached = False
        self._waited: OrderedDict[bytes, None] = OrderedDict()

    def get(self, client_random: bytes) -> FirstRecord | None:
        with self._lock:
            return self._captured.get(client_random)

    def wait(self, client_random: bytes, timeout: float) -> FirstRecord | None:
        """The connection's record, waiting up to ``timeout`` seconds for the wire
        reader (a capture polls; a hook may come first) the first time it is asked
        for; at once when there is no wire, or it was waited for before."""
        with self._arrived:
            if not self.attached or client_random in self._waited:
                return self._captured.get(client_random)
            self._waited[client_random] = None
            while len(self._waited) > self.max_captured:
                self._waited.popitem(last=False)
            self._arrived.wait_for(lambda: client_random in self._captured, timeout)
            return self._captured.get(client_random)

    def __len__(self) -> int:
        with self._lock:
            return len(self._captured)

    def feed(self, segment: TcpSegment, client_random: bytes | None = None, *, truncated: bool = False) -> None:
        """One TCP segment (``client_random``: its ClientHello's, when the caller
        parsed it already; ``truncated``: the capture kept only the start of its
        payload — enough for a ServerHello, never for the client's stream)."""
        source, destination = (segment.src, segment.sport), (segment.dst, segment.dport)
        flows = self._flows
        if segment.flags & 0x05:  # FIN or RST: the record will not come any more
            flow = flows.pop((source, destination), None) or flows.pop((destination, source), None)
            if flow is not None:
                self.counts.ended += 1
            if not segment.payload:
                return
        payload = segment.payload
        if not payload:
            return
        flow = flows.get((source, destination))
        if flow is not None:
            if truncated:
                self._drop((source, destination), "truncated")
            else:
                self._client_bytes((source, destination), flow, segment.seq, payload)
            return
        flow = flows.get((destination, source))
        if flow is not None:
            self._server_bytes((destination, source), flow, segment.seq, payload)
            if truncated and flow.server_random is None and (destination, source) in flows:
                self._drop((destination, source), "truncated")
            return
        random = client_random if client_random is not None else client_hello_random(payload)
        if random is None or truncated:
            return
        flows[(source, destination)] = flow = _Flow(random, _Stream(segment.seq))
        while len(flows) > self.max_flows:
            flows.popitem(last=False)
            self.counts.evicted += 1
        self._client_bytes((source, destination), flow, segment.seq, payload)

    def _drop(self, key: tuple[Endpoint, Endpoint], counter: str) -> None:
        self._flows.pop(key, None)
        setattr(self.counts, counter, getattr(self.counts, counter) + 1)

    def _server_bytes(self, key: tuple[Endpoint, Endpoint], flow: _Flow, seq: int, payload: bytes) -> None:
        if flow.server_random is not None:
            return  # the ServerHello is all the server direction is needed for
        if flow.server is None:
            if hello_type(payload) != SERVER_HELLO:
                return
            flow.server = _Stream(seq)
        if not flow.server.add(seq, payload):
            self._drop(key, "over_bound")
            return
        data = flow.server.data
        if len(data) < HEADER_LENGTH + 4:
            return
        length = int.from_bytes(data[HEADER_LENGTH + 1 : HEADER_LENGTH + 4], "big")
        first = int.from_bytes(data[3:5], "big")
        fragment = data[HEADER_LENGTH : HEADER_LENGTH + first]  # the first record, perhaps not whole yet
        if len(fragment) >= 4 + length:
            body = bytes(fragment[4 : 4 + length])
        elif len(fragment) < first:
            return  # more of the first record to come
        else:  # a ServerHello spanning records (rare): their fragments joined
            joined = bytearray()
            try:
                for content_type, _version, piece in _records(data):
                    if content_type != CONTENT_HANDSHAKE:
                        raise RecordDecodeError("a ServerHello interrupted")
                    joined += piece
                    if len(joined) >= 4 + length:
                        break
            except RecordDecodeError:
                self._drop(key, "not_tls")
                return
            if len(joined) < 4 + length:
                return
            body = bytes(joined[4 : 4 + length])
        try:
            hello = parse_server_hello(body)
        except (RecordDecodeError, ValueError):
            self._drop(key, "not_tls")
            return
        if hello.version == _TLS13 or hello.is_hello_retry_request:
            self._drop(key, "tls13")
            return
        flow.server_random, flow.cipher_suite = hello.random, hello.cipher_suite
        flow.encrypt_then_mac = hello.encrypt_then_mac
        flow.server = None
        self._complete(key, flow)

    def _client_bytes(self, key: tuple[Endpoint, Endpoint], flow: _Flow, seq: int, payload: bytes) -> None:
        if not flow.client.add(seq, payload):
            self._drop(key, "over_bound")
            return
        self._complete(key, flow)

    def _complete(self, key: tuple[Endpoint, Endpoint], flow: _Flow) -> None:
        """The record is there once the client's stream has its ChangeCipherSpec and
        the record after it, and the ServerHello was read."""
        if flow.server_random is None or flow.cipher_suite is None:
            return
        after_ccs = False
        try:
            for content_type, version, fragment in _records(flow.client.data):
                if after_ccs:
                    self._flows.pop(key, None)
                    record = FirstRecord(flow.client_random, flow.server_random, flow.cipher_suite,
                                         flow.encrypt_then_mac, content_type, version, fragment)
                    with self._arrived:
                        self._captured[flow.client_random] = record
                        while len(self._captured) > self.max_captured:
                            self._captured.popitem(last=False)
                        self._arrived.notify_all()
                    self.counts.captured += 1
                    return
                after_ccs = content_type == CONTENT_CHANGE_CIPHER_SPEC
        except RecordDecodeError:
            self._drop(key, "not_tls")
