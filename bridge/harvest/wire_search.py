"""The hook-free trigger: a ClientHello seen on the wire (or a sensor's key
request for one) names a connection; its client random is searched in the
owning process's writable anonymous memory, the hit gives the ``SSL *`` (hit −
the profile's client random offset), and the secrets are read while the
connection is alive.  The process never stops and runs no extra instruction:
its cost is zero; ours is a memory scan.

:func:`client_hello_random` and :func:`hellos` are pure; :class:`HelloInbox` and
:class:`SearchIntake` are the bounded intake shared with the VM harvester;
:class:`WireSearch` is the driver (``/proc/PID/mem``), advanced by
:meth:`WireSearch.step`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bridge.capture.frames import Frame
from bridge.errors import GuestAccessError, PacketDecodeError
from bridge.harvest.chain import MemoryFields, read_secrets
from bridge.secrets import ConnectionSecrets
from bridge.harvest.confirm import Evidence, memory_evidence
from bridge.harvest.first_record import FirstRecords
from bridge.harvest.memory import Mapping, ProcessGoneError, ProcessMemory, find_all, present, read_maps
from bridge.harvest.profile import Profile
from bridge.harvest.resolve import BuildLayout
from bridge.harvest.sockets import Endpoint, connection_owner
from bridge.keyfeed.wire import KeyRequest
from bridge.tls.sniff import client_hello_random
from bridge.engine.packets import TcpSegment, classify




@dataclass(frozen=True, slots=True)
class WireHello:
    """A connection to search for: its client random and endpoints, and what named
    it (``wire``: its ClientHello was captured; ``request``: a sensor asked)."""

    client_random: bytes
    client: Endpoint
    server: Endpoint
    trigger: str = "wire"


class HelloInbox:
    """Connections to search for and their ends, handed over from other threads (a
    capture thread, the key feed's request handler) to the harvester's loop: at
    most ``limit`` wait; more are counted in ``overflow``, never queued."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.overflow = 0
        self._items: deque[WireHello | WireEnd] = deque()
        self._lock = threading.Lock()

    def put(self, hello: WireHello | WireEnd) -> None:
        with self._lock:
            if len(self._items) >= self.limit:
                self.overflow += 1
                return
            self._items.append(hello)

    def take(self) -> list[WireHello | WireEnd]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
        return items


@dataclass(slots=True)
class IntakeCounts:
    named: int = 0  # connections named: ClientHellos seen, and sensors' requests
    requests: int = 0  # of which sensors' requests
    duplicates: int = 0  # named again (a retransmission; the wire and a sensor), or published by a hook already
    dropped: int = 0  # too many searches under way
    hooked: int = 0  # not searched: every target's hooks fetch its fields (the process harvester)

    @property
    def searched(self) -> int:
        return self.named - self.duplicates - self.dropped - self.hooked


class SearchIntake:
    """Which connections start a search: each client random once (a retransmitted
    ClientHello, or the wire and a sensor naming the same connection, starts no
    second one; the last ``remember`` are remembered), none a hook published
    already, and at most ``max_pending`` at a time.  Counted in :attr:`counts`."""

    def __init__(self, max_pending: int, *, published: Callable[[bytes], bool] = lambda client_random: False,
                 remember: int = 100_000) -> None:
        self.max_pending = max_pending
        self.published = published
        self.remember = remember
        self.counts = IntakeCounts()
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def admit(self, hello: WireHello, pending: int) -> bool:
        """True when a search for ``hello`` may start, ``pending`` being under way."""
        counts = self.counts
        counts.named += 1
        counts.requests += hello.trigger == "request"
        random = hello.client_random
        if random in self._seen or self.published(random):
            counts.duplicates += 1
            return False
        self._seen[random] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        if pending >= self.max_pending:
            counts.dropped += 1
            return False
        return True


@dataclass(frozen=True, slots=True)
class WireEnd:
    """A FIN or RST: the connection between these endpoints is ending."""

    source: Endpoint
    destination: Endpoint


_FIN_RST = 0x01 | 0x04


def hellos(frames: Iterable[Frame | None], *, ends: bool = False,
           first_records: FirstRecords | None = None) -> Iterator[WireHello | WireEnd | None]:
    """ClientHellos in a packet stream, and with ``ends`` the FINs and RSTs (None passes
    through: time to do other work).  ``first_records`` is fed every TCP segment: it
    keeps each TLS 1.2 connection's first client record, which confirms a layout
    by decryption (:mod:`bridge.harvest.first_record`)."""
    if first_records is not None:
        first_records.attached = True
    for frame in frames:
        if frame is None:
            yield None
            continue
        try:
            segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
        except PacketDecodeError:
            continue
        if isinstance(segment, TcpSegment):
            random = client_hello_random(segment.payload)
            if first_records is not None:
                first_records.feed(segment, random, truncated=frame.truncated)
            if random is not None:
                yield WireHello(random, (segment.src, segment.sport), (segment.dst, segment.dport))
            elif ends and segment.flags & _FIN_RST:
                yield WireEnd((segment.src, segment.sport), (segment.dst, segment.dport))


@dataclass(slots=True)
class WireStats:
    found: int = 0
    published: int = 0
    closed_first: int = 0  # the connection ended before its SSL object was found
    not_owned: int = 0  # no target process holds the connection
    not_found: int = 0  # owner known, client random never found in its memory
    incomplete: int = 0  # found, but the secrets never completed before the deadline
    unfinished: int = 0  # still searched for when the harvester stopped
    process_gone: int = 0  # the owner exited before its secrets were read
    unconfirmed: int = 0  # secrets read through a layout that did not confirm them: not published
    unreadable: int = 0  # the owner's memory could not be read (permissions)
    search_seconds: float = 0.0
    searches: int = 0


@dataclass(slots=True)
class PendingSearch:
    """One connection being searched for: named when, given up when, where its
    ``SSL`` object is once found, when to try again."""

    hello: WireHello
    seen_at: float
    deadline: float
    ssl: int | None = None
    next_try: float = 0.0
    #: When its end was seen (FIN/RST on the wire, or a sensor's word).
    closed_at: float | None = None
    #: Candidate layouts that failed confirmation on this connection.
    excluded: set[str] = field(default_factory=set)
    #: An undecided confirmation is tried again at ``confirm_at``, waiting twice as long each time.
    confirm_at: float = 0.0
    confirm_wait: float = 0.01

    def vouched(self, verdict: bool | None, build_id: str, now: float) -> bool:
        """A confirmation's verdict on the secrets read through layout ``build_id``:
        True to publish; undecided (None) backs off on this object; refused
        (False) excludes that layout on this connection and searches again."""
        if verdict is None:
            self.confirm_at, self.confirm_wait = now + self.confirm_wait, min(self.confirm_wait * 2, 0.5)
            return False
        if not verdict:
            self.excluded.add(build_id)
            self.ssl = None
            return False
        return True

    def miss(self, now: float) -> str | None:
        """Why the search stops here without a result (the name of its counter), or
        None while it goes on: ``closed_first`` — it ended more than
        :data:`CLOSED_GRACE` ago and its ``SSL`` object was never found (OpenSSL
        has freed and cleansed it); past the deadline, ``not_found`` or
        ``incomplete`` (found, the secrets never complete)."""
        if self.closed_at is not None and self.ssl is None and now - self.closed_at > CLOSED_GRACE:
            return "closed_first"
        if now >= self.deadline:
            return "not_found" if self.ssl is None else "incomplete"
        return None


def count_miss(stats: object, miss: str) -> None:
    """Add one to the counter named by :meth:`PendingSearch.miss`."""
    setattr(stats, miss, getattr(stats, miss) + 1)


#: After a connection's end, how long it is still searched for if not found yet.
CLOSED_GRACE = 0.05
#: The longest wait between two searches of a process's memory for a connection not found yet.
LOCATE_BACKOFF_MAX = 0.016

P = TypeVar("P", bound=PendingSearch)


class PendingSearches(Generic[P]):
    """The searches under way, in arrival order, indexed by connection for their
    ends; admitted by a :class:`SearchIntake`.  Shared by the host and VM searches."""

    def __init__(self, make: Callable[[WireHello, float, float], P], *, timeout: float, max_pending: int,
                 published: Callable[[bytes], bool] = lambda client_random: False) -> None:
        self.make = make
        self.timeout = timeout
        self.intake = SearchIntake(max_pending, published=published)
        self.items: list[P] = []
        self._by_connection: dict[tuple[Endpoint, Endpoint], P] = {}

    def __len__(self) -> int:
        return len(self.items)

    def add(self, hello: WireHello, now: float) -> None:
        if self.intake.admit(hello, len(self.items)):
            item = self.make(hello, now, now + self.timeout)
            self.items.append(item)
            self._by_connection[(hello.client, hello.server)] = item

    def take(self, event: WireHello | WireEnd, now: float) -> None:
        """A connection to search for, or the end of one."""
        if isinstance(event, WireEnd):
            self.ended(event, now)
        else:
            self.add(event, now)

    def ended(self, end: WireEnd, now: float) -> None:
        """A FIN or RST (either direction): the search stops after :data:`CLOSED_GRACE`
        unless the ``SSL`` object is found by then."""
        item = (self._by_connection.get((end.source, end.destination))
                or self._by_connection.get((end.destination, end.source)))
        if item is not None and item.closed_at is None:
            item.closed_at = now

    def keep(self, still: list[P]) -> None:
        """The searches that go on after a round."""
        self.items = still
        self._by_connection = {(item.hello.client, item.hello.server): item for item in still}

    def carry_on(self, unfinished: list[P], now: float, stats: object) -> None:
        """The end of a round: of the searches not finished, those that stop here
        are counted by their reason (:meth:`PendingSearch.miss`), the others go on."""
        still = []
        for item in unfinished:
            miss = item.miss(now)
            if miss is not None:
                count_miss(stats, miss)
            else:
                still.append(item)
        self.keep(still)


def other_candidate(reader, layout: BuildLayout, item: PendingSearch) -> tuple[int, Profile] | None:  # type: ignore[no-untyped-def]
    """A connection located through one candidate layout whose secrets stay
    incomplete (every candidate reads the client random it was found by: its own
    offset put the object there): the (``SSL *``, candidate) of another candidate,
    not excluded on it, that reads it whole from the same random, if any."""
    profile = getattr(item, "profile", None)
    path = profile.path("client_random") if profile is not None else None
    if item.ssl is None or path is None or len(path) != 1:
        return None
    hit = item.ssl + path[0]
    for other in layout.profiles():
        other_path = other.path("client_random") or ()
        if other is profile or other.build_id in item.excluded or len(other_path) != 1:
            continue
        ssl = hit - other_path[0]
        try:
            secrets = read_secrets(MemoryFields(reader, other, ssl))
        except GuestAccessError:
            continue
        if secrets is not None and secrets.client_random == item.hello.client_random and secrets.complete:
            return ssl, other
    return None


def request_event(request: KeyRequest) -> WireHello | WireEnd:
    """A sensor's key request: a connection to search for, or (``ended``) its end."""
    if request.ended:
        return WireEnd(request.client, request.server)
    return WireHello(request.client_random, request.client, request.server, "request")


@dataclass(slots=True)
class _Pending(PendingSearch):
    pid: int | None = None
    profile: Profile | None = None
    layout: BuildLayout | None = None
    #: Searches of the owner's memory that did not find the object yet.
    locate_misses: int = 0

    def miss(self, now: float) -> str | None:
        miss = PendingSearch.miss(self, now)
        return "not_owned" if miss == "not_found" and self.pid is None else miss


@dataclass(slots=True)
class WireSearch:
    """Pending searches, advanced by :meth:`step` (call it every few milliseconds)."""

    #: pid → the layouts of the OpenSSL builds it maps (the harvester's targets).
    targets: Callable[[], dict[int, list[BuildLayout]]]
    #: (pid, secrets, the build's layout, the search: when it was queued (time.monotonic()), its trigger)
    publish: Callable[[int, ConnectionSecrets, BuildLayout, WireHello, float], None]
    timeout: float = 5.0
    retry_interval: float = 0.001
    max_pending: int = 10_000
    #: Connections published already by another trigger (a hook): not searched again.
    published: Callable[[bytes], bool] = lambda client_random: False
    #: May secrets read through a layout be published (:meth:`LayoutResolver.vouch`)?
    vouch: Callable[[BuildLayout, Profile, ConnectionSecrets, Callable[[], Evidence]], bool | None] = (
        lambda layout, profile, secrets, evidence: True)
    #: A connection of a build was seen (:meth:`LayoutResolver.saw_connection`).
    saw: Callable[[BuildLayout], None] = lambda layout: None
    stats: WireStats = field(default_factory=WireStats)
    searches: PendingSearches[_Pending] = field(init=False)
    _readers: dict[int, ProcessMemory] = field(default_factory=dict)
    _maps: dict[int, list[Mapping]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.searches = PendingSearches(_Pending, timeout=self.timeout, max_pending=self.max_pending,
                                        published=self.published)

    @property
    def intake(self) -> SearchIntake:
        return self.searches.intake

    def add(self, event: WireHello | WireEnd, now: float) -> None:
        """A connection to search for, or the end of one."""
        self.searches.take(event, now)

    @property
    def pending(self) -> int:
        return len(self.searches)

    def step(self, now: float) -> None:
        unfinished: list[_Pending] = []
        for item in self.searches.items:
            if now >= item.next_try:
                try:
                    done = self._advance(item)
                except ProcessGoneError:
                    self._forget(item.pid)
                    self.stats.process_gone += 1
                    continue
                except GuestAccessError:
                    self.stats.unreadable += 1
                    continue
                if done:
                    continue
                # Polling a located object's fields is cheap; searching memory for it is not:
                # while it is not found, the searches back off (doubling, up to LOCATE_BACKOFF_MAX).
                if item.ssl is None:
                    item.locate_misses += 1
                    item.next_try = now + min(LOCATE_BACKOFF_MAX, self.retry_interval * 2 ** min(item.locate_misses, 16))
                else:
                    item.next_try = now + self.retry_interval
            unfinished.append(item)
        self.searches.carry_on(unfinished, now, self.stats)

    def _reader(self, pid: int) -> ProcessMemory:
        reader = self._readers.get(pid)
        if reader is None:
            reader = self._readers[pid] = ProcessMemory(pid)
        return reader

    def _forget(self, pid: int | None) -> None:
        reader = self._readers.pop(pid, None) if pid is not None else None
        if reader is not None:
            reader.close()
        self._maps.pop(pid, None)  # type: ignore[arg-type]

    def _advance(self, item: _Pending) -> bool:
        """One attempt; True when the item is finished (published)."""
        targets = self.targets()
        if item.pid is None:
            item.pid = connection_owner(list(targets), item.hello.client, item.hello.server)
            if item.pid is None:
                return False
            for layout in targets.get(item.pid, []):
                self.saw(layout)
        layouts = targets.get(item.pid, [])
        reader = self._reader(item.pid)
        if item.ssl is None:
            started = time.perf_counter()
            located = self._locate(item.pid, reader, layouts, item.hello.client_random, item.excluded)
            self.stats.search_seconds += time.perf_counter() - started
            self.stats.searches += 1
            if located is None:
                return False
            item.ssl, item.layout, item.profile = located
            self.stats.found += 1
        assert item.profile is not None and item.layout is not None
        secrets = read_secrets(MemoryFields(reader, item.profile, item.ssl))
        if secrets is None or secrets.client_random != item.hello.client_random:
            item.ssl = None  # the object was freed or reused: search again
            return False
        if not secrets.complete:
            if item.layout.profile is None:  # candidates: another may read this connection whole
                switched = other_candidate(reader, item.layout, item)
                if switched is not None:
                    item.ssl, item.profile = switched
            return False
        pid, ssl, profile = item.pid, item.ssl, item.profile
        now = time.monotonic()
        if now < item.confirm_at:
            return False
        maps = self._maps.get(pid) or read_maps(pid)
        verdict = self.vouch(item.layout, profile, secrets,
                             lambda: memory_evidence(reader, profile, ssl, lambda needles: present(reader, maps, needles)))
        if not item.vouched(verdict, profile.build_id, now):
            self.stats.unconfirmed += verdict is False
            return False
        self.publish(item.pid, secrets, item.layout, item.hello, item.seen_at)
        self.stats.published += 1
        return True

    def _locate(self, pid: int, reader: ProcessMemory, layouts: list[BuildLayout], random: bytes,
                excluded: set[str]) -> tuple[int, BuildLayout, Profile] | None:
        for refresh in (False, True):
            if refresh or pid not in self._maps:
                self._maps[pid] = read_maps(pid)
            maps = self._maps[pid]
            for hit in find_all(reader, maps, random):
                for layout in layouts:
                    for profile in layout.profiles():
                        if profile.build_id in excluded:
                            continue
                        for ssl in self._candidates(reader, maps, profile, hit):
                            try:
                                secrets = read_secrets(MemoryFields(reader, profile, ssl))
                            except GuestAccessError:
                                continue
                            if secrets is not None and secrets.client_random == random:
                                return ssl, layout, profile
        return None

    @staticmethod
    def _candidates(reader: ProcessMemory, maps: list[Mapping], profile: Profile, hit: int) -> Iterator[int]:
        path = profile.path("client_random") or ()
        if len(path) == 1:
            yield hit - path[0]
        elif len(path) == 2:  # 1.1.1: ssl->s3 is a pointer; find the SSL that points at this s3
            s3 = (hit - path[1]).to_bytes(8, "little")
            for pointer in find_all(reader, maps, s3, limit=8):
                yield pointer - path[0]

    def close(self) -> None:
        self.stats.unfinished += len(self.searches)  # still searched for at the stop
        self.searches.keep([])
        for pid in list(self._readers):
            self._forget(pid)
