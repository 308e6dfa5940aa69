"""The host-process harvester: targets → profiles → triggers → secrets → sinks.

Triggers:

* ``hooks``: uprobes on the OpenSSL entry points of every target's build
  (:mod:`bridge.harvest.uprobes`); the kernel fetches the fields at hook
  time; a field it could not fetch (a page not present) is read from
  ``/proc/PID/mem`` at once;
* ``wire``: ClientHellos seen on an interface (:mod:`bridge.harvest.wire_search`);
* ``requests``: sensors' key requests from the key feed (:meth:`ProcessHarvester.request`),
  searched for like a ClientHello seen on the wire.

Secrets are published once per connection — when they are complete, keyed by
the client random (a TLS 1.2 renegotiation has a new one) — to every sink: a
key log file, the key feed.  New processes are picked up by a rescan every
``rescan_interval`` seconds; a build without a profile is reported once, with
the command that makes one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bridge.capture.frames import Frame
from bridge.errors import BridgeError, GuestAccessError
from bridge.harvest.chain import ConnectionSecrets, MemoryFields, read_secrets
from bridge.harvest.memory import ProcessGoneError, ProcessMemory
from bridge.harvest.profile import MissingProfileError, Profile, ProfileStore
from bridge.harvest.targets import OpenSslBinary, TargetFinder, TargetProcess
from bridge.harvest.uprobes import HOOK_FUNCTIONS, HookEvent, UprobeSession
from bridge.harvest.wire_search import HelloInbox, WireHello, WireSearch, hellos, request_event
from bridge.keyfeed.wire import KeyRecord, KeyRequest, Origin

KeySink = Callable[[KeyRecord], None]


@dataclass(slots=True)
class HarvestStats:
    processes: int = 0
    binaries_hooked: int = 0
    hook_events: int = 0
    events_other_processes: int = 0
    connections: int = 0  # records published
    republished: int = 0  # a connection published again with more secrets
    fallback_reads: int = 0  # fields read from /proc/PID/mem because the kernel could not fetch them
    incomplete_at_free: int = 0  # SSL_free with no complete secrets (failed or unfinished handshakes)
    missing_profiles: dict[str, str] = field(default_factory=dict)  # build-id → message
    #: Seconds from the trigger (the hook firing, the ClientHello captured) to the record published.
    latencies: list[float] = field(default_factory=list)

    def latency_percentiles(self) -> tuple[float, float] | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class _Published:
    """Client randoms already published, with the labels they had (bounded LRU)."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self._labels: OrderedDict[bytes, frozenset[str]] = OrderedDict()
        self.limit = limit

    def new_labels(self, secrets: ConnectionSecrets) -> bool:
        labels = frozenset(secrets.secrets)
        before = self._labels.get(secrets.client_random)
        if before is not None and labels <= before:
            return False
        self._labels[secrets.client_random] = labels | (before or frozenset())
        self._labels.move_to_end(secrets.client_random)
        while len(self._labels) > self.limit:
            self._labels.popitem(last=False)
        return True

    def seen(self, client_random: bytes) -> bool:
        return client_random in self._labels


