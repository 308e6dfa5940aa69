"""The host-process harvester: targets → profiles → triggers → secrets → sinks.

Triggers:

* ``hooks``: uprobes on the OpenSSL entry points of every target's build
  (:mod:`bridge.harvest.uprobes`); the kernel fetches the fields at hook
  time; a field it could not fetch (a page not present) is read from
  ``/proc/PID/mem`` at once.  Go's crypto/tls and GnuTLS are hooked at their
  own key-log function instead (:mod:`bridge.harvest.keylog_hooks`): the
  secrets are its arguments, no layout is involved;
* ``wire``: ClientHellos seen on an interface (:mod:`bridge.harvest.wire_search`);
* ``requests``: sensors' key requests from the key feed (:meth:`ProcessHarvester.request`),
  searched for like a ClientHello seen on the wire.

Secrets are published once per connection — when they are complete, keyed by
the client random (a TLS 1.2 renegotiation has a new one) — to every sink: a
key log file, the key feed.  New processes are picked up by a rescan every
``rescan_interval`` seconds.  Each build's layout comes from the
:class:`~bridge.harvest.resolve.LayoutResolver`: shipped or cached, calibrated
here in a sandbox at first sight, or a candidate confirmed on a live
connection before anything read through it is published.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bridge.capture.frames import Frame
from bridge.errors import BridgeError, GuestAccessError
from bridge.harvest.chain import MemoryFields, is_other_object, read_secrets
from bridge.secrets import ConnectionSecrets
from bridge.harvest.confirm import memory_evidence
from bridge.harvest.keylog_hooks import KeyLogAssembler, KeyLogBinary
from bridge.harvest.memory import ProcessGoneError, ProcessMemory, present, read_maps
from bridge.harvest.profile import Profile
from bridge.harvest.resolve import LEARNING, READY, BuildLayout, LayoutResolver
from bridge.harvest.targets import OpenSslBinary, TargetFinder, TargetProcess, is_shared_libssl
from bridge.harvest.uprobes import HOOK_FUNCTIONS, HookEvent, RawHookEvent, UprobeSession
from bridge.harvest.wire_search import HelloInbox, WireHello, WireSearch, hellos, request_event
from bridge.keyfeed.wire import KeyRecord, KeyRequest, Origin

KeySink = Callable[[KeyRecord], None]
#: Learning: client randoms remembered, and tries per connection (a handshake not finished yet).
_NAMED_LIMIT = 4096
_LEARN_TRIES = 8
_LEARNING_OBJECTS = 128


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
    unconfirmed: int = 0  # secrets read through a layout that did not confirm them: not published
    keylog_binaries_hooked: int = 0  # binaries hooked at a library's key-log function (Go, GnuTLS)
    keylog_lines: int = 0  # key log lines read at those hooks
    keylog_undecodable: int = 0  # hits there whose arguments were no key log line
    quic_objects: int = 0  # hooked calls on an OpenSSL 3.2+ QUIC object (no TLS connection's fields): skipped
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

    def would_add(self, secrets: ConnectionSecrets) -> bool:
        before = self._labels.get(secrets.client_random)
        return before is None or not frozenset(secrets.secrets) <= before


class ProcessHarvester:
    def __init__(
        self,
        finder: TargetFinder,
        resolver: LayoutResolver,
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
        self.resolver = resolver
        self.sinks = sinks
        self.rescan_interval = rescan_interval
        self.log = log
        self.stats = HarvestStats()
        self.host = socket.gethostname()
        self._targets: dict[int, TargetProcess] = {}
        self._profiles_by_pid: dict[int, list[tuple[OpenSslBinary, BuildLayout]]] = {}
        #: (pid, SSL *) of hook events seen while their build's layout was not ready (bounded)
        self._unready_seen: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._published = _Published()
        self._readers: dict[int, ProcessMemory] = {}
        self._lock = threading.Lock()
        self.hook_functions = hooks
        self.uprobes = UprobeSession() if hooks is not None else None
        #: binary path → the profile whose fields its probes fetch (None: only the SSL *)
        self._hooked: dict[str, Profile | None] = {}
        searching = wire is not None or requests
        self.wire = (WireSearch(self._wire_targets, self._publish_wire, published=self._published.seen,
                                vouch=resolver.vouch, saw=resolver.saw_connection)
                     if searching else None)
        self._wire_frames = wire
        #: Connections to search for, from the capture thread and the key feed's thread.
        self.inbox = HelloInbox()
        self.accepts_requests = requests
        #: Client randoms named by the wire or sensors lately, by their first 8 bytes (learning).
        self._named: OrderedDict[bytes, bytes] = OrderedDict()
        #: (pid, SSL *, client random) → attempts to learn from it (bounded)
        self._learning_tries: OrderedDict[tuple[int, int, bytes], int] = OrderedDict()
        #: Objects hooked on builds being learned, looked at again when a connection is named
        #: (its ClientHello may be read after the hooked calls): (pid, SSL *) → (layout, function)
        self._learning_objects: OrderedDict[tuple[int, int], tuple[BuildLayout, str]] = OrderedDict()
        self._named_since_sweep = False
        self._learning_warned: set[str] = set()
        #: Key-log functions hooked: event tag → hook point; their lines, by connection
        self._keylog_points: dict[str, KeyLogBinary] = {}
        #: (device, inode, offset) probed: a binary replaced at the same path (a redeploy) is probed anew
        self._keylog_hooked: set[tuple[int, int, int]] = set()
        self.keylog = KeyLogAssembler()
        self._hook_errors_said: set[str] = set()

    # --- targets ---------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan processes; hook builds whose layout is (now) known; drop processes that exited."""
        current = {target.pid: target for target in self.finder.scan()}
        with self._lock:
            for pid in set(self._targets) - set(current):
                self._drop(pid)
            for pid, target in current.items():
                if pid not in self._targets:
                    self._add(target)
            for pairs in self._profiles_by_pid.values():
                for binary, layout in pairs:
                    self._hook(binary, layout)
            self.stats.processes = len(self._targets)

    def _add(self, target: TargetProcess) -> None:
        self._targets[target.pid] = target
        pairs: list[tuple[OpenSslBinary, BuildLayout]] = []
        for binary in target.binaries:
            layout = self.resolver.layout(binary.build_id, binary.path, binary.image.openssl_version,
                                          loadable_path=binary.path if is_shared_libssl(binary.path) else None)
            pairs.append((binary, layout))
        self._profiles_by_pid[target.pid] = pairs
        self._hook_keylog(target)

    def _hook_keylog(self, target: TargetProcess) -> None:
        """Probe the key-log functions of a target's Go or GnuTLS (once per binary)."""
        for path, error in self.finder.hook_errors.items():
            if path not in self._hook_errors_said:
                self._hook_errors_said.add(path)
                self.log(f"warning: {path} is not hooked: {error}")
        for point in target.keylog:
            try:
                status = os.stat(point.path)
            except OSError:
                continue  # gone since it was inspected
            key = (status.st_dev, status.st_ino, point.offset)
            if key in self._keylog_hooked:
                continue
            if self.uprobes is None:
                self._keylog_hooked.add(key)
                self.log(f"warning: {point.path} ({point.library}) is harvested only by hooks at its key-log "
                         "function: add hooks to --trigger")
                continue
            tag = str(len(self._keylog_points))
            try:
                self.uprobes.attach_raw(point.path, point.offset, tag, point.probe_args)
            except BridgeError as exc:
                self.log(f"warning: {point.path} ({point.library}): {exc}")
                continue
            self._keylog_points[tag] = point
            self._keylog_hooked.add(key)
            self.stats.keylog_binaries_hooked += 1
            self.log(f"hooked {point.path} ({point.library}): {point.function}, its key-log function "
                     "(secrets from its arguments, no layout needed)")

    def _hook(self, binary: OpenSslBinary, layout: BuildLayout) -> None:
        """Probe a build once its layout can be read: with the profile's fields fetched
        at hook time when it is ready, else only the ``SSL *`` (candidates are read
        from memory)."""
        if self.uprobes is None or not layout.harvestable:
            return
        profile = layout.profile if layout.state == READY else None
        if binary.path in self._hooked:
            if self._hooked[binary.path] is None and profile is not None:  # confirmed or learned since
                try:
                    self.uprobes.reattach(binary.path, binary.image, profile, self.hook_functions)
                except BridgeError as exc:
                    self.log(f"warning: {binary.path}: its probes could not fetch the fields now known: {exc}")
                    return
                self._hooked[binary.path] = profile
                self.log(f"hooked {binary.path} again: the fields of its {layout.origin} layout fetched at hook time")
            return
        functions = self.uprobes.attach(binary.path, binary.image, profile, self.hook_functions)
        self._hooked[binary.path] = profile
        self.stats.binaries_hooked += 1
        self.log(f"hooked {binary.path} ({layout.version or layout.build_id}): {', '.join(functions)}"
                 + ("" if profile is not None else " (fields read from memory until the layout is confirmed)"))

    def _drop(self, pid: int) -> None:
        self._targets.pop(pid, None)
        self._profiles_by_pid.pop(pid, None)
        reader = self._readers.pop(pid, None)
        if reader is not None:
            reader.close()

    def _hooks_cover_all(self) -> bool:
        """Every target's every build hooked with its fields fetched at hook time: a
        connection named on the wire needs no search (finding its process alone reads
        every socket table and file descriptor)."""
        if self.uprobes is None or not self._profiles_by_pid:
            return False
        return all(layout.state == READY and layout.profile is not None
                   and self._hooked.get(binary.path) is layout.profile
                   for pairs in self._profiles_by_pid.values() for binary, layout in pairs)

    def _wire_targets(self) -> dict[int, list[BuildLayout]]:
        with self._lock:
            return {pid: [layout for _, layout in pairs] for pid, pairs in self._profiles_by_pid.items() if pairs}

    def _layout_for(self, pid: int, binary: str | None) -> BuildLayout | None:
        pairs = self._profiles_by_pid.get(pid)
        if pairs is None:
            return None
        for candidate, layout in pairs:
            if binary is None or candidate.path == binary:
                return layout
        return None

    # --- hook events -----------------------------------------------------------------------

    def on_keylog_event(self, event: RawHookEvent) -> None:
        """A hit of a library's key-log function: one key log line; the connection
        published once its lines decrypt it, again when a later line adds a secret."""
        self.stats.hook_events += 1
        point = self._keylog_points.get(event.tag)
        if event.tgid not in self._targets:  # the trace had no tgid for a thread new to it: its tid
            event.tgid = _thread_group(event.tid) or event.tgid
        if point is None or event.tgid not in self._targets:
            self.stats.events_other_processes += 1
            return
        line = point.decode(event.args)
        if line is None:
            self.stats.keylog_undecodable += 1
        else:
            self.stats.keylog_lines += 1
        secrets = self.keylog.add(line)
        if secrets is not None and self._published.new_labels(secrets):
            self._emit(event.tgid, secrets, point.library, point.build_id, f"uprobe:{point.function}")
            self._latency(time.monotonic() - event.timestamp)

    def on_event(self, event: HookEvent | RawHookEvent) -> None:
        if isinstance(event, RawHookEvent):
            self.on_keylog_event(event)
            return
        self.stats.hook_events += 1
        with self._lock:
            layout = self._layout_for(event.tgid, event.binary)
            if layout is None and event.tgid not in self._targets:  # a thread the trace had no tgid for yet
                event.tgid = _thread_group(event.tid) or event.tgid
                layout = self._layout_for(event.tgid, event.binary)
        if layout is None:
            self.stats.events_other_processes += 1
            return
        if layout.state != READY:
            self._saw_unready(event, layout)
        if layout.state == LEARNING:
            self._learn(event, layout)
            return
        secrets, profile = None, layout.profile
        if profile is not None and self._hooked.get(event.binary) is profile:
            if is_other_object(event):
                self.stats.quic_objects += 1
                return
            secrets = read_secrets(event)  # fetched by the kernel at hook time
        if secrets is None or not secrets.complete:
            secrets, profile = self._read_from_memory(event, layout)
        if secrets is None or not secrets.complete or profile is None:
            if event.function == "SSL_free" and secrets is not None and not self._published.seen(secrets.client_random):
                self.stats.incomplete_at_free += 1
            return
        # Most events are later calls on a connection already published: nothing new.
        if self._published.seen(secrets.client_random) and not self._published.would_add(secrets):
            return
        if not self._vouch(event.tgid, event.ssl, layout, profile, secrets):
            return
        if self._published.new_labels(secrets):
            self._publish(event.tgid, secrets, layout, f"uprobe:{event.function}")
            self._latency(time.monotonic() - event.timestamp)

    def _saw_unready(self, event: HookEvent, layout: BuildLayout) -> None:
        key = (event.tgid, event.ssl)
        if key in self._unready_seen:
            return
        self._unready_seen[key] = None
        if len(self._unready_seen) > 10_000:
            self._unready_seen.popitem(last=False)
        self.resolver.saw_connection(layout)

    def _vouch(self, pid: int, ssl: int, layout: BuildLayout, profile: Profile, secrets: ConnectionSecrets) -> bool:
        reader = self._readers.get(pid)
        if reader is None:
            try:
                reader = self._readers[pid] = ProcessMemory(pid)
            except GuestAccessError:
                return False

        def evidence():  # type: ignore[no-untyped-def]
            maps = read_maps(pid)
            return memory_evidence(reader, profile, ssl, lambda needles: present(reader, maps, needles))

        try:
            verdict = self.resolver.vouch(layout, profile, secrets, evidence)
        except (ProcessGoneError, GuestAccessError):
            verdict = False
        if verdict:
            return True
        if verdict is False:
            self.stats.unconfirmed += 1
        return False  # undecided (None): the connection's next hooked call tries again

    # --- learning a layout --------------------------------------------------------------------------

    def _name(self, client_random: bytes) -> None:
        """A connection named by the wire or a sensor: learning looks for it in the hooked objects."""
        self._named[client_random[:8]] = client_random
        self._named.move_to_end(client_random[:8])
        while len(self._named) > _NAMED_LIMIT:
            self._named.popitem(last=False)
        self._named_since_sweep = True

    def _learn(self, event: HookEvent, layout: BuildLayout) -> None:
        """A hooked call on a build being learned: its object is tried now, and again
        when a connection is named later (:meth:`_learning_sweep`)."""
        if self.wire is None:
            if layout.build_id not in self._learning_warned:
                self._learning_warned.add(layout.build_id)
                self.log(f"{layout.library} (build-id {layout.build_id}): learning its layout needs the connections' "
                         "client randoms: --trigger hooks,wire (or hooks,requests)")
            return
        key = (event.tgid, event.ssl)
        self._learning_objects[key] = (layout, event.function)
        self._learning_objects.move_to_end(key)
        while len(self._learning_objects) > _LEARNING_OBJECTS:
            self._learning_objects.popitem(last=False)
        self._learn_from(event.tgid, event.ssl, layout, event.function)

    def _learning_sweep(self) -> None:
        """Connections were named: the objects hooked on builds being learned, once more."""
        self._named_since_sweep = False
        for (pid, ssl), (layout, function) in list(self._learning_objects.items()):
            if layout.state != LEARNING:
                self._learning_objects.pop((pid, ssl), None)
            else:
                self._learn_from(pid, ssl, layout, function)

    def _learn_from(self, pid: int, ssl: int, layout: BuildLayout, function: str) -> None:
        """If the object at ``ssl`` holds a client random the wire or a sensor named,
        derive that connection's secrets and hand them to the resolver; publish the
        connections learned from once the layout is."""
        from bridge.harvest.learn import named_random, observe

        try:
            reader = self._readers.get(pid) or self._readers.setdefault(pid, ProcessMemory(pid))
            random = named_random(reader.read_upto, ssl, self._named)
            if random is None:
                return
            key = (pid, ssl, random)
            tries = self._learning_tries.get(key, 0)
            if tries >= _LEARN_TRIES:
                return
            self._learning_tries[key] = tries + 1
            while len(self._learning_tries) > 10_000:
                self._learning_tries.popitem(last=False)
            maps = read_maps(pid)
            sample = observe(reader.read_upto, ssl, random, lambda needles: present(reader, maps, needles))
        except ProcessGoneError:
            with self._lock:
                self._drop(pid)
            return
        except GuestAccessError as exc:
            self.log(f"warning: {exc}")
            return
        if sample is None:
            return
        self._learning_tries[key] = _LEARN_TRIES  # learned from: not again
        self._learning_objects.pop((pid, ssl), None)
        profile = self.resolver.learn(layout, pid, sample)
        if profile is not None:
            self._publish_learned(layout, profile, f"uprobe:{function}")

    def _publish_learned(self, layout: BuildLayout, profile: Profile, trigger: str) -> None:
        """The connections the layout was learned from, read through it again (those
        still alive), published when they read what was derived for them; then the
        other objects hooked while learning, read through it like any."""
        others = [(pid, ssl) for (pid, ssl), (other, _) in self._learning_objects.items() if other is layout]
        for key in others:
            self._learning_objects.pop(key, None)
        for pid, ssl in others:
            reader = self._readers.get(pid)
            try:
                secrets = read_secrets(MemoryFields(reader, profile, ssl)) if reader is not None else None
            except GuestAccessError:
                continue
            if (secrets is not None and secrets.complete and self._published.would_add(secrets)
                    and self._vouch(pid, ssl, layout, profile, secrets) and self._published.new_labels(secrets)):
                self.resolver.recovered(layout)
                self._publish(pid, secrets, layout, trigger)
        for pid, sample in list(layout.learning):
            reader = self._readers.get(pid)
            if reader is None:
                continue
            try:
                secrets = read_secrets(MemoryFields(reader, profile, sample.ssl))
            except GuestAccessError:
                continue
            if (secrets is None or not secrets.complete or secrets.client_random != sample.client_random
                    or any(secrets.secrets.get(label) != value for label, value in sample.secrets.items())):
                continue
            self.resolver.recovered(layout)
            if self._published.new_labels(secrets):
                self._publish(pid, secrets, layout, trigger)

    def _read_from_memory(self, event: HookEvent, layout: BuildLayout) -> tuple[ConnectionSecrets | None, Profile | None]:
        """The connection's secrets read from the process's memory through the
        build's profile, or through the first candidate that reads this connection."""
        reader = self._readers.get(event.tgid)
        try:
            if reader is None:
                reader = self._readers[event.tgid] = ProcessMemory(event.tgid)
            self.stats.fallback_reads += 1
            fallback: tuple[ConnectionSecrets | None, Profile | None] = (None, None)
            for profile in layout.profiles():
                secrets = read_secrets(MemoryFields(reader, profile, event.ssl))
                if secrets is not None and secrets.complete:
                    return secrets, profile
                if fallback[0] is None:
                    fallback = (secrets, profile)
            return fallback
        except ProcessGoneError:
            with self._lock:
                self._drop(event.tgid)
        except GuestAccessError as exc:
            self.log(f"warning: {exc}")
        return None, None

    # --- publishing --------------------------------------------------------------------------

    def _publish_wire(self, pid: int, secrets: ConnectionSecrets, layout: BuildLayout, hello: WireHello,
                      seen_at: float) -> None:
        if self._published.new_labels(secrets):
            self._publish(pid, secrets, layout, hello.trigger)
            self._latency(time.monotonic() - seen_at)

    def request(self, request: KeyRequest) -> None:
        """A sensor's key request (the key feed's thread): searched for like a
        ClientHello on the wire, when this harvester takes requests."""
        if self.accepts_requests:
            self.inbox.put(request_event(request))

    def _latency(self, seconds: float) -> None:
        if 0 <= seconds < 3600 and len(self.stats.latencies) < 100_000:
            self.stats.latencies.append(seconds)

    def _publish(self, pid: int, secrets: ConnectionSecrets, layout: BuildLayout, trigger: str) -> None:
        binary = next((b for b, candidate in self._profiles_by_pid.get(pid, []) if candidate is layout), None)
        self._emit(pid, secrets, binary.path if binary else layout.library, layout.build_id, trigger)

    def _emit(self, pid: int, secrets: ConnectionSecrets, library: str, build_id: str, trigger: str) -> None:
        target = self._targets.get(pid)
        origin = Origin(
            host=self.host[:255],
            pid=pid,
            comm=(target.comm if target else None),
            exe=(target.exe[:1024] if target else None),
            library=library[:256],
            build_id=build_id,
            trigger=trigger,
        )
        record = KeyRecord(
            client_random=secrets.client_random,
            secrets=dict(secrets.secrets),
            captured_at=time.time(),
            tls_version=secrets.tls_version if secrets.tls_version in (0x0303, 0x0304) else None,
            cipher_suite=secrets.cipher_suite,
            origin=origin,
        )
        self.stats.connections += 1
        for sink in self.sinks:
            sink(record)

    # --- driving -------------------------------------------------------------------------------

    def _wire_reader(self, stop: threading.Event) -> None:
        assert self._wire_frames is not None
        for event in hellos(self._wire_frames, ends=True, first_records=self.resolver.first_records):
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
                covered = self._hooks_cover_all()
                for event in self.inbox.take():
                    if isinstance(event, WireHello):
                        self._name(event.client_random)
                        if covered:  # the hooks publish it: a search would only cost /proc reads
                            self.wire.intake.counts.named += 1
                            self.wire.intake.counts.requests += event.trigger == "request"
                            self.wire.intake.counts.hooked += 1
                            continue
                    self.wire.add(event, now)
                if self._named_since_sweep and self._learning_objects:
                    self._learning_sweep()
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


def _thread_group(tid: int) -> int | None:
    """The process (thread group) of a thread, from ``/proc/TID/status``."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_privileges() -> None:
    """Hooks and /proc/PID/mem of other users' processes need root (or
    CAP_SYS_PTRACE, and CAP_SYS_ADMIN for tracefs)."""
    from bridge.privileges import missing

    lacking = missing("CAP_SYS_PTRACE", "CAP_SYS_ADMIN")
    if lacking:
        raise BridgeError(f"the harvester needs root, or the capabilities {', '.join(lacking)} "
                          "(and CAP_PERFMON for uprobes)")
