"""Guest processes running TLS libraries hooked at their own key-log function
(Go's ``crypto/tls``, GnuTLS, BoringSSL linked in): found from the host with
nothing in the guest, hooked through QEMU's gdbstub.

The process harvester finds each library's hook point in the file a process maps
(:func:`bridge.harvest.keylog_targets.find_hook_points`: Go's pclntab, GnuTLS
loaded in the sandbox, BoringSSL's callers).  A guest's files are not on this
host, so each candidate file a target maps is read out of the guest kernel's page
cache (:mod:`bridge.vmi.pagecache`) into a private copy here, and the same code
runs on the copy: no layout, no profile, and a build never seen before is
handled as the process harvester handles it.  (A page the page cache does not
hold reads as zeros: a Go binary whose pclntab is not resident is tried again
at the next rescan, as the kernel reads more of it.)

The hook point's file offset becomes a virtual address through the VMA mapping
it; at a breakpoint there, the probe's own fetch-args (:mod:`bridge.vmi.fetchargs`)
are evaluated on the stopped vCPU's registers and the process's memory, and the
library's decoder gives the key log line.  What is learned per file (by inode
and size) is kept for the harvester's life.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.errors import BridgeError, GuestAccessError
from bridge.harvest.elf import read_elf
from bridge.harvest.keylog_hooks import KeyLogBinary
from bridge.harvest.keylog_targets import find_hook_points, may_hold_hook_point
from bridge.vmi.linux import GuestProcess, LinuxGuest, Vma
from bridge.vmi.pagecache import FileImage, PageCache
from bridge.vmi.paging import AddressSpace

#: Files whose ELF header already shows they hold nothing we hook are not copied whole.
_ELF = b"\x7fELF"
#: Rescans that read a file the page cache does not hold whole before it is given up on.
_INCOMPLETE_TRIES = 30


@dataclass(slots=True)
class KeyLogTarget:
    """One hook point in one guest process."""

    process: GuestProcess
    space: AddressSpace
    binary: KeyLogBinary  # its path is the host copy's
    guest_path: str
    address: int  # the hooked function's virtual address in the process
    writable: list[Vma] = field(default_factory=list)  # (the searches' view of its writable memory)

    @property
    def library(self) -> str:
        return self.binary.library

    @property
    def build_id(self) -> str:
        return self.binary.build_id


class GuestKeyLogFiles:
    """The hook points of guest files, read from the page cache once per file."""

    def __init__(self, guest: LinuxGuest, page_cache: PageCache, *, cache_dir: str | None,
                 log: Callable[[str], None]) -> None:
        self.guest, self.page_cache, self.cache_dir, self.log = guest, page_cache, cache_dir, log
        self._copies = tempfile.mkdtemp(prefix="tls-bridge-guest-files-")
        #: (inode, guest path) → its hook points, or None while its pages are not all resident
        self._points: dict[tuple[int, str], list[KeyLogBinary]] = {}
        self._incomplete: dict[tuple[int, str], int] = {}

    def close(self) -> None:
        shutil.rmtree(self._copies, ignore_errors=True)

    def targets(self, process: GuestProcess, vmas: list[Vma]) -> list[KeyLogTarget]:
        try:
            exe_file = self.page_cache.exe_file(process.mm)
            exe = self.guest.file_path(exe_file) if exe_file else ""
        except GuestAccessError:
            return []
        targets = []
        space = self.guest.address_space(process)
        seen: set[int] = set()
        for vma in vmas:
            if not vma.file or vma.pgoff != 0 or not may_hold_hook_point(vma.path, exe):
                continue
            try:
                inode = self.guest.pointer(vma.file + self.page_cache.offsets.f_inode)
            except GuestAccessError:
                continue
            if inode in seen:
                continue
            seen.add(inode)
            for binary in self._hook_points(vma, inode):
                address = _address(vmas, vma.file, inode, binary.offset, self.guest, self.page_cache)
                if address is not None:
                    targets.append(KeyLogTarget(process, space, binary, vma.path, address))
        return targets

    def _hook_points(self, vma: Vma, inode: int) -> list[KeyLogBinary]:
        key = (inode, vma.path)
        if key in self._points:
            return self._points[key]
        try:
            image = self.page_cache.read_file(vma.file)
        except GuestAccessError as exc:
            self.log(f"warning: guest file {vma.path}: {exc}")
            self._points[key] = []
            return []
        if image.data[:4] != _ELF:
            self._points[key] = []
            return []
        copy = self._copy(image, vma.path)
        try:
            points = find_hook_points(copy, read_elf(copy, with_version=False), self.cache_dir)
        except (BridgeError, OSError) as exc:
            points = []
            if image.complete:
                self.log(f"warning: guest file {vma.path}: {exc}")
        if not points and not image.complete:
            # Not all of it is in the page cache: a later rescan reads it again (the kernel may read more).
            tries = self._incomplete.get(key, 0) + 1
            self._incomplete[key] = tries
            if tries >= _INCOMPLETE_TRIES:
                self._points[key] = []  # given up on
            if tries == 1:
                self.log(f"{vma.path}: {image.resident} of {image.pages} pages in the guest's page cache, "
                         "nothing hookable found in them yet: read again at each rescan")
            os.unlink(copy)
            return []
        for point in points:
            self.log(f"guest file {vma.path} ({image.resident}/{image.pages} pages from the guest's page cache): "
                     f"{point.function}, its key-log function, at file offset {point.offset:#x} ({point.library})")
        self._points[key] = points
        return points

    def _copy(self, image: FileImage, guest_path: str) -> str:
        directory = os.path.join(self._copies, f"{image.inode:x}")  # the file keeps its name (libgnutls.so.30)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, os.path.basename(guest_path)[:200] or "file")
        with open(path, "wb") as handle:
            handle.write(image.data)
        return path


def _address(vmas: list[Vma], file: int, inode: int, offset: int, guest: LinuxGuest,
             page_cache: PageCache) -> int | None:
    """The virtual address of a file offset in the VMA of the same file that maps it."""
    for vma in vmas:
        if not vma.file:
            continue
        start = vma.pgoff * 4096
        if not start <= offset < start + vma.end - vma.start:
            continue
        if vma.file != file:
            try:
                if guest.pointer(vma.file + page_cache.offsets.f_inode) != inode:
                    continue
            except GuestAccessError:
                continue
        return vma.start + offset - start
    return None


def session_layout(target: KeyLogTarget):  # type: ignore[no-untyped-def]
    """The GnuTLS session layout of a target's build (None: not GnuTLS, or not learned)."""
    from bridge.harvest import gnutls

    if target.binary.function != gnutls.FUNCTION:
        return None
    facts = gnutls.facts_for(target.binary.build_id)
    return None if facts is None or facts.layout is None else facts


