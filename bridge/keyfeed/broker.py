"""``tls-bridge keys broker``: many harvesters to many sensors.

An XSUB frontend (harvesters' PUB sockets connect to it) and an XPUB backend
(sensors' SUB sockets connect to it), like ``zmq.proxy``, except that every
message is validated before it is forwarded (garbage from one publisher never
reaches the sensors) and every record is kept, so the broker runs the snapshot
service for its sensors (beside the backend endpoint).

Sensors' key requests (``want``, to the snapshot service) go upstream to every
connected harvester: an XSUB passes messages that are not subscriptions to its
publishers, whose XPUB reads them.

Curve on both sides, each with its own allow-list: publishers (domain
``publishers``) and subscribers (domain ``subscribers``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from bridge.errors import FeedMessageError, TransportError
from bridge.keyfeed import wire
from bridge.keyfeed.publisher import DEFAULT_HWM
from bridge.keyfeed.retention import Retention
from bridge.keyfeed.security import (
    CurveServer,
    FailureReporter,
    HandshakeMonitor,
    secure_server,
    snapshot_endpoint,
    start_authenticator,
)
from bridge.keyfeed.service import SnapshotService


@dataclass(slots=True)
class BrokerConfig:
    frontend: str
    backend: str
    snapshot: str | None = None
    ttl: float = 600.0
    max_records: int = 1_000_000
    hwm: int = DEFAULT_HWM


@dataclass(slots=True)
class BrokerStats:
    forwarded: int = 0
    records: int = 0
    heartbeats: int = 0
    duplicates: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    subscriptions: int = 0
    key_requests_forwarded: int = 0


@dataclass(frozen=True, slots=True)
class BrokerKeys:
    """The broker's Curve identity towards each side, each with its own allow-list."""

    publishers: CurveServer
    subscribers: CurveServer


class Broker:
    def __init__(
        self,
        config: BrokerConfig,
        keys: BrokerKeys | None,
        *,
        clock: Callable[[], float] = time.time,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self._report = FailureReporter(on_failure)
        self.stats = BrokerStats()
        self.retention = Retention(ttl=config.ttl, max_records=config.max_records)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._sockets: list[zmq.Socket] = []
        self._monitors: list[HandshakeMonitor] = []
        self._authenticator = None
        try:
            if keys is not None:
                self._authenticator = start_authenticator(
                    self._context,
                    {"publishers": keys.publishers.allow_dir, "subscribers": keys.subscribers.allow_dir},
                )
            upstream = keys.publishers if keys is not None else None
            downstream = keys.subscribers if keys is not None else None
            self.frontend = self._socket(zmq.XSUB, config.frontend, upstream, "publishers")
            self.frontend.rcvhwm = config.hwm
            self.backend = self._socket(zmq.XPUB, config.backend, downstream, "subscribers")
            self.backend.sndhwm = config.hwm
            self.snapshot_endpoint = config.snapshot or snapshot_endpoint(config.backend)
            router = self._socket(zmq.ROUTER, self.snapshot_endpoint, downstream, "subscribers")
            self.service = SnapshotService(router, self.retention, self._lock, clock)
            self.service.on_key_request = self._forward_key_request
            self.frontend.send(b"\x01")  # subscribe upstream to everything: the broker keeps it all
        except BaseException:
            self.close()
            raise

    def _socket(self, kind: int, endpoint: str, server: CurveServer | None, domain: str) -> zmq.Socket:
        socket = self._context.socket(kind)
        self._sockets.append(socket)
        self._monitors.append(HandshakeMonitor(socket))
        secure_server(socket, server, domain)
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot bind {endpoint}: {exc.strerror}") from None
        return socket

    def _forward_key_request(self, request: wire.KeyRequest) -> None:
        """Upstream to every harvester (the broker's loop thread owns the frontend)."""
        try:
            self.frontend.send(wire.encode(request), zmq.NOBLOCK)
            self.stats.key_requests_forwarded += 1
        except zmq.Again:
            self.service.stats.key_requests_unrouted += 1

    def _from_publisher(self, frames: list[bytes]) -> None:
        try:
            if len(frames) != 1:
                raise FeedMessageError("bad_frames", f"{len(frames)} frames")
            message = wire.decode(frames[0], max_size=wire.MAX_KEY_MESSAGE)
        except FeedMessageError as exc:
            self.stats.malformed += 1
            self.stats.malformed_reasons[exc.reason] = self.stats.malformed_reasons.get(exc.reason, 0) + 1
            return
        if isinstance(message, wire.KeyRecord):
            with self._lock:
                fresh = self.retention.add(message, self.clock())
            if not fresh:
                self.stats.duplicates += 1
                return
            self.stats.records += 1
        elif isinstance(message, wire.Heartbeat):
            self.stats.heartbeats += 1
        else:
            self.stats.malformed += 1
            self.stats.malformed_reasons["unexpected_type"] = self.stats.malformed_reasons.get("unexpected_type", 0) + 1
            return
        self.backend.send(frames[0])
        self.stats.forwarded += 1

    def run(self, stop: threading.Event | None = None, *, on_tick: Callable[[], None] | None = None) -> None:
        stop = stop or self._stop
        poller = zmq.Poller()
        for socket in (self.frontend, self.backend, self.service.socket):
            poller.register(socket, zmq.POLLIN)
        next_expiry = 0.0
        while not stop.is_set():
            ready = dict(poller.poll(200))
            if self.frontend in ready:
                for _ in range(1000):
                    try:
                        self._from_publisher(self.frontend.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
            if self.backend in ready:
                # Subscriptions from sensors: counted; upstream already receives everything.
                while True:
                    try:
                        self.backend.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.stats.subscriptions += 1
            if self.service.socket in ready:
                self.service.handle()
            now = time.monotonic()
            if now >= next_expiry:
                with self._lock:
                    self.retention.expire(self.clock())
                for monitor in self._monitors:
                    for failure in monitor.drain():
                        self._report(f"a peer on {failure}")
                if on_tick is not None:
                    on_tick()
                next_expiry = now + 1.0

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        for monitor in self._monitors:
            monitor.close()
        for socket in self._sockets:
            socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()
