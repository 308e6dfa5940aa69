"""The VM harvester: TLS secrets of guest processes, read from the host.

Nothing runs in the guest.  Guest processes are found through the guest
kernel's own structures (:mod:`bridge.vmi.linux`); each target's OpenSSL build
is identified by the build-id in its mapped ``libssl`` (read from guest memory)
and gets its layout from the :class:`~bridge.harvest.resolve.LayoutResolver`: a
known profile, or candidate layouts (a guest's library cannot be loaded here)
confirmed on a live connection before anything read through them is published
— a guest whose libssl was upgraded keeps being harvested.  The on-demand trigger: a ClientHello
seen on the VM's traffic (its tap or a mirror, or QEMU's ``filter-dump`` file)
names a client random, which is searched in the targets' writable anonymous
memory; the ``SSL *`` follows from the profile, and the secrets are read as soon
as they are complete.  The guest never pauses: its cost is zero.  A sensor's key
request (a ClientHello it saw and has no secrets for) starts the same
search, for a harvester that does not see the VM's traffic itself.

A guest build whose layout no known build shares is *learned*
(:mod:`bridge.harvest.learn`) from connections the wire or sensors name.  With
breakpoint hooks (:mod:`bridge.vmi.gdb_hooks`) the guest stops in
``SSL_free(ssl)`` (or another hooked call) with the ``SSL *`` in ``%rdi``: an
object holding a named client random is that connection's, its secrets derived
from the guest's memory while the guest is stopped.  Without them, the named
random is searched in the memory of the build's processes and the heap block
around it taken as its object (:func:`bridge.harvest.learn.object_starts`).
Once connections of both TLS versions agree on a layout, they are published,
read through it from the copies of their objects it was verified on.  TLS 1.2
confirmations take the connection's first record captured on the VM's traffic
(:mod:`bridge.harvest.first_record`), so a connection that ended first confirms too.

Go's ``crypto/tls``, GnuTLS and BoringSSL need no layout: with breakpoint hooks
(``keylog_hooks``), each selected process's files are searched for their
key-log function (:mod:`bridge.vmi.keylog`: read from the guest's page cache,
the process harvester's own finders run on the copy), a breakpoint set there,
and the label, client random and secret read from the stopped vCPU's registers
and the process's memory at each call (:meth:`VmHarvester.on_keylog_hit`).  GnuTLS needs no hook either: with the
wire or sensors naming connections, its sessions are searched for their client
randoms and read through the layout the sandbox calibrated from the guest's own
library (:func:`bridge.vmi.keylog.read_session`).

Misses are counted with their reason: the random never found in any target
(``not_found``: e.g. a connection to another process, or closed before the
search), found but the secrets never completed (``incomplete``).  A guest that
reboots (the kernel moves, KASLR) is re-located on the next read error.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bridge.capture.frames import Frame
from bridge.errors import GuestAccessError
from bridge.harvest.chain import MemoryFields, read_secrets
from bridge.harvest.keylog_hooks import KeyLogAssembler
from bridge.secrets import ConnectionSecrets
from bridge.harvest.confirm import memory_evidence
from bridge.harvest.elf import build_id_in_memory
from bridge.harvest.profile import Profile, ProfileStore
from bridge.harvest.resolve import CALIBRATING, FAILED, LEARNING, BuildLayout, LayoutResolver
from bridge.harvest.calibrate import Sample
from bridge.harvest.wire_search import (
    HelloInbox,
    PendingSearch,
    PendingSearches,
    SearchIntake,
    WireEnd,
    WireHello,
    hellos,
    other_candidate,
    request_event,
)
from bridge.keyfeed.wire import KeyRecord, KeyRequest, Origin
from bridge.vmi.btf import Btf
from bridge.vmi.linux import GuestProcess, LinuxGuest, Vma
from bridge.vmi.paging import AddressSpace
from bridge.vmi.physmem import GuestPhysicalMemory

_LIBSSL = re.compile(r"/libssl[^/]*\.so[^/]*$")
KeySink = Callable[[KeyRecord], None]
#: Client randoms named lately, looked for in hooked objects while a build is learned.
_NAMED_LIMIT = 4096
#: Attempts to learn from one object and client random (its handshake may not be finished yet).
_LEARN_TRIES = 3
#: Searches of a learning build's memory for the named connections' objects: at most one per this long.
_LEARN_SEARCH_INTERVAL = 0.02
#: How long a hook on a build being learned waits (the guest stopped) for the wire to name
#: the object's connection: its ClientHello may still be in the capture's buffer.
_NAME_WAIT = 0.25


@dataclass(slots=True)
class VmStats:
    attaches: int = 0
    clock_stalls: int = 0  # times the guest kernel's jiffies stood still for clock_stall seconds
    processes: int = 0
    published: int = 0
    not_found: int = 0
    closed_first: int = 0  # the connection ended before its SSL object was found
    incomplete: int = 0
    unfinished: int = 0  # still searching when the harvester stopped
    searches: int = 0
    hook_hits: int = 0
    target_errors: int = 0  # a target's memory could not be read (exited, or changing)
    search_seconds: float = 0.0
    bytes_searched: int = 0
    unconfirmed: int = 0  # secrets read through a layout that did not confirm them: not published
    learned_from: int = 0  # connections whose secrets were derived to learn a build's layout
    keylog_hits: int = 0  # stops at a library's key-log function (Go, GnuTLS, BoringSSL)
    keylog_undecodable: int = 0  # of those, arguments that were not a key log line
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class GuestTarget:
    process: GuestProcess
    space: AddressSpace
    layout: BuildLayout
    library: str
    writable: list[Vma]
    libssl_base: int = 0


@dataclass(slots=True)
class _Pending(PendingSearch):
    target: GuestTarget | None = None
    profile: Profile | None = None


def _selected(process: GuestProcess, comms: set[str], pids: set[int], everything: bool) -> bool:
    return everything or process.pid in pids or process.comm in comms


class VmHarvester:
    def __init__(
        self,
        memory: GuestPhysicalMemory,
        btf: Btf,
        sinks: list[KeySink],
        *,
        vm_name: str,
        profiles: LayoutResolver | ProfileStore,
        comms: tuple[str, ...] = (),
        pids: tuple[int, ...] = (),
        everything: bool = False,
        timeout: float = 5.0,
        retry_interval: float = 0.002,
        max_pending: int = 10_000,
        clock_stall: float = 30.0,
        named: bool = True,
        keylog_hooks: bool = False,
        log: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.memory = memory
        self.btf = btf
        self.sinks = sinks
        self.vm_name = vm_name
        #: Layouts of the guests' builds (a bare ProfileStore: known profiles, then confirmed candidates).
        self.resolver = (profiles if isinstance(profiles, LayoutResolver)
                         else LayoutResolver(profiles, methods=("candidates",), log=log))
        # Learning a layout takes client randoms named by the wire or sensors (``named``): without
        # them, a build no candidate matches is an error state here, not one that waits to learn.
        if not named:
            self.resolver.learning_needs = "the connections' client randoms: --trigger wire (or requests)"
        self.comms, self.pids, self.everything = set(comms), set(pids), everything
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.max_pending = max_pending
        #: After this long without the guest kernel's jiffies moving, look for another kernel.
        self.clock_stall = clock_stall
        self._jiffies: int | None = None
        self._jiffies_moved = self._stall_checked = 0.0
        self.log = log
        self.stats = VmStats()
        self.host = socket.gethostname()[:255]
        self.guest: LinuxGuest | None = None
        self.targets: list[GuestTarget] = []
        self.searches: PendingSearches[_Pending] = PendingSearches(
            _Pending, timeout=timeout, max_pending=max_pending, published=self._already_published)
        #: Sensors' key requests, from the key feed's thread.
        self.inbox = HelloInbox()
        self._published: OrderedDict[bytes, frozenset[str] | None] = OrderedDict()
        self._publish_lock = threading.Lock()  # the hook thread publishes too
        #: Client randoms named by the wire or sensors lately, by their first 8 bytes (learning).
        self._named: OrderedDict[bytes, bytes] = OrderedDict()
        self._named_lock = threading.Lock()
        #: Connections named while their build's layout was not ready (counted missed until published).
        self._unready: OrderedDict[bytes, BuildLayout] = OrderedDict()
        #: (pid, SSL *, client random) → attempts to learn from it (bounded)
        self._learning_tries: OrderedDict[tuple[int, int, bytes], int] = OrderedDict()
        self._learn_search_at = 0.0
        #: Go, GnuTLS and BoringSSL processes, hooked at their key-log function (gdbstub hooks only).
        self.keylog_hooks = keylog_hooks
        self._named_trigger = named  # the wire or sensors name connections: GnuTLS sessions are searched
        self.keylog_targets: list = []
        self._keylog_files = None
        self._keylog_assembler = KeyLogAssembler()
        self._keylog_lock = threading.Lock()
        self._keylog_told: set[tuple[int, str]] = set()

    # --- the guest -------------------------------------------------------------------------

    def attach(self) -> None:
        """Locate the guest kernel (again: after a reboot it moved) and its targets."""
        failed = self.guest.kernel if self.guest is not None else None
        self.guest = LinuxGuest(self.memory, self.btf, self.memory.layout.ranges(), avoid=failed)
        self._jiffies = None
        if self.guest.kernel == failed:
            self.log(f"{self.vm_name}: no other kernel in guest memory: staying with this one (looking again later)")
        elif self.stats.attaches > 0:
            self.log(f"{self.vm_name}: guest kernel re-located (a reboot?): direct map {self.guest.kernel.direct_map:#x}")
        self._keylog_setup()
        self.stats.attaches += 1
        self.refresh()

    def refresh(self) -> None:
        assert self.guest is not None
        targets = []
        for process in self.guest.processes():
            if not _selected(process, self.comms, self.pids, self.everything):
                continue
            try:
                target = self._target(process)
            except GuestAccessError as exc:
                self.log(f"warning: {self.vm_name}: process {process.pid} ({process.comm}): {exc}")
                continue
            if target is not None:
                targets.append(target)
        changed = {t.process.task for t in targets} != {t.process.task for t in self.targets}
        self._keylog_refresh()  # (first: "harvesting" is said once everything is ready)
        if changed:
            self.log(f"{self.vm_name}: harvesting " + (", ".join(
                f"{t.process.comm}[{t.process.pid}] {t.library}" for t in targets) or "no process"))
        self.targets = targets
        self.stats.processes = len(targets) + len({t.process.task for t in self.keylog_targets})

    # --- Go, GnuTLS, BoringSSL: hooks at their key-log function ---------------------------------

    def _keylog_setup(self) -> None:
        from bridge.vmi.keylog import GuestKeyLogFiles
        from bridge.vmi.pagecache import PageCache

        if self._keylog_files is not None:
            self._keylog_files.close()
            self._keylog_files = None
        try:
            page_cache = PageCache(self.guest, self.btf)  # type: ignore[arg-type]
        except GuestAccessError as exc:
            self.log(f"warning: {self.vm_name}: Go, GnuTLS and BoringSSL processes are not looked for: {exc}")
            return
        self._keylog_files = GuestKeyLogFiles(self.guest, page_cache, cache_dir=self.resolver.cache_dir,  # type: ignore[arg-type]
                                              log=lambda text: self.log(f"{self.vm_name}: {text}"))

    def _keylog_refresh(self) -> None:
        assert self.guest is not None
        if self._keylog_files is None or not (self.keylog_hooks or self._named_trigger or not self.everything):
            self.keylog_targets = []  # (--all without hooks: not every file of every process read for a warning)
            return
        found = []
        for process in self.guest.processes():
            if not _selected(process, self.comms, self.pids, self.everything):
                continue
            try:
                found += self._keylog_files.targets(process, self.guest.vmas(process))
            except GuestAccessError as exc:
                self.log(f"warning: {self.vm_name}: process {process.pid} ({process.comm}): {exc}")
        from bridge.vmi.keylog import session_layout

        for target in found:
            key = (target.process.task, target.guest_path)
            if key not in self._keylog_told:
                self._keylog_told.add(key)
                modes = (["hooked at its key-log function through the gdbstub"] if self.keylog_hooks else [])
                if self._named_trigger and session_layout(target) is not None:
                    modes.append("its sessions searched for the client randoms the wire or sensors name (no hook)")
                how = " and ".join(modes) or ("NOT harvested: this library is harvested by hooks only "
                                              "(--trigger hooks --gdb)" if session_layout(target) is None else
                                              "NOT harvested: --trigger hooks, wire or requests")
                self.log(f"{self.vm_name}: {target.process.comm}[{target.process.pid}] runs {target.library} "
                         f"({target.guest_path}): {target.binary.function} at {target.address:#x}: {how}")
        self.keylog_targets = found

    def close(self) -> None:
        """Remove the host copies of guest files (:mod:`bridge.vmi.keylog`)."""
        if self._keylog_files is not None:
            self._keylog_files.close()

    def keylog_hook_points(self) -> list:
        """The breakpoints at the key-log functions of the current Go, GnuTLS and BoringSSL targets."""
        from functools import partial

        from bridge.vmi.gdb_hooks import HookPoint

        if not self.keylog_hooks:
            return []
        return [HookPoint(t.address, t.binary.function, t.process.page_table, t,
                          on_registers=partial(self.on_keylog_hit, t)) for t in self.keylog_targets]

    def on_keylog_hit(self, target, registers: dict[str, int], function: str) -> None:  # type: ignore[no-untyped-def]
        """The guest stopped at a library's key-log function in a target: the line
        from its arguments (the probe's fetch-args on the vCPU's registers and the
        process's memory), published when the connection's lines decrypt it."""
        from bridge.vmi.fetchargs import evaluate

        self.stats.hook_hits += 1
        self.stats.keylog_hits += 1
        line = target.binary.decode(evaluate(target.binary.probe_args, registers, target.space.read))
        with self._keylog_lock:
            secrets = self._keylog_assembler.add(line)
        if line is None:
            self.stats.keylog_undecodable += 1
        if secrets is not None:
            self._publish(target, secrets, trigger=f"gdb:{function}", library=target.library,
                          build_id=target.build_id, update=True)

    def _target(self, process: GuestProcess) -> GuestTarget | None:
        assert self.guest is not None
        try:
            vmas = self.guest.vmas(process)
        except GuestAccessError as exc:
            self.log(f"warning: guest process {process.pid} ({process.comm}): {exc}")
            return None
        space = self.guest.address_space(process)
        for vma in vmas:
            if vma.pgoff == 0 and _LIBSSL.search(vma.path):
                try:
                    build_id = build_id_in_memory(space.read, vma.start)
                except GuestAccessError:
                    build_id = None
                if build_id is None:
                    continue
                layout = self.resolver.layout(build_id, vma.path, None)
                return GuestTarget(process, space, layout, vma.path, [v for v in vmas if v.writable_anonymous],
                                   vma.start)
        return None

    # --- on-demand: ClientHellos ---------------------------------------------------------------

    @property
    def intake(self) -> SearchIntake:
        return self.searches.intake

    def add(self, event: WireHello | WireEnd, now: float) -> None:
        """A connection to search for (a ClientHello, a sensor's request), or its end."""
        if isinstance(event, WireHello):
            learning = False
            for target in self.targets:
                if target.layout.state in (CALIBRATING, LEARNING, FAILED):
                    self.resolver.saw_connection(target.layout)
                    with self._publish_lock:  # published later after all (learned): not missed
                        self._unready[event.client_random] = target.layout
                        while len(self._unready) > _NAMED_LIMIT:
                            self._unready.popitem(last=False)
                learning = learning or target.layout.state == LEARNING
            if learning:
                self._name(event.client_random)
        self.searches.take(event, now)

    def _name(self, client_random: bytes) -> None:
        """A connection named while a build is learned: looked for in the hooked objects
        (the search looks for the pending ones itself)."""
        with self._named_lock:
            self._named[client_random[:8]] = client_random
            self._named.move_to_end(client_random[:8])
            while len(self._named) > _NAMED_LIMIT:
                self._named.popitem(last=False)

    def _already_published(self, client_random: bytes) -> bool:
        with self._publish_lock:
            return client_random in self._published

    def request(self, request: KeyRequest) -> None:
        """A sensor's key request (the key feed's thread; taken by :meth:`run`)."""
        self.inbox.put(request_event(request))

    @property
    def pending(self) -> int:
        return len(self.searches)

    def step(self, now: float) -> None:
        """One round: a single scan of the targets' memory for every connection not
        located yet, then a read of the secrets of every located one."""
        due = [item for item in self.searches.items if now >= item.next_try]
        unlocated = {item.hello.client_random: item for item in due if item.ssl is None}
        if unlocated:
            try:
                excluded = {random: item.excluded for random, item in unlocated.items()}
                for random, (target, ssl, profile) in self._locate(list(unlocated), excluded).items():
                    unlocated[random].target, unlocated[random].ssl = target, ssl
                    unlocated[random].profile = profile
            except GuestAccessError as exc:
                self.log(f"warning: {self.vm_name}: {exc}")
            still = [random for random, item in unlocated.items() if item.ssl is None]
            if still and self._named_trigger:
                try:
                    for random, (target, session) in self._locate_sessions(still).items():
                        unlocated[random].target, unlocated[random].ssl = target, session
                        unlocated[random].profile = None
                except GuestAccessError as exc:
                    self.log(f"warning: {self.vm_name}: {exc}")
            if now >= self._learn_search_at and any(t.layout.state == LEARNING for t in self.targets):
                self._learn_search_at = now + _LEARN_SEARCH_INTERVAL
                self._learn_by_search([random for random, item in unlocated.items() if item.ssl is None])
        unfinished = []
        for item in self.searches.items:
            if item.ssl is None and self._already_published(item.hello.client_random):
                continue  # a hook published it meanwhile
            if now >= item.next_try:
                try:
                    if item.ssl is not None and self._read(item):
                        continue
                except GuestAccessError:
                    item.ssl = None  # the process exited, the guest rebooted: search again
                item.next_try = now + self.retry_interval
            unfinished.append(item)
        self.searches.carry_on(unfinished, now, self.stats)

    def _locate_sessions(self, randoms: list[bytes]) -> dict[bytes, tuple]:
        """GnuTLS sessions holding these client randoms (one scan of each GnuTLS target
        whose session layout is known): the session is the hit less the random's offset."""
        from bridge.vmi.keylog import read_session, session_layout

        found: dict[bytes, tuple] = {}
        targets = [t for t in self.keylog_targets if session_layout(t) is not None]
        if not targets:
            return found
        started = time.perf_counter()
        pattern = re.compile(b"|".join(re.escape(random) for random in randoms))
        try:
            for target in targets:
                offset = session_layout(target).client_random
                try:
                    for hit, random in self._search(target, pattern):  # type: ignore[arg-type]
                        if random not in found and read_session(target, hit - offset, random) is not None:
                            found[random] = (target, hit - offset)
                except GuestAccessError:
                    self.stats.target_errors += 1
        finally:
            self.stats.searches += 1
            self.stats.search_seconds += time.perf_counter() - started
        return found

    def _read_session(self, item: _Pending) -> bool:
        from bridge.vmi.keylog import read_session

        target = item.target
        secrets = read_session(target, item.ssl, item.hello.client_random)  # type: ignore[arg-type]
        if secrets is None:
            item.ssl = None  # freed or reused: search again
            return False
        if not secrets.complete:
            return False
        published = self._publish(target, secrets, trigger=f"vm-{item.hello.trigger}",  # type: ignore[arg-type]
                                  library=target.library, build_id=target.build_id)  # type: ignore[union-attr]
        if published:
            self.stats.latencies.append(time.monotonic() - item.seen_at)
        return True

    def _read(self, item: _Pending) -> bool:
        """Read a located connection's secrets; True once published."""
        if item.profile is None and item.target is not None and not isinstance(item.target, GuestTarget):
            return self._read_session(item)
        assert item.target is not None and item.ssl is not None and item.profile is not None
        target, profile, ssl = item.target, item.profile, item.ssl
        secrets = read_secrets(MemoryFields(target.space, profile, ssl))
        if secrets is None or secrets.client_random != item.hello.client_random:
            item.ssl = None  # freed or reused: search again
            return False
        if not secrets.complete:
            if target.layout.profile is None:  # candidates: another may read this connection whole
                switched = other_candidate(target.space, target.layout, item)
                if switched is not None:
                    item.ssl, item.profile = switched
            return False
        now = time.monotonic()
        if now < item.confirm_at:
            return False
        verdict = self._vouch(target, profile, ssl, secrets, wait=False)  # this thread feeds the records
        if not item.vouched(verdict, profile.build_id, now):
            return False
        if self._publish(target, secrets, trigger=f"vm-{item.hello.trigger}"):
            self.stats.latencies.append(time.monotonic() - item.seen_at)
        return True

    def _vouch(self, target: GuestTarget, profile: Profile, ssl: int, secrets: ConnectionSecrets, *,
               wait: bool = True) -> bool | None:
        """Secrets read through a layout not yet known good for their version are
        confirmed on this connection (its first record from the wire, or the
        guest's memory) before publishing."""
        verdict = self.resolver.vouch(target.layout, profile, secrets,
                                      lambda: memory_evidence(target.space, profile, ssl, self._finder(target)),
                                      wait=wait)
        if verdict is False:
            self.stats.unconfirmed += 1
        return verdict

    def _locate(self, randoms: list[bytes], excluded: dict[bytes, set[str]] | None = None
                ) -> dict[bytes, tuple[GuestTarget, int, Profile]]:
        """Where each client random's SSL object is, in one scan of every target."""
        started = time.perf_counter()
        found: dict[bytes, tuple[GuestTarget, int, Profile]] = {}
        pattern = re.compile(b"|".join(re.escape(random) for random in randoms))
        try:
            for target in self.targets:
                profiles = [p for p in target.layout.profiles() if len(p.path("client_random") or ()) == 1]
                if not profiles:
                    continue  # no layout yet; or 1.1.1, which keeps the random behind a pointer: not in this scan
                try:
                    for hit, random in self._search(target, pattern):
                        if random in found:
                            continue
                        skip = (excluded or {}).get(random, set())
                        for profile in profiles:
                            if profile.build_id in skip:
                                continue
                            ssl = hit - (profile.path("client_random") or (0,))[0]
                            secrets = read_secrets(MemoryFields(target.space, profile, ssl))
                            if secrets is not None and secrets.client_random == random:
                                found[random] = (target, ssl, profile)
                                break
                except GuestAccessError:
                    self.stats.target_errors += 1  # it exited (its page tables are gone) or is changing
        finally:
            self.stats.searches += 1
            self.stats.search_seconds += time.perf_counter() - started
        return found

    def _search(self, target: GuestTarget, pattern: re.Pattern[bytes]) -> Iterator[tuple[int, bytes]]:
        """(address, match) of the pattern's 32-byte needles in the target's writable
        anonymous memory, page by page through its page tables (a needle may
        straddle two pages)."""
        overlap = 31
        assert self.guest is not None
        # The mappings as they are now: a heap grows, a process maps more arenas.
        target.writable = [vma for vma in self.guest.vmas(target.process) if vma.writable_anonymous]
        for vma in target.writable:
            tail, tail_end = b"", -1
            for virtual, physical, size in target.space.pages(vma.start, vma.end):
                data = self.memory.read(physical, size)
                self.stats.bytes_searched += size
                if virtual == tail_end:
                    data, base = tail + data, virtual - len(tail)
                else:
                    base = virtual
                for match in pattern.finditer(data):
                    yield base + match.start(), match.group()
                tail, tail_end = data[-overlap:], virtual + size

    def _finder(self, target: GuestTarget) -> Callable[[list[bytes]], set[bytes]]:
        """Which of some byte strings occur in the target's writable memory (one scan)."""
        def present(needles: list[bytes]) -> set[bytes]:
            pattern = re.compile(b"|".join(re.escape(needle) for needle in needles))
            return {match for _, match in self._search(target, pattern)}

        return present

    def on_hook_hit(self, target: GuestTarget, ssl: int, function: str) -> None:
        """A breakpoint hook stopped the guest in ``function(ssl)`` of a target."""
        self.stats.hook_hits += 1
        if target.layout.state == LEARNING:
            self._learn_from(target, ssl, function)
            return
        for profile in target.layout.profiles():
            secrets = read_secrets(MemoryFields(target.space, profile, ssl))
            if secrets is not None and secrets.complete:
                if self._vouch(target, profile, ssl, secrets):
                    self._publish(target, secrets, trigger=f"gdb:{function}")
                return

    # --- learning a layout (hooks, or the search) --------------------------------------------------

    def _learn_from(self, target: GuestTarget, ssl: int, function: str) -> None:
        """A hooked call on a build being learned, the guest stopped: if the object
        holds a client random the wire or a sensor named (waiting up to
        :data:`_NAME_WAIT` for its ClientHello to be read), derive that connection's
        secrets from the guest's memory and hand them to the resolver; publish the
        connections learned from once the layout is."""
        from bridge.harvest.calibrate_live import SnapshotReader
        from bridge.harvest.learn import _Reader, named_random, observe

        layout = target.layout
        try:
            copy = SnapshotReader(_Reader(target.space.read_upto))  # type: ignore[arg-type]
            copy.capture_object(ssl)  # the guest is stopped: the object does not change while named
            deadline = time.monotonic() + _NAME_WAIT
            while True:
                with self._named_lock:
                    named = dict(self._named)
                random = named_random(copy.read_upto, ssl, named)
                if random is not None or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            if random is None:
                return
            key = (target.process.pid, ssl, random)
            if not self._learning_try(key, _LEARN_TRIES):
                return
            sample = observe(target.space.read_upto, ssl, random, self._finder(target))
        except GuestAccessError as exc:
            self.stats.target_errors += 1
            self.log(f"warning: {self.vm_name}: learning from {target.process.comm}[{target.process.pid}]: {exc}")
            return
        if sample is None:
            return  # no finished handshake in it yet: its next hooked call
        self._learning_try(key, _LEARN_TRIES, done=True)  # learned from: not again
        self.stats.learned_from += 1
        profile = self.resolver.learn(layout, target.process.pid, sample)
        if profile is not None:
            self._publish_learned(layout, profile, f"gdb:{function}")

    def _learning_try(self, key: tuple[int, int, bytes], limit: int, *, done: bool = False) -> bool:
        """May this (pid, object, client random) be learned from once more (at most
        ``limit`` times; ``done``: never again)?  Shared by the hook and search threads."""
        with self._named_lock:
            tries = self._learning_tries.get(key, 0)
            if done or tries >= limit:
                self._learning_tries[key] = limit
                return False
            self._learning_tries[key] = tries + 1
            while len(self._learning_tries) > 10_000:
                self._learning_tries.popitem(last=False)
            return True

    def _learn_by_search(self, randoms: list[bytes]) -> None:
        """No hook needed: the named connections' client randoms searched in the memory
        of the targets whose build is learned; around each hit, the starts of the heap
        block holding it (:func:`bridge.harvest.learn.object_starts`) are tried as the
        connection's object."""
        from bridge.harvest.learn import object_starts, observe

        if not randoms:
            return
        pattern = re.compile(b"|".join(re.escape(random) for random in randoms))
        for target in self.targets:
            layout = target.layout
            if layout.state != LEARNING:
                continue
            assert self.guest is not None
            try:
                library = [(v.start, v.end) for v in self.guest.vmas(target.process) if v.path == target.library]
                in_library = lambda address: any(low <= address < high for low, high in library)  # noqa: E731
                for hit, random in list(self._search(target, pattern)):
                    for start in object_starts(target.space.read_upto, hit, in_library):
                        key = (target.process.pid, start, random)
                        if not self._learning_try(key, _LEARN_TRIES * 10):  # (its handshake may take a while)
                            continue
                        sample = observe(target.space.read_upto, start, random, self._finder(target))
                        if sample is None:
                            continue
                        self._learning_try(key, _LEARN_TRIES * 10, done=True)  # learned from: not again
                        self.stats.learned_from += 1
                        profile = self.resolver.learn(layout, target.process.pid, sample)
                        if profile is not None:
                            self._publish_learned(layout, profile, "vm-wire")
                        break
            except GuestAccessError:
                self.stats.target_errors += 1

    def _publish_learned(self, layout: BuildLayout, profile: Profile, trigger: str) -> None:
        """The connections a layout was learned from, read through it from the copies
        of their objects it was verified on, published when they read what was
        derived for them (the objects themselves may be freed by now)."""
        by_pid = {t.process.pid: t for t in self.targets if t.layout is layout}
        for pid, sample in list(layout.learning):
            target = by_pid.get(pid)
            if target is None or not isinstance(sample, Sample) or sample.reader is None:
                continue
            try:
                secrets = read_secrets(MemoryFields(sample.reader, profile, sample.ssl))
            except GuestAccessError:
                continue
            if (secrets is None or not secrets.complete or secrets.client_random != sample.client_random
                    or any(secrets.secrets.get(label) != value for label, value in sample.secrets.items())):
                continue
            self._publish(target, secrets, trigger=trigger)

    def _publish(self, target: GuestTarget, secrets: ConnectionSecrets, *, trigger: str = "vm-wire",
                 library: str | None = None, build_id: str | None = None, update: bool = False) -> bool:
        """Publish once per connection; False when it was published already (with
        ``update``: unless these secrets add a label, as GnuTLS's exporter secret,
        logged after the traffic secrets)."""
        labels = frozenset(secrets.secrets)
        with self._publish_lock:
            before = self._published.get(secrets.client_random)
            if secrets.client_random in self._published and not (update and before is not None
                                                                   and labels > before):
                return False
            self._published[secrets.client_random] = labels
            if len(self._published) > 100_000:
                self._published.popitem(last=False)
            unready = self._unready.pop(secrets.client_random, None)
        if unready is not None:  # counted missed while its layout was not ready: harvested after all
            self.resolver.recovered(unready)
        record = KeyRecord(
            client_random=secrets.client_random,
            secrets=dict(secrets.secrets),
            captured_at=time.time(),
            tls_version=secrets.tls_version if secrets.tls_version in (0x0303, 0x0304) else None,
            cipher_suite=secrets.cipher_suite,
            origin=Origin(host=self.host, vm=self.vm_name[:255], pid=target.process.pid, comm=target.process.comm,
                          library=(library or target.library)[:256], build_id=build_id or target.layout.build_id,
                          trigger=trigger),
        )
        self.stats.published += 1
        for sink in self.sinks:
            sink(record)
        return True

    # --- driving -----------------------------------------------------------------------------------

    def run(self, frames: Iterator[Frame | None], stop, *, rescan_interval: float = 2.0,  # type: ignore[no-untyped-def]
            wire: bool = True) -> None:
        """Feed ClientHellos from ``frames`` (None: nothing new; ``wire`` False: only
        that, the VM's traffic is not seen) and the sensors' requests until ``stop``
        is set."""
        next_scan = time.monotonic() + rescan_interval
        for event in hellos(frames, ends=True, first_records=self.resolver.first_records if wire else None):
            if stop.is_set():
                self.stats.unfinished += len(self.searches)
                self.searches.keep([])
                return
            now = time.monotonic()
            for named in ([event] if event is not None else []) + self.inbox.take():
                self.add(named, now)
            self.step(now)
            if now >= next_scan:
                self._rescan()
                next_scan = time.monotonic() + rescan_interval
        self.stats.unfinished += len(self.searches)
        self.searches.keep([])

    def _clock_stopped(self, now: float) -> bool:
        """Has the kernel's ``jiffies`` stood still for ``clock_stall`` seconds?  A
        paused guest, or the remains of a kernel after a reboot (intact in RAM,
        and readable): look for another kernel then, at most once per
        ``clock_stall``.  Not knowing ``jiffies`` (not exported?) is not a stall."""
        assert self.guest is not None
        jiffies = self.guest.jiffies()
        if jiffies is None or jiffies != self._jiffies:
            self._jiffies, self._jiffies_moved = jiffies, now
            return False
        if now - self._jiffies_moved < self.clock_stall or now - self._stall_checked < self.clock_stall:
            return False
        self._stall_checked = now
        self.stats.clock_stalls += 1
        self.log(f"{self.vm_name}: the guest kernel's jiffies has not moved for {now - self._jiffies_moved:.0f} s "
                 "(a paused guest, or a kernel that is no longer running): looking for another")
        return True

    def _rescan(self) -> None:
        try:
            if self.guest is None or not self.guest.still_valid():
                raise GuestAccessError("the guest kernel moved")
            if self._clock_stopped(time.monotonic()):
                raise GuestAccessError("the guest kernel's clock stands still")
            self.refresh()
        except GuestAccessError:
            try:
                self.attach()  # the guest rebooted: the kernel moved
            except GuestAccessError as exc:
                self.log(f"warning: {self.vm_name}: {exc}")
                self.targets = []
