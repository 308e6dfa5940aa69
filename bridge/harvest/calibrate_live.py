"""``tls-bridge profile calibrate --pid PID --keylog FILE``: calibration against a
running process, for an OpenSSL that cannot be loaded with ctypes (linked into
an executable: node, statically built servers).

Uprobes on the process's ``SSL_*`` functions report the ``SSL *`` of each call
and, copied *by the kernel at hook time*, the object's bytes (``OBJECT_SPAN``);
a probe on ``SSL_SESSION_free`` copies each session as ``SSL_free`` lets go of
it (its TLS 1.2 master key).  Reading ``/proc/PID/mem`` when the event is
processed is too late for short connections: a curl connection to a local node
server lives a few milliseconds, the events are read tens of milliseconds
later, and by then the object is freed, cleared, or already the next
connection's.  (Should the probes that copy not be accepted, the object and
what its pointers point at are copied from ``/proc/PID/mem`` as events arrive,
which works for connections held open a moment.)  The copies
are matched to the key log a test client writes: the object that holds a
logged client random is that connection's.  With TLS 1.2 and TLS 1.3 (a
SHA-256 and a SHA-384 suite) connections seen, the search of
:mod:`bridge.harvest.calibrate` runs on the copies.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from bridge import __version__
from bridge.errors import GuestAccessError, ProfileError
from bridge.harvest.calibrate import OBJECT_SPAN, POINTED_SPAN, Sample, calibrate
from bridge.harvest.calibrate_ctypes import verify
from bridge.harvest.memory import ProcessMemory, read_maps
from bridge.harvest.profile import Profile
from bridge.harvest.targets import TargetFinder
from bridge.errors import HookError
from bridge.harvest.uprobes import HOOK_FUNCTIONS, HookEvent, UprobeSession
from bridge.secrets import CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0
from bridge.keys.keylog import KeyLogStats, read_keylog


_MAX_COPIES = 16
_MAX_OBJECTS = 4096
#: Copied at hook time: each SSL object at every call, each session as it is released.
SESSION_FREE = "SSL_SESSION_free"
SNAPSHOTS = {**{function: OBJECT_SPAN for function in HOOK_FUNCTIONS}, SESSION_FREE: POINTED_SPAN}


class SnapshotReader:
    """Memory copied at one moment, read like live memory (live reads fill gaps).

    ``static``: live reads only within these (start, end) ranges — the mapped
    files (an ``SSL_CIPHER`` lives in the binary's data): a copy the kernel took
    at hook time must not be completed with heap bytes read much later, which
    may belong to another connection by then."""

    def __init__(self, live: ProcessMemory, static: list[tuple[int, int]] | None = None) -> None:
        self.live = live
        self.static = static
        self._regions: list[tuple[int, bytes]] = []

    def capture(self, address: int, size: int) -> bytes:
        data = self.live.read_upto(address, size)
        if data:
            self._regions.append((address, data))
        return data

    def add(self, address: int, data: bytes) -> None:
        """Bytes copied elsewhere (by the kernel at hook time)."""
        if data:
            self._regions.append((address, data))

    def has(self, address: int) -> bool:
        return any(start == address for start, _ in self._regions)

    def capture_object(self, address: int) -> None:
        data = self.capture(address, OBJECT_SPAN)
        for offset in range(0, len(data) - 7, 8):
            pointer = int.from_bytes(data[offset : offset + 8], "little")
            if 0x10000 <= pointer < 1 << 47 and not pointer & 7:
                self.capture(pointer, POINTED_SPAN)

    def read_upto(self, address: int, size: int) -> bytes:
        # First captured first: the object itself was read before what it points at,
        # and a later read of an overlapping span may already see it changed.
        for start, data in self._regions:
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        for start, data in self._regions:  # what was readable at the time, where it ended early
            if start == address:
                return data[:size]
        if self.static is not None and not any(low <= address and address + size <= high for low, high in self.static):
            return b""
        return self.live.read_upto(address, size)

    def read(self, address: int, size: int) -> bytes:
        data = self.read_upto(address, size)
        if len(data) != size:
            raise GuestAccessError(f"{address:#x}+{size:#x} is not readable")
        return data


def _keylog_connections(path: str) -> dict[bytes, dict[str, bytes]]:
    connections: dict[bytes, dict[str, bytes]] = {}
    try:
        entries = read_keylog(path, KeyLogStats())
    except OSError:
        return connections
    for entry in entries:
        connections.setdefault(entry.client_random, {})[entry.label] = entry.secret
    return connections


def _enough(samples: list[Sample], wanted: int) -> bool:
    versions = {s.version for s in samples}
    lengths = {s.hash_length for s in samples if s.version == 0x0304}
    return len(samples) >= wanted and {0x0303, 0x0304} <= versions and lengths == {32, 48}


def calibrate_process(
    pid: int,
    keylog: str | None,
    *,
    binary: str | None = None,
    duration: float = 60.0,
    min_connections: int = 6,
    log: Callable[[str], None] = lambda text: None,
) -> Profile:
    if not keylog:
        raise ProfileError("calibrating a live process needs --keylog: the key log its test client writes")
    started = time.monotonic()
    target = TargetFinder(pids=(pid,)).inspect(pid)
    if target is None:
        raise ProfileError(f"process {pid} maps no OpenSSL (or is gone)")
    candidates = [b for b in target.binaries if binary is None or b.path == binary]
    if len(candidates) != 1:
        raise ProfileError(f"process {pid} maps {len(target.binaries)} OpenSSL builds "
                           f"({', '.join(b.path for b in target.binaries)}): choose one with --binary")
    chosen = candidates[0]
    memory = ProcessMemory(pid)
    static = [(m.start, m.end) for m in read_maps(pid) if m.path.startswith("/") and m.inode]  # mapped files
    samples: list[Sample] = []
    current: dict[int, _Object] = {}  # SSL * → the connection living there now
    objects: list[_Object] = []
    try:
        with UprobeSession() as session:
            try:
                session.attach(chosen.path, chosen.image, None, (*HOOK_FUNCTIONS, SESSION_FREE), snapshot=SNAPSHOTS)
            except HookError as exc:  # copies from /proc/PID/mem as events arrive
                log(f"warning: {exc}; copying memory when events arrive (hold test connections open a moment)")
                session.attach(chosen.path, chosen.image, None)
            log(f"watching {target.comm}[{pid}] ({chosen.path}); connect with a client writing {keylog}: "
                "TLS 1.2 and TLS 1.3 with a SHA-256 and a SHA-384 suite")
            deadline = started + duration
            while time.monotonic() < deadline and not _enough(samples, min_connections):
                for event in session.read(0.05):
                    if event.tgid == pid:
                        _observe(memory, current, objects, event, static)
                samples = _match(objects, _keylog_connections(keylog))
        profile = _profile(chosen, samples, started)
    finally:
        memory.close()
    log(f"{len(samples)} connections matched to the key log")
    return profile


class _Object:
    """One connection's SSL object (an address is reused after SSL_free), with the
    copies taken of it.  Events are read a moment after the call: a late copy may
    find the object already cleared, so every copy is kept and the best one used."""

    def __init__(self, ssl: int) -> None:
        self.ssl = ssl
        self.copies: list[SnapshotReader] = []
        self.freed = False


def _observe(memory: ProcessMemory, current: dict[int, _Object], objects: list[_Object], event: HookEvent,
             static: list[tuple[int, int]]) -> None:
    if event.function == SESSION_FREE:
        _session_released(current, event)
        return
    ssl = event.ssl
    obj = current.get(ssl)
    if obj is None or obj.freed:
        obj = current[ssl] = _Object(ssl)
        objects.append(obj)
        if len(objects) > _MAX_OBJECTS:
            objects.pop(0)
    if len(obj.copies) < _MAX_COPIES:
        if event.memory:
            copy = SnapshotReader(memory, static)
            copy.add(ssl, event.memory)  # the object as it was at the call
        else:
            copy = SnapshotReader(memory)
            copy.capture_object(ssl)
        obj.copies.append(copy)
    if event.function == "SSL_free":
        obj.freed = True


def _session_released(current: dict[int, _Object], event: HookEvent) -> None:
    """A session as it was when released (``SSL_free`` releases its connection's):
    added to the copies of the objects that point at it and have no copy of it
    yet.  Only the objects living at their address now: an older one whose
    session had the same address is another connection's."""
    if not event.memory or event.ssl < 0x10000:
        return
    word = event.ssl.to_bytes(8, "little")
    for obj in current.values():
        for copy in obj.copies:
            if copy.has(obj.ssl) and not copy.has(event.ssl) and _aligned(copy.read_upto(obj.ssl, OBJECT_SPAN), word):
                copy.add(event.ssl, event.memory)


def _aligned(data: bytes, word: bytes) -> bool:
    index = data.find(word)
    while index >= 0:
        if index % 8 == 0:
            return True
        index = data.find(word, index + 1)
    return False


def _offsets_of(data: bytes, needle: bytes) -> list[int]:
    found, index = [], data.find(needle)
    while index >= 0:
        found.append(index)
        index = data.find(needle, index + 1)
    return found


def _match(objects: list[_Object], connections: dict[bytes, dict[str, bytes]]) -> list[Sample]:
    """Samples whose copies agree on where the client random is.

    Copies are taken a moment after each call, so a copy may show the object
    already cleared, or (the address reused) the next connection; and the span
    read past the object's end holds its heap neighbours.  A logged client random
    may thus turn up anywhere.  The offset at which the most connections' randoms
    appear is the field; a copy counts only with its connection's random there
    (and, TLS 1.3, its traffic secret in the object; TLS 1.2, its master secret
    behind a pointer).  Builds that keep the random behind a pointer (1.1.1) are
    matched through the pointer.
    """
    votes: dict[int, set[bytes]] = {}
    for obj in objects:
        for copy in obj.copies:
            data = copy.read_upto(obj.ssl, OBJECT_SPAN)
            for random in connections:
                for offset in _offsets_of(data, random):
                    votes.setdefault(offset, set()).add(random)
    offset = max(votes, key=lambda o: (len(votes[o]), -o)) if votes else None
    samples = []
    for obj in objects:
        for copy in reversed(obj.copies):
            data = copy.read_upto(obj.ssl, OBJECT_SPAN)
            if offset is not None:
                random = data[offset : offset + 32]
                sample = _sample(obj.ssl, copy, data, random, connections.get(random))
            else:
                sample = next((_sample(obj.ssl, copy, data, r, s) for r, s in connections.items()
                               if _behind_pointer(copy, data, r)), None)
            if sample is not None:
                samples.append(sample)
                break
    return samples


def _sample(ssl: int, copy: SnapshotReader, data: bytes, random: bytes, secrets: dict[str, bytes] | None) -> Sample | None:
    if not secrets:
        return None
    if CLIENT_RANDOM in secrets:
        if _behind_pointer(copy, data, secrets[CLIENT_RANDOM]):
            return Sample(ssl, 0x0303, None, random, secrets, reader=copy)
    elif secrets.get(CLIENT_TRAFFIC_SECRET_0, b"\0") in data:
        return Sample(ssl, 0x0304, None, random, secrets, reader=copy)
    return None


def _behind_pointer(snapshot: SnapshotReader, data: bytes, needle: bytes) -> bool:
    for offset in range(0, len(data) - 7, 8):
        pointer = int.from_bytes(data[offset : offset + 8], "little")
        if 0x10000 <= pointer < 1 << 47 and not pointer & 7 and needle in snapshot.read_upto(pointer, POINTED_SPAN):
            return True
    return False


def _profile(chosen, samples: list[Sample], started: float) -> Profile:  # type: ignore[no-untyped-def]
    if not _enough(samples, 1):
        raise ProfileError(f"only {len(samples)} connections matched the key log; need TLS 1.2 and TLS 1.3 with a "
                           "SHA-256 and a SHA-384 suite (is the client writing that key log, to this process?)")
    fields = calibrate(lambda address, size: b"", samples)  # every sample brings its own copy
    profile = Profile(
        build_id=chosen.build_id,
        openssl_version=chosen.image.openssl_version,
        library=chosen.path.rsplit("/", 1)[-1],
        fields=fields,
        made={
            "method": "calibrate --pid (uprobes on the live process, a client's key log as ground truth)",
            "tool": f"tls-bridge {__version__}",
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "samples": len(samples),
        },
    )
    verify(profile, None, samples)
    profile.made["seconds"] = round(time.monotonic() - started, 3)
    return profile
