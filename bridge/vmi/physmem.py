"""Guest physical memory of a stock QEMU/KVM guest, read from the host.

Backends behind one interface (:class:`GuestPhysicalMemory`):

* :class:`MemoryFileBackend` — the guest RAM file of ``-object
  memory-backend-file,mem-path=...,share=on`` (or a memfd path), mapped read-only;
* :class:`QemuProcessBackend` — the QEMU process's own memory (``/proc/PID/mem``
  at the RAM block's host address, found in its maps), so an unmodified guest
  (libvirt's default anonymous RAM) works without changing its definition;
* :class:`LibvmiBackend` — LibVMI (Xen, KVMi hosts) when its Python bindings are
  installed; a clear error otherwise.

Guest physical addresses are not offsets in the RAM block above the PCI hole:
:class:`RamLayout` maps them (QEMU's ``pc`` and ``q35`` machines put the RAM above
``below_4g`` at 4 GiB).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Protocol

from bridge.errors import GuestAccessError

GIB = 1 << 30


class GuestMemoryError(GuestAccessError):
    """A guest physical address is outside the guest's RAM."""


@dataclass(frozen=True, slots=True)
class RamLayout:
    """Where guest physical addresses sit in the RAM block."""

    size: int
    below_4g: int

    @classmethod
    def for_machine(cls, size: int, machine: str = "pc") -> RamLayout:
        """QEMU's split: ``pc`` keeps 3 GiB below 4 GiB once the RAM reaches 3.5 GiB;
        ``q35`` keeps 2 GiB once it reaches 2.75 GiB."""
        if machine.startswith("q35"):
            below = 2 * GIB if size >= 0xB0000000 else size
        else:
            below = 3 * GIB if size >= 0xE0000000 else size
        return cls(size, below)

    def offset(self, physical: int) -> int:
        if physical < self.below_4g:
            return physical
        if physical >= 4 * GIB and physical - 4 * GIB < self.size - self.below_4g:
            return self.below_4g + physical - 4 * GIB
        raise GuestMemoryError(f"guest physical address {physical:#x} is not RAM")

    def ranges(self) -> list[tuple[int, int]]:
        """(first, end) guest physical ranges of RAM."""
        ranges = [(0, self.below_4g)]
        if self.size > self.below_4g:
            ranges.append((4 * GIB, 4 * GIB + self.size - self.below_4g))
        return ranges


class GuestPhysicalMemory(Protocol):
    layout: RamLayout

    def read(self, physical: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class _BlockReader:
    """Reads within one page at a time through ``layout`` (the PCI hole splits ranges)."""

    layout: RamLayout

    def _raw(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def read(self, physical: int, size: int) -> bytes:
        end = physical + size
        below = self.layout.below_4g
        if physical < below < end:  # across the PCI hole: the part above is not RAM
            raise GuestMemoryError(f"{physical:#x}+{size:#x} runs into the PCI hole")
        return self._raw(self.layout.offset(physical), size)


class MemoryFileBackend(_BlockReader):
    def __init__(self, path: str | os.PathLike[str], *, machine: str = "pc") -> None:
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise GuestAccessError(f"cannot open guest memory {path}: {exc.strerror}") from None
        with handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise GuestAccessError(f"guest memory {path} is empty")
            self._map = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)
        self.path = str(path)
        self.layout = RamLayout.for_machine(size, machine)

    def _raw(self, offset: int, size: int) -> bytes:
        if offset + size > len(self._map):
            raise GuestMemoryError(f"offset {offset:#x}+{size:#x} beyond the guest's RAM")
        return self._map[offset : offset + size]

    def close(self) -> None:
        self._map.close()


class QemuProcessBackend(_BlockReader):
    """The RAM block inside a running QEMU process: the mapping of the backing file,
    or else QEMU's largest anonymous read-write mapping of exactly ``ram_size``."""

    def __init__(self, pid: int, ram_size: int, *, machine: str = "pc", ram_path: str | None = None) -> None:
        self.pid = pid
        self.layout = RamLayout.for_machine(ram_size, machine)
        self.base = self._find_block(pid, ram_size, ram_path)
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise GuestAccessError(f"cannot read QEMU process {pid}: {exc.strerror} (needs root)") from None

    @staticmethod
    def _find_block(pid: int, ram_size: int, ram_path: str | None) -> int:
        try:
            lines = open(f"/proc/{pid}/maps").read().splitlines()
        except OSError as exc:
            raise GuestAccessError(f"QEMU process {pid}: {exc.strerror}") from None
        candidates = []
        for line in lines:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            if "rw" not in parts[1] or end - start != ram_size:
                continue
            if ram_path is not None and path.split(" (deleted)")[0] == ram_path:
                return start
            if ram_path is None and (not path or path.startswith("/memfd:") or path.startswith("/dev/shm/")):
                candidates.append(start)
        if len(candidates) == 1:
            return candidates[0]
        raise GuestAccessError(f"QEMU process {pid}: {len(candidates)} mappings of {ram_size:#x} bytes "
                               "could be the RAM block; give the RAM backing path")

    def _raw(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, self.base + offset)
        except OSError as exc:
            raise GuestAccessError(f"QEMU process {self.pid}: {exc.strerror}") from None
        if len(data) != size:
            raise GuestMemoryError(f"offset {offset:#x} beyond the RAM block")
        return data

    def close(self) -> None:
        os.close(self._fd)


class LibvmiBackend:
    """LibVMI's physical reads (Xen, or KVM with the KVMi patches)."""

    def __init__(self, domain: str) -> None:
        try:
            from libvmi import Libvmi  # type: ignore[import-not-found]
        except ImportError:
            raise GuestAccessError(
                "the LibVMI backend needs LibVMI and its Python bindings (https://github.com/libvmi/python); "
                "on a stock QEMU/KVM host use --memory-file or --qemu-pid instead"
            ) from None
        self._vmi = Libvmi(domain)
        size = self._vmi.get_memsize()
        self.layout = RamLayout(size, size)  # LibVMI reads guest physical addresses itself

    def read(self, physical: int, size: int) -> bytes:
        data, read = self._vmi.read_pa(physical, size)
        if read != size:
            raise GuestMemoryError(f"LibVMI read {read} of {size} bytes at {physical:#x}")
        return bytes(data)

    def close(self) -> None:
        self._vmi.destroy()
