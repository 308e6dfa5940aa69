"""Linux guest awareness with no per-kernel profile: the guest kernel's own BTF
gives every struct layout; the rest is found by looking.

* **KASLR**: ``init_task`` is found by scanning physical memory for its ``comm``
  ("swapper/0") with pid 0; the task list links give the direct-map base
  (``page_offset_base``: the first task's list node is a direct-map address whose
  back link is ``init_task``'s, a kernel-image address) and the kernel image's
  virtual-to-physical delta.  5-level paging shows in the direct-map base.
* **Processes**: the task list from ``init_task`` (group leaders), each with its
  ``comm``, pid and ``mm``; ``mm->pgd`` is the page-table root.
* **Mappings**: the VMAs of an ``mm`` from its maple tree (6.1+) or, on older
  kernels, the ``mmap`` list; file names from ``vm_file->f_path.dentry``.
* **Symbols**: exported ones from the kernel's own ``__ksymtab``
  (:mod:`bridge.vmi.ksymtab`), e.g. ``jiffies``, whose progress tells a running
  kernel from a paused one or from the remains of one before a reboot.

Everything the guest controls is bounded (list lengths, tree sizes, name depths),
so a corrupt or hostile guest yields an error, not a hang.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bridge.errors import GuestAccessError
from bridge.vmi.btf import Btf, BtfError
from bridge.vmi.ksymtab import exported_symbol
from bridge.vmi.paging import AddressSpace, PhysicalReader

_KERNEL_IMAGE = 0xFFFF_FFFF_8000_0000
#: How much of the kernel image before ``init_task`` holds its read-only data.
_IMAGE_SPAN = 64 << 20
_DIRECT_MAP_L4 = 0xFFFF_8880_0000_0000
_DIRECT_MAP_L5 = 0xFF11_0000_0000_0000
_GIB = 1 << 30
_USER_END = 1 << 57
_MAX_TASKS = 1 << 16
_MAX_NODES = 1 << 16
_VM_READ, _VM_WRITE, _VM_EXEC, _VM_SHARED = 0x1, 0x2, 0x4, 0x8


class GuestOsError(GuestAccessError):
    """The guest kernel's structures could not be found or followed."""


@dataclass(frozen=True, slots=True)
class KernelLayout:
    """Struct offsets of the guest kernel, from its BTF."""

    task_tasks: int
    task_pid: int
    task_tgid: int
    task_comm: int
    task_mm: int
    mm_pgd: int
    mm_maple_root: int | None
    mm_mmap: int | None
    vma_start: int
    vma_end: int
    vma_flags: int
    vma_pgoff: int
    vma_file: int
    vma_next: int | None
    file_dentry: int
    dentry_name: int
    dentry_parent: int
    range64_slot: int
    range64_slots: int
    arange64_slot: int
    arange64_slots: int

    @classmethod
    def from_btf(cls, btf: Btf) -> KernelLayout:
        maple = btf.has_member("mm_struct", "mm_mt")
        return cls(
            task_tasks=btf.offset("task_struct", "tasks"),
            task_pid=btf.offset("task_struct", "pid"),
            task_tgid=btf.offset("task_struct", "tgid"),
            task_comm=btf.offset("task_struct", "comm"),
            task_mm=btf.offset("task_struct", "mm"),
            mm_pgd=btf.offset("mm_struct", "pgd"),
            mm_maple_root=btf.offset("mm_struct", "mm_mt.ma_root") if maple else None,
            mm_mmap=None if maple else btf.offset("mm_struct", "mmap"),
            vma_start=btf.offset("vm_area_struct", "vm_start"),
            vma_end=btf.offset("vm_area_struct", "vm_end"),
            vma_flags=btf.offset("vm_area_struct", "vm_flags"),
            vma_pgoff=btf.offset("vm_area_struct", "vm_pgoff"),
            vma_file=btf.offset("vm_area_struct", "vm_file"),
            vma_next=None if maple else btf.offset("vm_area_struct", "vm_next"),
            file_dentry=btf.offset("file", "f_path.dentry"),
            dentry_name=btf.offset("dentry", "d_name.name"),
            dentry_parent=btf.offset("dentry", "d_parent"),
            range64_slot=btf.offset("maple_range_64", "slot") if maple else 0,
            range64_slots=btf.array_length("maple_range_64", "slot") if maple else 0,
            arange64_slot=btf.offset("maple_arange_64", "slot") if maple else 0,
            arange64_slots=btf.array_length("maple_arange_64", "slot") if maple else 0,
        )


