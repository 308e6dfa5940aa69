"""Which processes to harvest, and which OpenSSL builds they run.

A process is a target when it is selected (``--pid``, ``--comm``, or ``--all``)
and maps an OpenSSL: a ``libssl`` shared library, or an executable with OpenSSL
linked in (node); or a library hooked at its own key-log function
(:mod:`bridge.harvest.keylog_targets`: a Go executable with crypto/tls, a
``libgnutls``).  Binaries are identified by their ELF build-id (cached per
inode); paths are given as seen from this host (``/proc/PID/root/...`` for a
process in another mount namespace, e.g. a container).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from bridge.errors import GuestAccessError, ProfileError
from bridge.harvest.elf import ElfImage, read_elf
from bridge.harvest.keylog_hooks import KeyLogBinary
from bridge.harvest.keylog_targets import find_hook_points, may_hold_hook_point
from bridge.harvest.memory import read_maps

_LIBSSL = re.compile(r"/libssl[^/]*\.so[^/]*$")


def is_shared_libssl(path: str) -> bool:
    """A libssl shared library (loadable to calibrate), not an executable with OpenSSL linked in."""
    return bool(_LIBSSL.search(path))


@dataclass(frozen=True, slots=True)
class OpenSslBinary:
    """An OpenSSL build as mapped by some process."""

    path: str  # usable from this host
    image: ElfImage = field(repr=False, compare=False)

    @property
    def build_id(self) -> str:
        return self.image.build_id


@dataclass(slots=True)
class TargetProcess:
    pid: int
    comm: str
    exe: str
    binaries: list[OpenSslBinary]
    #: Key-log functions hooked instead of read through a layout (Go, GnuTLS).
    keylog: list[KeyLogBinary] = field(default_factory=list)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _host_path(pid: int, path: str) -> str:
    try:
        root = os.readlink(f"/proc/{pid}/root")
    except OSError:
        root = "/"
    return path if root == "/" else f"/proc/{pid}/root{path}"


class TargetFinder:
    def __init__(self, *, pids: tuple[int, ...] = (), comms: tuple[str, ...] = (), everything: bool = False,
                 cache_dir: str | None = None) -> None:
        if not (pids or comms or everything):
            raise ValueError("select processes by pid, by command name, or all")
        self.pids = set(pids)
        self.comms = set(comms)
        self.everything = everything
        self._images: dict[tuple[int, int], ElfImage | None] = {}
        self._versions: dict[tuple[int, int], str | None] = {}
        self._hook_points: dict[tuple[int, int], list[KeyLogBinary]] = {}
        self.cache_dir = cache_dir  # what loading a library taught, by build-id (GnuTLS)
        #: Binaries of a library hooked at its key-log function that cannot be hooked: path → why.
        self.hook_errors: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self._own = {os.getpid()}

    def selected(self, pid: int, comm: str, exe: str) -> bool:
        if pid in self._own:
            return False
        return self.everything or pid in self.pids or comm in self.comms or os.path.basename(exe) in self.comms

    def _image(self, path: str) -> ElfImage | None:
        try:
            status = os.stat(path)
        except OSError:
            return None
        key = (status.st_dev, status.st_ino)
        if key not in self._images:
            try:
                image = read_elf(path)
                self._images[key] = image if image.embeds_openssl else None
            except (ProfileError, OSError) as exc:
                self.errors[path] = str(exc)
                self._images[key] = None
        return self._images[key]

    def inspect(self, pid: int) -> TargetProcess | None:
        """The process's OpenSSL builds (None: gone, not readable, or no OpenSSL)."""
        comm = _read(f"/proc/{pid}/comm")
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        try:
            mappings = read_maps(pid)
        except GuestAccessError:
            return None
        binaries: dict[str, OpenSslBinary] = {}
        keylog: dict[str, list[KeyLogBinary]] = {}
        for mapping in mappings:
            path = mapping.path
            if "x" not in mapping.perms or not path.startswith("/") or path.endswith(" (deleted)"):
                continue
            if may_hold_hook_point(path, exe) and _host_path(pid, path) not in keylog:
                keylog[_host_path(pid, path)] = self._keylog_points(_host_path(pid, path))
            if not (_LIBSSL.search(path) or path == exe):
                continue
            host_path = _host_path(pid, path)
            if host_path in binaries:
                continue
            image = self._image(host_path)
            if image is not None:
                binaries[host_path] = OpenSslBinary(host_path, image)
        hook_points = [point for points in keylog.values() for point in points]
        if not binaries:
            return TargetProcess(pid, comm, exe, [], hook_points) if hook_points else None
        version = self._libcrypto_version(pid, mappings)
        for path, binary in binaries.items():
            if binary.image.openssl_version is None and version is not None:
                binary.image.openssl_version = version  # libssl carries none; its libcrypto does
        return TargetProcess(pid, comm, exe, list(binaries.values()), hook_points)

    def _keylog_points(self, path: str) -> list[KeyLogBinary]:
        try:
            status = os.stat(path)
        except OSError:
            return []
        key = (status.st_dev, status.st_ino)
        if key not in self._hook_points:
            try:
                self._hook_points[key] = find_hook_points(path, read_elf(path, with_version=False), self.cache_dir)
            except (ProfileError, OSError) as exc:
                self.hook_errors[path] = str(exc)
                self._hook_points[key] = []
        return self._hook_points[key]

    def _libcrypto_version(self, pid: int, mappings) -> str | None:  # type: ignore[no-untyped-def]
        for mapping in mappings:
            if "/libcrypto" in mapping.path and mapping.path.startswith("/") and "x" in mapping.perms:
                path = _host_path(pid, mapping.path)
                try:
                    status = os.stat(path)
                except OSError:
                    continue
                key = (status.st_dev, status.st_ino)
                if key not in self._versions:
                    try:
                        self._versions[key] = read_elf(path).openssl_version
                    except (ProfileError, OSError):
                        self._versions[key] = None
                return self._versions[key]
        return None

    def scan(self) -> list[TargetProcess]:
        targets = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            comm = _read(f"/proc/{pid}/comm")
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue  # kernel threads, or gone
            if not self.selected(pid, comm, exe):
                continue
            target = self.inspect(pid)
            if target is not None:
                targets.append(target)
        return targets