class ProcessHarvester:
    def __init__(
        self,
        finder: TargetFinder,
        profiles: ProfileStore,
        sinks: list[KeySink],
        *,
        hooks: tuple[str, ...] | None = HOOK_FUNCTIONS,
        wire: Iterator[Frame | None] | None = None,
        requests: bool = False,
        rescan_interval: float = 1.0,
        log: Callable[[str], None] = lambda text: None,
    ) -> None:
        if hooks is None and wire is None and not requests:
            raise ValueError("no trigger: hooks, wire, requests, or several")
        self.finder = finder
        self.profiles = profiles
        self.sinks = sinks
        self.rescan_interval = rescan_interval
        self.log = log
        self.stats = HarvestStats()
        self.host = socket.gethostname()
        self._targets: dict[int, TargetProcess] = {}
        self._profiles_by_pid: dict[int, list[tuple[OpenSslBinary, Profile]]] = {}
        self._published = _Published()
        self._readers: dict[int, ProcessMemory] = {}
        self._lock = threading.Lock()
        self.hook_functions = hooks
        self.uprobes = UprobeSession() if hooks is not None else None
        self._hooked: set[str] = set()
        searching = wire is not None or requests
        self.wire = (WireSearch(self._wire_targets, self._publish_wire, published=self._published.seen)
                     if searching else None)
        self._wire_frames = wire
        #: Connections to search for, from the capture thread and the key feed's thread.
        self.inbox = HelloInbox()
        self.accepts_requests = requests

    # --- targets ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan processes; hook new builds; drop processes that exited."""
        current = {target.pid: target for target in self.finder.scan()}
        with self._lock:
            for pid in set(self._targets) - set(current):
                self._drop(pid)
            for pid, target in current.items():
                if pid not in self._targets:
                    self._add(target)
            self.stats.processes = len(self._targets)

    def _add(self, target: TargetProcess) -> None:
        self._targets[target.pid] = target
        usable: list[tuple[OpenSslBinary, Profile]] = []
        for binary in target.binaries:
            try:
                profile = self.profiles.require(binary.build_id, binary.path, binary.image.openssl_version)
            except MissingProfileError as exc:
                if binary.build_id not in self.stats.missing_profiles:
                    self.stats.missing_profiles[binary.build_id] = str(exc)
                    self.log(f"warning: process {target.pid} ({target.comm}): {exc}")
                continue
            usable.append((binary, profile))
            if self.uprobes is not None and binary.path not in self._hooked:
                functions = self.uprobes.attach(binary.path, binary.image, profile, self.hook_functions)
                self._hooked.add(binary.path)
                self.stats.binaries_hooked += 1
                self.log(f"hooked {binary.path} ({profile.openssl_version}): {', '.join(functions)}")
        self._profiles_by_pid[target.pid] = usable

    def _drop(self, pid: int) -> None:
        self._targets.pop(pid, None)
        self._profiles_by_pid.pop(pid, None)
        reader = self._readers.pop(pid, None)
        if reader is not None:
            reader.close()

    def _wire_targets(self) -> dict[int, list[Profile]]:
        with self._lock:
            return {pid: [profile for _, profile in pairs] for pid, pairs in self._profiles_by_pid.items() if pairs}

    def _profile_for(self, pid: int, binary: str | None) -> Profile | None:
        pairs = self._profiles_by_pid.get(pid)
        if pairs is None:
            return None
        for candidate, profile in pairs:
            if binary is None or candidate.path == binary:
                return profile
        return None

    # --- hook events -----------------------------------------------------------------------

    def on_event(self, event: HookEvent) -> None:
        self.stats.hook_events += 1
        with self._lock:
            profile = self._profile_for(event.tgid, event.binary)
        if profile is None:
            self.stats.events_other_processes += 1
            return
        secrets = read_secrets(event)
        if secrets is None or not secrets.complete:
            secrets = self._read_from_memory(event, profile)
        if secrets is None or not secrets.complete:
            if event.function == "SSL_free" and secrets is not None and not self._published.seen(secrets.client_random):
                self.stats.incomplete_at_free += 1
            return
        # Most events are later calls on a connection already published: nothing new.
        if self._published.new_labels(secrets):
            self._publish(event.tgid, secrets, profile, f"uprobe:{event.function}")
            self._latency(time.monotonic() - event.timestamp)

    def _read_from_memory(self, event: HookEvent, profile: Profile) -> ConnectionSecrets | None:
        reader = self._readers.get(event.tgid)
        try:
            if reader is None:
                reader = self._readers[event.tgid] = ProcessMemory(event.tgid)
            self.stats.fallback_reads += 1
            return read_secrets(MemoryFields(reader, profile, event.ssl))
        except ProcessGoneError:
            with self._lock:
                self._drop(event.tgid)
        except GuestAccessError as exc:
            self.log(f"warning: {exc}")
        return None

    # --- publishing --------------------------------------------------------------------------

    def _publish_wire(self, pid: int, secrets: ConnectionSecrets, profile: Profile, hello: WireHello,
                      seen_at: float) -> None:
        if self._published.new_labels(secrets):
            self._publish(pid, secrets, profile, hello.trigger)
            self._latency(time.monotonic() - seen_at)

    def request(self, request: KeyRequest) -> None:
        """A sensor's key request (the key feed's thread): searched for like a
        ClientHello on the wire, when this harvester takes requests."""
        if self.accepts_requests:
            self.inbox.put(request_event(request))

    def _latency(self, seconds: float) -> None:
        if 0 <= seconds < 3600 and len(self.stats.latencies) < 100_000:
            self.stats.latencies.append(seconds)

    def _publish(self, pid: int, secrets: ConnectionSecrets, profile: Profile, trigger: str) -> None:
        target = self._targets.get(pid)
        binary = next((b for b, p in self._profiles_by_pid.get(pid, []) if p is profile), None)
        origin = Origin(
            host=self.host[:255],
            pid=pid,
            comm=(target.comm if target else None),
            exe=(target.exe[:1024] if target else None),
            library=(binary.path[:256] if binary else profile.library),
            build_id=profile.build_id,
            trigger=trigger,
        )
        record = KeyRecord(
            client_random=secrets.client_random,
            secrets=dict(secrets.secrets),
            captured_at=time.time(),
            tls_version=secrets.version if secrets.version in (0x0303, 0x0304) else None,
            cipher_suite=secrets.cipher_suite,
            origin=origin,
        )
        self.stats.connections += 1
        for sink in self.sinks:
            sink(record)

    # --- driving -------------------------------------------------------------------------------

    def _wire_reader(self, stop: threading.Event) -> None:
        assert self._wire_frames is not None
        for event in hellos(self._wire_frames, ends=True):
            if stop.is_set():
                return
            if event is not None:
                self.inbox.put(event)

    def run(self, stop: threading.Event) -> None:
        self.refresh()
        wire_thread = None
        if self._wire_frames is not None:
            wire_thread = threading.Thread(target=self._wire_reader, args=(stop,), name="harvest-wire", daemon=True)
            wire_thread.start()
        next_scan = time.monotonic() + self.rescan_interval
        while not stop.is_set():
            if self.uprobes is not None:
                for event in self.uprobes.read(0.002 if self.wire is not None else 0.1):
                    self.on_event(event)
            else:
                stop.wait(0.002)
            if self.wire is not None:
                now = time.monotonic()
                for event in self.inbox.take():
                    self.wire.add(event, now)
                self.wire.step(now)
            if time.monotonic() >= next_scan:
                self.refresh()
                next_scan = time.monotonic() + self.rescan_interval
        if self.uprobes is not None:  # what the kernel recorded before the stop
            for event in self.uprobes.read(0.05):
                self.on_event(event)

    def close(self) -> None:
        if self.uprobes is not None:
            self.uprobes.close()
        if self.wire is not None:
            self.wire.close()
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def check_privileges() -> None:
    """Hooks and /proc/PID/mem of other users' processes need root (or
    CAP_SYS_PTRACE, and CAP_SYS_ADMIN for tracefs)."""
    from bridge.privileges import missing

    lacking = missing("CAP_SYS_PTRACE", "CAP_SYS_ADMIN")
    if lacking:
        raise BridgeError(f"the harvester needs root, or the capabilities {', '.join(lacking)} "
                          "(and CAP_PERFMON for uprobes)")