@dataclass(frozen=True, slots=True)
class GuestProcess:
    task: int  # kernel virtual address of its task_struct
    pid: int
    comm: str
    mm: int
    page_table: int  # guest physical address of its PGD (its CR3)


@dataclass(frozen=True, slots=True)
class Vma:
    start: int
    end: int
    flags: int
    pgoff: int
    path: str  # "" for anonymous memory
    file: int = 0  # its struct file * (0: anonymous), for the page cache (bridge.vmi.pagecache)

    @property
    def writable_anonymous(self) -> bool:
        return bool(self.flags & _VM_WRITE and self.flags & _VM_READ) and not self.path and not self.flags & _VM_SHARED

    @property
    def executable(self) -> bool:
        return bool(self.flags & _VM_EXEC)


@dataclass(frozen=True, slots=True)
class KernelAddresses:
    init_task: int  # physical
    direct_map: int  # page_offset_base
    image_delta: int  # kernel image: physical = virtual - image_delta
    levels: int  # paging levels (4 or 5)


class LinuxGuest:
    def __init__(self, memory: PhysicalReader, btf: Btf, ranges: list[tuple[int, int]], *,
                 avoid: KernelAddresses | None = None) -> None:
        """Find the running kernel.  ``avoid``: a kernel found before that failed
        since (a reboot: its remains may still be intact in RAM), taken only if
        no other kernel is found."""
        self.memory = memory
        self.ranges = ranges
        try:
            self.layout = KernelLayout.from_btf(btf)
        except BtfError as exc:
            raise GuestOsError(f"the guest kernel's BTF lacks what the harvester follows: {exc}") from None
        self.kernel = self._locate(avoid)
        self._symbols: dict[str, int | None] = {}

    # --- KASLR ---------------------------------------------------------------------------

    def _u64(self, physical: int) -> int:
        return int.from_bytes(self.memory.read(physical, 8), "little")

    def _u32(self, physical: int) -> int:
        return int.from_bytes(self.memory.read(physical, 4), "little")

    def _in_ram(self, physical: int) -> bool:
        return any(first <= physical < end for first, end in self.ranges)

    def _locate(self, avoid: KernelAddresses | None, chunk: int = 1 << 22) -> KernelAddresses:
        """The first ``init_task`` whose task list can be walked; ``avoid`` only as a
        last resort (after a KASLR reboot the old kernel's remains come first as
        often as not; without KASLR the new kernel is where the old one was)."""
        needle = b"swapper/0\0"
        layout = self.layout
        candidates: list[KernelAddresses] = []
        for first, end in self.ranges:
            position = first
            while position < end:
                size = min(chunk + len(needle), end - position)
                data = self.memory.read(position, size)
                index = data.find(needle)
                while index >= 0:
                    found = self._check_init_task(position + index - layout.task_comm)
                    if found is not None:
                        if found != avoid and self._walkable(found):
                            return found
                        candidates.append(found)
                    index = data.find(needle, index + 1)
                position += chunk
        # None walkable but ``avoid`` (a guest that reboots without KASLR), or a walk
        # that failed while a task exited: the next rescan checks again.
        candidates.sort(key=lambda kernel: (kernel == avoid, not self._walkable(kernel)))
        if candidates:
            self.kernel = candidates[0]
            return candidates[0]
        raise GuestOsError("init_task not found in guest memory (not a Linux guest, or not booted yet)")

    def _walkable(self, kernel: KernelAddresses) -> bool:
        """Does the task list of this candidate lead back to its head, every process
        with a readable ``mm``?  (Remains of a previous kernel, half overwritten, do not.)"""
        self.kernel = kernel
        try:
            for _ in self.processes():
                pass
        except GuestAccessError:
            return False
        return True

    def _check_init_task(self, task: int) -> KernelAddresses | None:
        layout = self.layout
        if task < 0 or not self._in_ram(task) or self._u32(task + layout.task_pid) != 0:
            return None
        following = self._u64(task + layout.task_tasks)
        if following < _DIRECT_MAP_L5 or following >= _KERNEL_IMAGE:
            return None
        levels = 5 if following < 0xFFFF_8000_0000_0000 else 4
        low = _DIRECT_MAP_L5 if levels == 5 else _DIRECT_MAP_L4
        for first, end in self.ranges:
            # page_offset_base is 1 GiB aligned and maps physical 0: candidates put `following` in RAM
            candidate = (following - end) & ~(_GIB - 1)
            while candidate <= following - first:
                if candidate >= low and self._check_base(task, following, candidate) is not None:
                    back = self._check_base(task, following, candidate)
                    return KernelAddresses(task, candidate, back - (task + layout.task_tasks), levels)  # type: ignore[operator]
                candidate += _GIB
        return None

    def _check_base(self, task: int, following: int, base: int) -> int | None:
        """With direct-map base ``base``: the back link of the next task (init_task's
        list node, a kernel-image address), if the next task looks like one."""
        layout = self.layout
        physical = following - base
        if not self._in_ram(physical) or not self._in_ram(physical - layout.task_tasks):
            return None
        back = self._u64(physical + 8)
        next_task = physical - layout.task_tasks
        if back < _KERNEL_IMAGE or self._u32(next_task + layout.task_pid) == 0:
            return None
        # init_task's node is at (back - image_delta) == task + task_tasks: one equation, any delta
        return back

    def still_valid(self) -> bool:
        """Is the kernel where it was found?  (After a reboot, KASLR moved it.)"""
        try:
            return self._check_init_task(self.kernel.init_task) == self.kernel
        except GuestAccessError:
            return False

    # --- exported symbols ----------------------------------------------------------------

    def exported_symbol(self, name: str) -> int | None:
        """The virtual address of an exported kernel symbol (``__ksymtab``; see
        :mod:`bridge.vmi.ksymtab`), searched in the :data:`_IMAGE_SPAN` of the
        kernel image before ``init_task`` (the read-only data precede ``.data``)."""
        if name not in self._symbols:
            end = self.kernel.init_task
            start = next((max(first, end - _IMAGE_SPAN) for first, stop in self.ranges if first <= end < stop), end)
            image = self.memory.read(start, end - start)
            self._symbols[name] = exported_symbol(image, start, self.kernel.image_delta, name)
        return self._symbols[name]

    def jiffies(self) -> int | None:
        """The guest kernel's tick counter (it stands still in a paused guest, and in
        the remains of a kernel that is no longer running); None if not found."""
        address = self.exported_symbol("jiffies")
        return None if address is None else self.pointer(address)

    def physical(self, virtual: int) -> int:
        """A kernel virtual address (direct map or kernel image) → physical."""
        if virtual >= _KERNEL_IMAGE:
            return virtual - self.kernel.image_delta
        if virtual >= self.kernel.direct_map:
            return virtual - self.kernel.direct_map
        raise GuestOsError(f"{virtual:#x} is neither in the direct map nor in the kernel image")

    def read(self, virtual: int, size: int) -> bytes:
        return self.memory.read(self.physical(virtual), size)

    def pointer(self, virtual: int) -> int:
        return int.from_bytes(self.read(virtual, 8), "little")

    # --- processes ---------------------------------------------------------------------------

    def processes(self) -> Iterator[GuestProcess]:
        """Every thread-group leader with an address space (kernel threads have none)."""
        layout = self.layout
        head_physical = self.kernel.init_task + layout.task_tasks
        node = self._u64(head_physical)
        for _ in range(_MAX_TASKS):
            if self.physical(node) == head_physical:
                return
            task = node - layout.task_tasks
            mm = self.pointer(task + layout.task_mm)
            if mm:
                comm = self.read(task + layout.task_comm, 16).split(b"\0", 1)[0].decode("utf-8", "replace")
                pid = int.from_bytes(self.read(task + layout.task_pid, 4), "little")
                pgd = self.pointer(mm + layout.mm_pgd)
                yield GuestProcess(task, pid, comm, mm, self.physical(pgd))
            node = self.pointer(node)
        raise GuestOsError(f"the task list has more than {_MAX_TASKS} entries (corrupt?)")

    def address_space(self, process: GuestProcess) -> AddressSpace:
        return AddressSpace(self.memory, process.page_table, levels=self.kernel.levels)

    # --- mappings --------------------------------------------------------------------------------

    def vmas(self, process: GuestProcess) -> list[Vma]:
        layout = self.layout
        if layout.mm_maple_root is not None:
            addresses = self._maple_entries(self.pointer(process.mm + layout.mm_maple_root))
        else:
            addresses = self._vma_list(self.pointer(process.mm + layout.mm_mmap))  # type: ignore[operator]
        vmas = [self._vma(address) for address in addresses]
        return sorted((vma for vma in vmas if vma.start < vma.end <= _USER_END), key=lambda vma: vma.start)

    def _vma(self, address: int) -> Vma:
        layout = self.layout
        file = self.pointer(address + layout.vma_file)
        return Vma(
            start=self.pointer(address + layout.vma_start),
            end=self.pointer(address + layout.vma_end),
            flags=self.pointer(address + layout.vma_flags),
            pgoff=self.pointer(address + layout.vma_pgoff),
            path=self.file_path(file) if file else "",
            file=file,
        )

    def _vma_list(self, first: int) -> list[int]:
        addresses, node = [], first
        while node and len(addresses) < _MAX_NODES:
            addresses.append(node)
            node = self.pointer(node + self.layout.vma_next)  # type: ignore[operator]
        return addresses

    def _maple_entries(self, root: int) -> list[int]:
        """The entries (VMA addresses) of a maple tree.  Nodes are 256-byte aligned; an
        encoded node pointer is ``node | type << 3 | 0b100``, and the root one also has
        0b10 set.  Types: 1 leaf_64, 2 range_64, 3 arange_64 (mm trees keep gaps)."""
        layout = self.layout
        if not root:
            return []
        if root & 3 != 2 or root <= 4096:
            return [root]  # a single entry at the root
        entries: list[int] = []
        pending, seen = [root], set()
        while pending:
            encoded = pending.pop()
            node, kind = encoded & ~0xFF, (encoded >> 3) & 0xF
            if node in seen or len(seen) >= _MAX_NODES:
                continue
            seen.add(node)
            if kind == 3:  # maple_arange_64: internal, with gaps
                raw = self.read(node + layout.arange64_slot, layout.arange64_slots * 8)
                leaf = False
            elif kind in (1, 2):  # maple_leaf_64, maple_range_64
                raw = self.read(node + layout.range64_slot, layout.range64_slots * 8)
                leaf = kind == 1
            else:
                continue
            for index in range(0, len(raw), 8):
                value = int.from_bytes(raw[index : index + 8], "little")
                if value < _DIRECT_MAP_L5:
                    continue  # empty, or the node's metadata sharing its last slot
                if leaf:
                    if not value & 7:
                        entries.append(value)
                elif value & 7 == 4 and value > 4096:
                    pending.append(value)
        return entries

    def file_path(self, file: int, *, depth: int = 64) -> str:
        """The file's name from its dentry chain (relative to its mount's root)."""
        layout = self.layout
        dentry = self.pointer(file + layout.file_dentry)
        names: list[str] = []
        for _ in range(depth):
            if not dentry:
                break
            name_pointer = self.pointer(dentry + layout.dentry_name)
            name = self.read(name_pointer, 256).split(b"\0", 1)[0].decode("utf-8", "replace") if name_pointer else ""
            parent = self.pointer(dentry + layout.dentry_parent)
            if parent == dentry or name == "/":
                break
            names.append(name)
            dentry = parent
        return "/" + "/".join(reversed(names))
