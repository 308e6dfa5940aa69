"""Reading another process's memory (``/proc/PID/mem``), and its maps.

A thin driver.  The harvester reads; it never writes and never stops the
process.  Errors are typed: :class:`ProcessGoneError` when the process exited,
:class:`MemoryReadError` for an address that is not mapped, and
:class:`~bridge.errors.GuestAccessError` for a permission problem (with the
capability needed).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from bridge.errors import GuestAccessError


class ProcessGoneError(GuestAccessError):
    """The process exited."""


class MemoryReadError(GuestAccessError):
    """An address range is not readable (unmapped, or a guard page)."""


class MemoryReader(Protocol):
    def read(self, address: int, size: int) -> bytes: ...


def _permission_hint(pid: int) -> str:
    return (f"cannot read the memory of process {pid}: permission denied "
            "(run as root, or with CAP_SYS_PTRACE and a ptrace_scope that allows it)")


class ProcessMemory:
    """``/proc/PID/mem``, read with ``pread``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessGoneError(f"process {pid} does not exist") from None
        except PermissionError:
            raise GuestAccessError(_permission_hint(pid)) from None

    def read(self, address: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``address``."""
        data = self.read_upto(address, size)
        if len(data) != size:
            raise MemoryReadError(f"process {self.pid}: {address:#x}+{size:#x} is not readable")
        return data

    def read_upto(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes: shorter where the mapping ends."""
        if address <= 0 or address + size > 1 << 63:
            return b""
        try:
            return os.pread(self._fd, size, address)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EFAULT):
                return b""
            if exc.errno == errno.ESRCH or not os.path.exists(f"/proc/{self.pid}"):
                raise ProcessGoneError(f"process {self.pid} exited") from None
            raise GuestAccessError(f"process {self.pid}: reading memory failed: {exc.strerror}") from None

    def read_pointer(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def writable_anonymous(self) -> bool:
        """Heap, anonymous mmaps (malloc arenas): where OpenSSL's objects live."""
        return "w" in self.perms and "r" in self.perms and (not self.path or self.path == "[heap]")


def read_maps(pid: int) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise ProcessGoneError(f"process {pid} does not exist") from None
    except PermissionError:
        raise GuestAccessError(_permission_hint(pid)) from None
    return [_mapping(line) for line in lines]


def _mapping(line: str) -> Mapping:
    parts = line.split(maxsplit=5)
    start, end = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5] if len(parts) > 5 else ""
    return Mapping(start, end, parts[1], int(parts[2], 16), int(parts[4]), path)


def find_all(reader: ProcessMemory, mappings: list[Mapping], needle: bytes, *, chunk: int = 1 << 20,
             limit: int = 16) -> Iterator[int]:
    """Addresses of ``needle`` in the writable anonymous mappings (at most ``limit``)."""
    found = 0
    overlap = len(needle) - 1
    for mapping in mappings:
        if not mapping.writable_anonymous:
            continue
        position = mapping.start
        while position < mapping.end:
            size = min(chunk + overlap, mapping.end - position)
            data = reader.read_upto(position, size)
            index = data.find(needle)
            while index >= 0:
                yield position + index
                found += 1
                if found >= limit:
                    return
                index = data.find(needle, index + 1)
            if len(data) < size:
                break  # the rest of this mapping is not readable
            position += chunk


def present(reader: ProcessMemory, mappings: list[Mapping], needles: list[bytes], *, chunk: int = 1 << 20) -> set[bytes]:
    """Which of ``needles`` occur in the writable anonymous mappings (one pass; each
    chunk searched for each needle still missing: ``bytes.find`` runs at memory
    speed, where a regular expression of alternatives crawls)."""
    wanted = {needle for needle in needles if needle}
    if not wanted:
        return set()
    overlap = max(len(needle) for needle in wanted) - 1
    found: set[bytes] = set()
    for mapping in mappings:
        if not mapping.writable_anonymous:
            continue
        position = mapping.start
        while position < mapping.end:
            size = min(chunk + overlap, mapping.end - position)
            try:
                data = reader.read_upto(position, size)
            except GuestAccessError:
                break
            found.update(needle for needle in wanted - found if needle in data)
            if found >= wanted:
                return found
            if len(data) < size:
                break
            position += chunk
    return found
