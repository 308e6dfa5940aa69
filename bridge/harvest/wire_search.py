"""The hook-free trigger: a ClientHello seen on the wire names a connection; its
client random is searched in the owning process's writable anonymous memory,
the hit gives the ``SSL *`` (hit − the profile's client random offset), and the
secrets are read while the connection is alive.  The process never stops and
runs no extra instruction: its cost is zero; ours is a memory scan.

:func:`client_hello_random` and :func:`hellos` are pure; :class:`WireSearch` is
the driver (``/proc/PID/mem``), advanced by :meth:`WireSearch.step`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from bridge.capture.frames import Frame
from bridge.errors import GuestAccessError, PacketDecodeError
from bridge.harvest.chain import ConnectionSecrets, MemoryFields, read_secrets
from bridge.harvest.memory import Mapping, ProcessGoneError, ProcessMemory, find_all, read_maps
from bridge.harvest.profile import Profile
from bridge.harvest.sockets import Endpoint, connection_owner
from bridge.packets import TcpSegment, classify


def client_hello_random(payload: bytes) -> bytes | None:
    """The client random of a TLS record that starts with a ClientHello."""
    if len(payload) >= 43 and payload[0] == 22 and payload[1] == 3 and payload[5] == 1:
        return payload[11:43]
    return None


@dataclass(frozen=True, slots=True)
class WireHello:
    client_random: bytes
    client: Endpoint
    server: Endpoint


@dataclass(frozen=True, slots=True)
class WireEnd:
    """A FIN or RST: the connection between these endpoints is ending."""

    source: Endpoint
    destination: Endpoint


_FIN_RST = 0x01 | 0x04


def hellos(frames: Iterable[Frame | None], *, ends: bool = False) -> Iterator[WireHello | WireEnd | None]:
    """ClientHellos in a packet stream, and with ``ends`` the FINs and RSTs (None passes
    through: time to do other work)."""
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
            if random is not None:
                yield WireHello(random, (segment.src, segment.sport), (segment.dst, segment.dport))
            elif ends and segment.flags & _FIN_RST:
                yield WireEnd((segment.src, segment.sport), (segment.dst, segment.dport))


@dataclass(slots=True)
class WireStats:
    hellos: int = 0
    duplicates: int = 0
    found: int = 0
    published: int = 0
    not_owned: int = 0  # no target process holds the connection
    not_found: int = 0  # owner known, client random never found in its memory
    incomplete: int = 0  # found, but the secrets never completed before the deadline
    dropped: int = 0  # too many pending searches
    process_gone: int = 0  # the owner exited before its secrets were read
    unreadable: int = 0  # the owner's memory could not be read (permissions)
    search_seconds: float = 0.0
    searches: int = 0


@dataclass(slots=True)
class _Pending:
    hello: WireHello
    deadline: float
    seen_at: float
    pid: int | None = None
    ssl: int | None = None
    profile: Profile | None = None
    next_try: float = 0.0


@dataclass(slots=True)
class WireSearch:
    """Pending searches, advanced by :meth:`step` (call it every few milliseconds)."""

    #: pid → the profiles of the OpenSSL builds it maps (the harvester's targets).
    targets: Callable[[], dict[int, list[Profile]]]
    #: (pid, secrets, profile, when the ClientHello was queued: time.monotonic())
    publish: Callable[[int, ConnectionSecrets, Profile, float], None]
    timeout: float = 5.0
    retry_interval: float = 0.001
    max_pending: int = 10_000
    stats: WireStats = field(default_factory=WireStats)
    _pending: list[_Pending] = field(default_factory=list)
    _seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    _readers: dict[int, ProcessMemory] = field(default_factory=dict)
    _maps: dict[int, list[Mapping]] = field(default_factory=dict)

    def add(self, hello: WireHello, now: float) -> None:
        self.stats.hellos += 1
        if hello.client_random in self._seen:
            self.stats.duplicates += 1  # a retransmitted ClientHello
            return
        self._seen[hello.client_random] = None
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)
        if len(self._pending) >= self.max_pending:
            self.stats.dropped += 1
            return
        self._pending.append(_Pending(hello, now + self.timeout, now))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def step(self, now: float) -> None:
        still: list[_Pending] = []
        for item in self._pending:
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
                item.next_try = now + self.retry_interval
            if now >= item.deadline:
                if item.pid is None:
                    self.stats.not_owned += 1
                elif item.ssl is None:
                    self.stats.not_found += 1
                else:
                    self.stats.incomplete += 1
                continue
            still.append(item)
        self._pending = still

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
        profiles = targets.get(item.pid, [])
        reader = self._reader(item.pid)
        if item.ssl is None:
            started = time.perf_counter()
            located = self._locate(item.pid, reader, profiles, item.hello.client_random)
            self.stats.search_seconds += time.perf_counter() - started
            self.stats.searches += 1
            if located is None:
                return False
            item.ssl, item.profile = located
            self.stats.found += 1
        assert item.profile is not None
        secrets = read_secrets(MemoryFields(reader, item.profile, item.ssl))
        if secrets is None or secrets.client_random != item.hello.client_random:
            item.ssl = None  # the object was freed or reused: search again
            return False
        if not secrets.complete:
            return False
        self.publish(item.pid, secrets, item.profile, item.seen_at)
        self.stats.published += 1
        return True

    def _locate(self, pid: int, reader: ProcessMemory, profiles: list[Profile], random: bytes) -> tuple[int, Profile] | None:
        for refresh in (False, True):
            if refresh or pid not in self._maps:
                self._maps[pid] = read_maps(pid)
            maps = self._maps[pid]
            for hit in find_all(reader, maps, random):
                for profile in profiles:
                    for ssl in self._candidates(reader, maps, profile, hit):
                        try:
                            secrets = read_secrets(MemoryFields(reader, profile, ssl))
                        except GuestAccessError:
                            continue
                        if secrets is not None and secrets.client_random == random:
                            return ssl, profile
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
        for pid in list(self._readers):
            self._forget(pid)
