"""The publishing end of the key feed (a harvester, or ``tls-bridge keys publish``).

A PUB socket sends each record once, live; the records are also kept
(:class:`~bridge.keyfeed.retention.Retention`, ``ttl`` seconds) and served by a
:class:`~bridge.keyfeed.service.SnapshotService` on a ROUTER beside it, so a
sensor that starts late, restarts, or misses records gets them.  A heartbeat
every ``heartbeat_interval`` seconds carries the last sequence number.

Two placements:

* ``bind`` (default): the publisher is the Curve server; sensors (or a broker)
  connect to it and must be on its allow-list;
* ``connect``: the PUB connects to a broker's frontend as a Curve client, and
  the broker keeps the records for the sensors.

:meth:`Publisher.publish` may be called from any thread; a service thread
answers snapshot requests and sends heartbeats, and hands sensors' key requests
(``want``: the secrets of a connection the harvester did not see begin) to
``on_key_request`` — through the snapshot service (bind), or from the broker
upstream over the XPUB (connect).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from bridge.errors import FeedMessageError, TransportError
from bridge.keyfeed import wire
from bridge.keyfeed.retention import Retention
from bridge.keyfeed.security import (
    CurveClient,
    CurveServer,
    FailureReporter,
    HandshakeMonitor,
    secure_client,
    secure_server,
    snapshot_endpoint,
    start_authenticator,
)
from bridge.keyfeed.service import SnapshotService

#: Queued messages per subscriber before libzmq drops: a burst of 10,000
#: handshakes/s for 10 s (a subscriber that falls further behind repairs from
#: the snapshot service).
DEFAULT_HWM = 100_000


@dataclass(slots=True)
class PublisherConfig:
    endpoint: str
    connect: bool = False
    #: Where the snapshot service binds; by default beside ``endpoint`` (bind
    #: placement only: with ``connect`` the broker serves snapshots).
    snapshot: str | None = None
    ttl: float = 600.0
    max_records: int = 1_000_000
    heartbeat_interval: float = 1.0
    hwm: int = DEFAULT_HWM


@dataclass(slots=True)
class PublisherStats:
    published: int = 0
    replayed: int = 0
    heartbeats: int = 0
    oversized: int = 0
    key_requests: int = 0  # from a broker (bind placement: see the service's counters)
    bad_upstream: int = 0  # undecodable messages from a broker


class Publisher:
    def __init__(
        self,
        config: PublisherConfig,
        *,
        server: CurveServer | None = None,
        client: CurveClient | None = None,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
        on_key_request: Callable[[wire.KeyRequest], None] | None = None,
    ) -> None:
        if config.connect and (server is not None or config.snapshot is not None):
            raise TransportError("a publisher that connects to a broker is a Curve client; the broker serves snapshots")
        self.config = config
        self.clock = clock
        self._report = FailureReporter(on_failure)
        self.on_key_request = on_key_request
        self.publisher_id = os.urandom(wire.PUBLISHER_ID_LENGTH)
        self.stats = PublisherStats()
        self.retention = Retention(ttl=config.ttl, max_records=config.max_records)
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        self._monitors: list[HandshakeMonitor] = []
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None
        self._authenticator = None
        self.service: SnapshotService | None = None
        self.snapshot_endpoint: str | None = None
        try:
            self._authenticator = start_authenticator(
                self._context, {"subscribers": server.allow_dir} if server is not None else {}
            )
            # Towards a broker, an XPUB: its subscription tells when the broker
            # (re)connected, and the retained records are replayed to it.
            self._pub = self._socket(zmq.XPUB if config.connect else zmq.PUB)
            self._pub.sndhwm = config.hwm
            self._pub.linger = 2000
            if config.connect:
                self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
                secure_client(self._pub, client)
                self._pub.connect(config.endpoint)
            else:
                secure_server(self._pub, server, "subscribers")
                self._bind(self._pub, config.endpoint)
                self.snapshot_endpoint = config.snapshot or snapshot_endpoint(config.endpoint)
                router = self._socket(zmq.ROUTER)
                secure_server(router, server, "subscribers")
                self._bind(router, self.snapshot_endpoint)
                self.service = SnapshotService(router, self.retention, self._lock, clock)
                self.service.on_key_request = on_key_request
        except BaseException:
            self.close()
            raise

    def take_key_requests(self, handler: Callable[[wire.KeyRequest], None]) -> None:
        """Sensors' key requests go to ``handler`` from now on (called in the service thread)."""
        self.on_key_request = handler
        if self.service is not None:
            self.service.on_key_request = handler

    def _socket(self, kind: int) -> zmq.Socket:
        socket = self._context.socket(kind)
        self._sockets.append(socket)
        self._monitors.append(HandshakeMonitor(socket))
        return socket

    @staticmethod
    def _bind(socket: zmq.Socket, endpoint: str) -> None:
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot bind {endpoint}: {exc.strerror}") from None

    def __enter__(self) -> Publisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Publisher:
        """Start the service thread (once; starting again is a no-op)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="keyfeed-publisher", daemon=True)
            self._thread.start()
        return self

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, record: wire.KeyRecord) -> wire.KeyRecord:
        """Number, keep and send one record; returns it as sent."""
        if self.failure is not None:
            raise TransportError(f"the publisher's service thread failed: {type(self.failure).__name__}")
        with self._lock:
            self._seq += 1
            numbered = dataclasses.replace(record, publisher=self.publisher_id, seq=self._seq)
            message = wire.encode(numbered)
            if len(message) > wire.MAX_KEY_MESSAGE:
                self._seq -= 1
                self.stats.oversized += 1
                raise TransportError(f"key record of {len(message)} bytes exceeds {wire.MAX_KEY_MESSAGE} (origin too long)")
            self.retention.add(numbered, self.clock())
            self._send_live(numbered, message)
            self.stats.published += 1
        return numbered

    def _send_live(self, record: wire.KeyRecord, message: bytes) -> None:
        """The live send (under the lock); a record libzmq drops for a slow
        subscriber is still retained, and the subscriber repairs the gap."""
        self._pub.send(message)

    def _heartbeat(self) -> None:
        with self._lock:
            held = self.retention.publisher_range(self.publisher_id)
            first = held.first_seq if held is not None else self._seq + 1
            beat = wire.Heartbeat(self.publisher_id, self._seq, first, self.clock())
            self._pub.send(wire.encode(beat))
            self.stats.heartbeats += 1

    def _serve(self) -> None:
        try:
            self._serve_loop()
        except BaseException as exc:  # the service must not die unnoticed: publish() reports it
            self.failure = exc
            raise

    def _serve_loop(self) -> None:
        poller = zmq.Poller()
        if self.service is not None:
            poller.register(self.service.socket, zmq.POLLIN)
        if self.config.connect:
            poller.register(self._pub, zmq.POLLIN)
        next_beat = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                with self._lock:
                    self.retention.expire(self.clock())
                self._heartbeat()
                next_beat = now + self.config.heartbeat_interval
            for monitor in self._monitors:
                for failure in monitor.drain():
                    self._report(f"a peer on {failure}")
            timeout = max(0.0, min(next_beat - time.monotonic(), 0.2))
            ready = dict(poller.poll(timeout * 1000))
            if self.service is not None and self.service.socket in ready:
                self.service.handle()
            if self._pub in ready:
                self._from_broker()

    def _from_broker(self) -> None:
        """Upstream messages on the XPUB: a subscription (the broker connected, or
        reconnected after it restarted: replay what is retained; the broker drops
        what it has) or a sensor's key request the broker forwards."""
        frames = []
        with self._lock:  # the socket is shared with publish()
            for _ in range(1000):
                try:
                    frames.append(self._pub.recv(zmq.NOBLOCK))
                except zmq.Again:
                    break
        subscribed = False
        for frame in frames:
            if frame[:1] in (b"\x00", b"\x01"):
                subscribed = subscribed or frame[:1] == b"\x01"
            else:
                self._upstream_request(frame)
        if subscribed:
            self._replay()

    def _upstream_request(self, frame: bytes) -> None:
        try:
            request = wire.decode(frame, max_size=wire.MAX_REQUEST_MESSAGE)
        except FeedMessageError:
            self.stats.bad_upstream += 1
            return
        if not isinstance(request, wire.KeyRequest):
            self.stats.bad_upstream += 1
            return
        self.stats.key_requests += 1
        if self.on_key_request is not None:
            self.on_key_request(request)

    def _replay(self) -> None:
        with self._lock:
            for record in self.retention.since(float("-inf")):
                self._pub.send(wire.encode(record))
                self.stats.replayed += 1

    def handshake_counts(self) -> list[object]:
        return [monitor.counts for monitor in self._monitors]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._thread is None or not self._thread.is_alive():
            for monitor in self._monitors:
                monitor.close()
            for socket in self._sockets:
                socket.close()
            if self._authenticator is not None:
                self._authenticator.stop()
            self._context.term()
        self._thread = None