def read_session(target: KeyLogTarget, session: int, client_random: bytes):  # type: ignore[no-untyped-def]
    """A GnuTLS session's secrets read from guest memory (no hook: the wire named it):
    None when the session no longer holds ``client_random``; secrets not complete
    while its handshake is under way.  The version from ``security_parameters.pversion``
    (its target's offset from the library's load base); a TLS 1.3 secret's length from
    its 64-byte slot (the rest zero: the session is calloc'd)."""
    from bridge.harvest import gnutls
    from bridge.secrets import TLS12, TLS13, ConnectionSecrets

    facts = session_layout(target)
    assert facts is not None and facts.layout is not None
    layout = facts.layout
    read = target.space.read
    # the session's own heap block (malloc's header before it), holding the random
    if int.from_bytes(read(session - 8, 8), "little") & ~7 != layout.chunk or \
            read(session + facts.client_random, 32) != client_random:
        return None
    load_base = target.address - facts.keylog_function
    version = int.from_bytes(read(session + layout.pversion, 8), "little") - load_base
    if version == layout.tls12_entry:
        master = read(session + layout.master_secret, 48)
        secrets = {"CLIENT_RANDOM": master} if any(master) else {}
        return ConnectionSecrets(client_random, secrets, tls_version=TLS12)
    if version != layout.tls13_entry:
        return ConnectionSecrets(client_random, {}, tls_version=None)  # not negotiated yet
    found = {}
    for label in gnutls.TLS13_LABELS:
        slot = read(session + layout.tls13[label], gnutls.SLOT)
        length = 48 if any(slot[32:48]) else 32
        if any(slot[length:]) or not any(slot[:length]):
            return ConnectionSecrets(client_random, {}, tls_version=TLS13)  # not written yet
        found[label] = slot[:length]
    return ConnectionSecrets(client_random, found, tls_version=TLS13)
