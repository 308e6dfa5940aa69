"""The sensor end of the key feed.

Per feed endpoint: a SUB socket for live records and heartbeats, and a DEALER
to the snapshot service beside it.  On start the subscriber asks every service
for the records of the last ``window`` seconds (a sensor that restarts gets
the keys of connections still running); while that snapshot is pending, gaps
are not requested.  Afterwards the :class:`~bridge.keyfeed.sequence.SequenceTracker`
finds gaps in each publisher's numbers and the missing records are fetched
from the service the publisher was heard on.

Every message is validated (:func:`bridge.keyfeed.wire.decode`); a malformed
one is counted by reason and dropped.  New records (never duplicates) go to
``on_record``.  Single-threaded: call :meth:`Subscriber.poll` in a loop, or
:meth:`Subscriber.start` for a background thread.  :meth:`Subscriber.request_keys`
(from any thread) asks the harvesters behind every endpoint for the secrets of
one connection (a ``want`` on the DEALER; a pipe wakes the poll loop).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from bridge.errors import FeedMessageError
from bridge.keyfeed import wire
from bridge.keyfeed.publisher import DEFAULT_HWM
from bridge.keyfeed.security import CurveClient, FailureReporter, HandshakeMonitor, secure_client, snapshot_endpoint
from bridge.keyfeed.sequence import SequenceTracker


@dataclass(slots=True)
class SubscriberConfig:
    endpoints: list[str]
    #: Snapshot service per endpoint (default: beside it, see security.snapshot_endpoint).
    snapshots: list[str] | None = None
    window: float = 600.0
    snapshot_timeout: float = 10.0
    retry_after: float = 1.0
    max_attempts: int = 5
    hwm: int = DEFAULT_HWM


@dataclass(slots=True)
class SubscriberStats:
    messages: int = 0
    records: int = 0
    heartbeats: int = 0
    malformed: int = 0
    malformed_reasons: dict[str, int] = field(default_factory=dict)
    snapshots_completed: int = 0
    snapshot_timeouts: int = 0
    service_errors: int = 0
    handshake_failures: int = 0
    key_requests: int = 0  # sent (to every feed endpoint)
    key_requests_dropped: int = 0  # too many queued, or the send queue full


#: Key requests waiting for the poll loop: a burst of new connections in 100 ms.
MAX_QUEUED_KEY_REQUESTS = 10_000


class _Link:
    __slots__ = ("endpoint", "sub", "dealer", "monitors", "snapshot_id", "snapshot_sent", "synced")

    def __init__(self, endpoint: str, sub: zmq.Socket, dealer: zmq.Socket) -> None:
        self.endpoint = endpoint
        self.sub = sub
        self.dealer = dealer
        self.monitors = [HandshakeMonitor(sub), HandshakeMonitor(dealer)]
        self.snapshot_id: int | None = None
        self.snapshot_sent = 0.0
        self.synced = False


class Subscriber:
    def __init__(
        self,
        config: SubscriberConfig,
        *,
        client: CurveClient | None,
        on_record: Callable[[wire.KeyRecord], None],
        clock: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        if not config.endpoints:
            raise ValueError("no feed endpoint")
        snapshots = config.snapshots or [snapshot_endpoint(e) for e in config.endpoints]
        if len(snapshots) != len(config.endpoints):
            raise ValueError("one snapshot endpoint per feed endpoint")
        self.config = config
        self.on_record = on_record
        self.clock = clock
        self._report = FailureReporter(on_failure, clock=clock)
        self.stats = SubscriberStats()
        self.tracker = SequenceTracker(retry_after=config.retry_after, max_attempts=config.max_attempts)
        self._ids = itertools.count(1)
        self._context = zmq.Context()
        self._links: list[_Link] = []
        self._by_socket: dict[zmq.Socket, _Link] = {}
        self._publisher_link: dict[bytes, _Link] = {}
        self._poller = zmq.Poller()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Key requests from the packet thread, sent by the poll loop (sockets stay in one thread).
        self._key_requests: deque[wire.KeyRequest] = deque()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(self._wake_read, zmq.POLLIN)
        for endpoint, service in zip(config.endpoints, snapshots):
            sub = self._context.socket(zmq.SUB)
            sub.rcvhwm = config.hwm
            secure_client(sub, client)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            dealer = self._context.socket(zmq.DEALER)
            dealer.rcvhwm = config.hwm
            dealer.linger = 0
            secure_client(dealer, client)
            link = _Link(endpoint, sub, dealer)
            sub.connect(endpoint)
            dealer.connect(service)
            self._links.append(link)
            for socket in (sub, dealer):
                self._by_socket[socket] = link
                self._poller.register(socket, zmq.POLLIN)
        self.tracker.holding = True
        now = self.clock()
        for link in self._links:
            self._request_snapshot(link, now)

    # --- requests -------------------------------------------------------------------

    def _send(self, link: _Link, message: wire.Message) -> bool:
        try:
            link.dealer.send(wire.encode(message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _request_snapshot(self, link: _Link, now: float) -> None:
        link.snapshot_id = next(self._ids)
        link.snapshot_sent = now
        self._send(link, wire.SnapshotRequest(link.snapshot_id, self.config.window))

    def request_keys(self, request: wire.KeyRequest) -> None:
        """Ask every feed endpoint's harvesters for one connection's secrets
        (any thread; sent by the next :meth:`poll`; at most
        :data:`MAX_QUEUED_KEY_REQUESTS` wait, the rest are counted as dropped)."""
        if len(self._key_requests) >= MAX_QUEUED_KEY_REQUESTS:
            self.stats.key_requests_dropped += 1
            return
        self._key_requests.append(request)
        try:
            os.write(self._wake_write, b"!")  # wake the poll loop now
        except BlockingIOError:
            pass  # it has many wake-ups pending already

    def _send_key_requests(self) -> None:
        while self._key_requests:
            message = self._key_requests.popleft()
            if all(self._send(link, message) for link in self._links):
                self.stats.key_requests += 1
            else:
                self.stats.key_requests_dropped += 1

    def _request_gaps(self, now: float) -> None:
        for gap in self.tracker.due_fetches(now):
            link = self._publisher_link.get(gap.publisher, self._links[0])
            self._send(link, wire.FetchRequest(next(self._ids), gap.publisher, gap.first, gap.last))

    # --- messages ---------------------------------------------------------------------

    def _malformed(self, reason: str) -> None:
        self.stats.malformed += 1
        self.stats.malformed_reasons[reason] = self.stats.malformed_reasons.get(reason, 0) + 1

    def _deliver(self, record: wire.KeyRecord, link: _Link) -> None:
        self._publisher_link.setdefault(record.publisher, link)
        if self.tracker.record(record.publisher, record.seq):
            self.stats.records += 1
            self.on_record(record)

    def _on_live(self, link: _Link, frames: list[bytes]) -> None:
        self.stats.messages += 1
        try:
            if len(frames) != 1:
                raise FeedMessageError("bad_frames", f"{len(frames)} frames")
            message = wire.decode(frames[0], max_size=wire.MAX_KEY_MESSAGE)
        except FeedMessageError as exc:
            self._malformed(exc.reason)
            return
        if isinstance(message, wire.KeyRecord):
            self._deliver(message, link)
        elif isinstance(message, wire.Heartbeat):
            self.stats.heartbeats += 1
            self._publisher_link.setdefault(message.publisher, link)
            self.tracker.heartbeat(message.publisher, message.last_seq, message.first_seq)
        else:
            self._malformed("unexpected_type")

    def _on_reply(self, link: _Link, frames: list[bytes]) -> None:
        self.stats.messages += 1
        try:
            if len(frames) != 1:
                raise FeedMessageError("bad_frames", f"{len(frames)} frames")
            message = wire.decode(frames[0])
        except FeedMessageError as exc:
            self._malformed(exc.reason)
            return
        if isinstance(message, wire.Batch):
            for record in message.records:
                self._deliver(record, link)
        elif isinstance(message, wire.End):
            if message.request_id == link.snapshot_id:
                for held in message.publishers:
                    self._publisher_link.setdefault(held.publisher, link)
                    self.tracker.baseline(held.publisher, held.first_seq, held.last_seq)
                self._snapshot_done(link, completed=True)
            for gone in message.gone:
                self.tracker.gone(gone.publisher, gone.first, gone.last)
        elif isinstance(message, wire.ErrorReply):
            self.stats.service_errors += 1
        else:
            self._malformed("unexpected_type")

    def _snapshot_done(self, link: _Link, *, completed: bool) -> None:
        if link.synced:
            return
        link.synced = True
        if completed:
            self.stats.snapshots_completed += 1
        else:
            self.stats.snapshot_timeouts += 1
            self._report(f"{link.endpoint}: no snapshot within {self.config.snapshot_timeout:g} s; live records only")
        self.tracker.holding = not all(l.synced for l in self._links)

    # --- driving -------------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Every snapshot service answered (or timed out)."""
        return all(link.synced for link in self._links)

    def poll(self, timeout: float = 0.1) -> int:
        """Handle what arrives within ``timeout`` seconds; returns new records."""
        before = self.stats.records
        ready = dict(self._poller.poll(timeout * 1000))
        if ready.pop(self._wake_read, None):
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass
        for socket in ready:
            link = self._by_socket[socket]
            for _ in range(1000):  # bounded burst per socket, then the others get a turn
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                (self._on_live if socket is link.sub else self._on_reply)(link, frames)
        now = self.clock()
        for link in self._links:
            if not link.synced and now - link.snapshot_sent > self.config.snapshot_timeout:
                self._snapshot_done(link, completed=False)
            for monitor in link.monitors:
                for failure in monitor.drain():
                    self.stats.handshake_failures += 1
                    self._report(failure)
        self._request_gaps(now)
        self._send_key_requests()
        return self.stats.records - before

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced and time.monotonic() < deadline:
            self.poll(0.05)
        return self.synced

    def start(self, on_tick: Callable[[], None] | None = None) -> Subscriber:
        def run() -> None:
            while not self._stop.is_set():
                self.poll(0.1)
                if on_tick is not None:
                    on_tick()

        self._thread = threading.Thread(target=run, name="keyfeed-subscriber", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for link in self._links:
            for monitor in link.monitors:
                monitor.close()
            link.sub.close(linger=0)
            link.dealer.close(linger=0)
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._context.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
