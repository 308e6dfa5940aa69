"""Guest physical memory of a stock QEMU/KVM guest, read from the host.

Backends behind one interface (:class:`GuestPhysicalMemory`):

* :class:`MemoryFileBackend` — the guest RAM file of ``-object
  memory-backend-file,mem-path=...,share=on`` (or a memfd path), mapped read-only;
* :class:`QemuProcessBackend` — the QEMU process's own memory (``/proc/PID/mem``
  at the RAM block's host address, found in its maps), so an unmodified guest
  (libvirt's default anonymous RAM) works without changing its definition;
* :class:`LibvmiBackend` — LibVMI's physical reads: its file driver over the RAM
  file, or a Xen/KVMi domain; a clear error when LibVMI, its driver or the
  domain is missing.

Guest physical addresses are not offsets in the RAM block above the PCI hole:
:class:`RamLayout` maps them (QEMU's ``pc`` and ``q35`` machines put the RAM above
``below_4g`` at 4 GiB).
"""

from __future__ import annotations

import mmap
import os
import threading
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


_LIBVMI_INSTALL = (
    "LibVMI (the C library, https://libvmi.com) with the driver you need (file; Xen; KVM with KVMi) and its "
    "Python bindings: pip install libvmi (PyPI's wheel carries a LibVMI build of its own; to link the bindings "
    "to yours: python scripts/libvmi_bindings.py build <prefix>)"
)


def _libvmi():  # type: ignore[no-untyped-def]
    """LibVMI's Python bindings, or a clear error."""
    try:
        import libvmi  # type: ignore[import-not-found]
        from libvmi import libvmi as bindings  # type: ignore[import-not-found]
    except ImportError as exc:
        raise GuestAccessError(
            f"the LibVMI backend needs LibVMI and its Python bindings ({exc}); install {_LIBVMI_INSTALL}; "
            "on a stock QEMU/KVM host use --memory-file or --qemu-pid instead"
        ) from None
    return libvmi, bindings


class LibvmiBackend(_BlockReader):
    """LibVMI's physical reads, after a partial init (``vmi_init``: no configuration
    entry, no OS profile; the guest OS is found by our own BTF-based code).

    * ``target`` with a ``/``: a guest RAM file (``-object memory-backend-file,...,
      share=on``) through LibVMI's **file driver**.  LibVMI reads the file flat
      (physical address = file offset): above the PCI hole (``pc`` guests of 3.5 GiB
      or more, ``q35`` of 2.75 GiB or more) :class:`RamLayout` maps the address to
      its offset first, as for the other backends.
    * otherwise: a domain name for LibVMI's domain mode (Xen; KVM with the KVMi
      patches, whose socket is ``kvmi_socket``), the driver as LibVMI detects it.

    LibVMI keeps a page cache: it is flushed before every read, so what the running
    guest changes is seen (a stale copy of a half-written secret would be published).
    """

    def __init__(self, target: str, *, machine: str = "pc", kvmi_socket: str | None = None) -> None:
        libvmi, bindings = _libvmi()
        self.target = target
        self.file_mode = "/" in target
        if self.file_mode:
            size = self._check_file(target)
            self._vmi = self._open(bindings, target, mode=libvmi.VMIMode.FILE)
            self.layout = RamLayout.for_machine(size, machine)
        else:
            init_data = {bindings.VMIInitData.KVMI_SOCKET: kvmi_socket} if kvmi_socket else None
            self._vmi = self._open_domain(libvmi, bindings, target, init_data)
            size = self._vmi.get_memsize()
            self.layout = RamLayout(size, size)  # LibVMI reads the domain's physical addresses itself
        self._flush = self._vmi.pagecache_flush
        self._read_pa = self._vmi.read_pa
        self._lock = threading.Lock()  # one LibVMI instance is not thread-safe (its caches); hooks read too

    @staticmethod
    def _check_file(path: str) -> int:
        """LibVMI's file driver crashes the process on a path it cannot open: check first."""
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise GuestAccessError(f"LibVMI: cannot open guest memory {path}: {exc.strerror}") from None
        if size == 0:
            raise GuestAccessError(f"LibVMI: guest memory {path} is empty")
        return size

    @staticmethod
    def _open(bindings, target: str, **kw):  # type: ignore[no-untyped-def]
        try:
            return bindings.Libvmi(target, partial=True, **kw)
        except bindings.LibvmiError as exc:
            raise GuestAccessError(f"LibVMI could not open {target}: {exc}") from None

    @classmethod
    def _open_domain(cls, libvmi, bindings, domain: str, init_data):  # type: ignore[no-untyped-def]
        """LibVMI's domain mode with the driver it detects; if none takes the domain,
        each driver is asked by name, to say whether the driver or the domain is missing."""
        try:
            return bindings.Libvmi(domain, partial=True, init_data=init_data)
        except bindings.LibvmiError:
            pass
        reasons = []
        for mode, hypervisor in ((libvmi.VMIMode.XEN, "Xen"), (libvmi.VMIMode.KVM, "KVM (KVMi)")):
            try:
                return bindings.Libvmi(domain, partial=True, mode=mode, init_data=init_data)
            except bindings.LibvmiError as exc:
                stage = str(exc)
            if stage == "VM_NOT_FOUND":
                reasons.append(f"{hypervisor}: no domain named {domain!r}")
            elif stage in ("DRIVER", "DRIVER_NOT_DETECTED", "NONE", "VMI_FAILURE"):
                reasons.append(f"{hypervisor}: no working driver (LibVMI built without it, or this host does "
                               f"not run {hypervisor.split()[0]}{' with a KVMi socket (--kvmi-socket)' if mode == libvmi.VMIMode.KVM else ' (dom0)'})")
            else:
                reasons.append(f"{hypervisor}: {stage}")
        raise GuestAccessError(
            f"LibVMI could not open domain {domain!r}: " + "; ".join(reasons)
            + ". A guest RAM file goes to LibVMI's file driver: --libvmi /dev/shm/NAME (a path); "
            "on a stock QEMU/KVM host --memory-file or --qemu-pid need no LibVMI"
        )

    def _raw(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._flush()
            data, read = self._read_pa(offset, size, padding=True)
        if read != size:
            raise GuestMemoryError(f"LibVMI read {read} of {size} bytes at offset {offset:#x}")
        return data

    def read_flat(self, address: int, size: int) -> bytes:
        """LibVMI's own view of a physical address (no :class:`RamLayout`)."""
        return self._raw(address, size)

    @property
    def handle(self) -> int:
        """LibVMI's ``vmi_instance_t``, for calls the bindings do not expose."""
        from _libvmi import ffi  # type: ignore[import-not-found]

        return int(ffi.cast("uintptr_t", self._vmi.vmi))

    def close(self) -> None:
        if self._vmi is not None:
            self._vmi.destroy()
            self._vmi = None
