"""The snapshot service: a ROUTER socket that answers sensors from a
:class:`~bridge.keyfeed.retention.Retention` (the "Clone" pattern's state
request, plus targeted gap repair).

Requests (one frame, msgpack): ``snapshot`` (records of the last ``age``
seconds) and ``fetch`` (one publisher's ``first..last``), answered; ``want`` (a
sensor waits for one connection's secrets) passed to ``on_key_request`` — the
harvester, or a broker forwarding it upstream — and not answered: the record
comes live when the harvester has it.  Replies: ``batch``
messages of at most :data:`~bridge.keyfeed.wire.MAX_BATCH_RECORDS` records, then
one ``end`` naming the publisher ranges covered (snapshot) or the numbers no
longer held (fetch).  A malformed request gets an ``error`` reply and a counter.

Replies are sent with ``ROUTER_MANDATORY``: a peer whose queue stays full for
``send_timeout`` seconds (gone, or not reading) loses the rest of its reply,
counted; the service never blocks longer than that on one peer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from bridge.errors import FeedMessageError
from bridge.keyfeed import wire
from bridge.keyfeed.retention import Retention


@dataclass(slots=True)
class ServiceStats:
    snapshot_requests: int = 0
    fetch_requests: int = 0
    key_requests: int = 0
    key_requests_unrouted: int = 0  # no harvester here takes requests
    records_served: int = 0
    replies_abandoned: int = 0
    bad_requests: int = 0
    bad_request_reasons: dict[str, int] = field(default_factory=dict)


class SnapshotService:
    def __init__(
        self,
        socket: zmq.Socket,
        retention: Retention,
        lock: threading.Lock,
        clock: Callable[[], float],
        *,
        send_timeout: float = 2.0,
    ) -> None:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.sndtimeo = int(send_timeout * 1000)
        socket.sndhwm = 100_000
        self.socket = socket
        self.retention = retention
        self.lock = lock
        self.clock = clock
        self.stats = ServiceStats()
        #: Called (in the service's thread) with each ``want`` request.
        self.on_key_request: Callable[[wire.KeyRequest], None] | None = None

    def handle(self) -> None:
        """Answer one pending request (call when the socket is readable)."""
        frames = self.socket.recv_multipart(zmq.NOBLOCK)
        identity, body = frames[0], frames[1:]
        try:
            if len(body) != 1:
                raise FeedMessageError("bad_frames", f"{len(body)} frames, expected 1")
            request = wire.decode(body[0], max_size=wire.MAX_REQUEST_MESSAGE)
            if not isinstance(request, (wire.SnapshotRequest, wire.FetchRequest, wire.KeyRequest)):
                raise FeedMessageError("bad_type", f"{type(request).__name__} is not a request")
        except FeedMessageError as exc:
            self.stats.bad_requests += 1
            reasons = self.stats.bad_request_reasons
            reasons[exc.reason] = reasons.get(exc.reason, 0) + 1
            self._send(identity, wire.ErrorReply(0, str(exc)))
            return
        if isinstance(request, wire.KeyRequest):
            self.key_request(request)
        elif isinstance(request, wire.SnapshotRequest):
            self._snapshot(identity, request)
        else:
            self._fetch(identity, request)

    def key_request(self, request: wire.KeyRequest) -> None:
        self.stats.key_requests += 1
        if self.on_key_request is None:
            self.stats.key_requests_unrouted += 1
        else:
            self.on_key_request(request)

    def _snapshot(self, identity: bytes, request: wire.SnapshotRequest) -> None:
        self.stats.snapshot_requests += 1
        with self.lock:
            oldest = self.clock() - request.max_age
            records = list(self.retention.since(oldest))
            ranges = self.retention.window(oldest)
        if self._send_records(identity, request.request_id, records):
            self._send(identity, wire.End(request.request_id, publishers=tuple(ranges)))

    def _fetch(self, identity: bytes, request: wire.FetchRequest) -> None:
        self.stats.fetch_requests += 1
        with self.lock:
            records, gone = self.retention.fetch(request.publisher, request.first, request.last)
        if self._send_records(identity, request.request_id, records):
            self._send(identity, wire.End(request.request_id, gone=tuple(gone)))

    def _send_records(self, identity: bytes, request_id: int, records: list[wire.KeyRecord]) -> bool:
        step = wire.MAX_BATCH_RECORDS
        for start in range(0, len(records), step):
            chunk = tuple(records[start : start + step])
            if not self._send(identity, wire.Batch(request_id, chunk)):
                return False
            self.stats.records_served += len(chunk)
        return True

    def _send(self, identity: bytes, message: wire.Message) -> bool:
        try:
            self.socket.send_multipart([identity, wire.encode(message)])
            return True
        except zmq.Again:
            self.stats.replies_abandoned += 1  # the peer stopped reading
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self.stats.replies_abandoned += 1  # the peer is gone
        return False
