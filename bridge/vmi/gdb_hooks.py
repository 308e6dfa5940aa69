"""Breakpoint hooks on a guest's OpenSSL through QEMU's gdbstub.

For each target process and hook function: a breakpoint at the function's
address in that process (its libssl's load base + the symbol, read from the
guest's own copy of the library).  Hardware breakpoints (``Z1``) where the stub
takes them, software (``Z0``) otherwise; under TCG neither writes into guest
memory.  A breakpoint matches a virtual address in every address space, so each
hit is filtered on CR3.  On a hit the ``SSL *`` (``%rdi``) is handed to the
harvester (a key-log function's hook point gets every register: the ``g``
packet holds them all), then the function's first instruction is emulated
(:mod:`bridge.vmi.first_instruction`) and the guest resumes after it; an
instruction we cannot emulate is stepped over (remove, step, re-insert).

If the harvester dies or is stopped, a watchdog process (sharing the gdb
connection) removes every breakpoint and resumes the guest: it must never stay
paused or keep a breakpoint.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.errors import GuestAccessError, HookError
from bridge.vmi.first_instruction import REGISTERS, emulate
from bridge.vmi.gdbremote import GdbRemote

_PT_DYNAMIC, _DT_NULL, _DT_STRTAB, _DT_SYMTAB = 2, 0, 5, 6
#: CR3's page-table address, without the PCID bits, and without bit 12: with page
#: table isolation (KPTI) user mode runs on the user copy of the PGD, the page after it.
_CR3_ADDRESS = 0x000F_FFFF_FFFF_E000
DEFAULT_FUNCTIONS = ("SSL_get_session", "SSL_free")


def dynamic_symbols(read: Callable[[int, int], bytes], base: int, wanted: set[str]) -> dict[str, int]:
    """Offsets of ``wanted`` functions in an ELF image mapped at ``base``, from its
    dynamic symbol table as loaded (the loader may have relocated DT_* pointers)."""
    header = read(base, 64)
    e_phoff = struct.unpack_from("<Q", header, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", header, 54)
    table = read(base + e_phoff, e_phnum * e_phentsize)
    dynamic = None
    for index in range(min(e_phnum, 64)):
        p_type, _f, _o, p_vaddr, _pa, p_filesz = struct.unpack_from("<IIQQQQ", table, index * e_phentsize)
        if p_type == _PT_DYNAMIC:
            dynamic = read(base + p_vaddr, min(p_filesz, 4096))
    if dynamic is None:
        raise HookError("the guest's libssl has no dynamic segment")
    entries = {}
    for position in range(0, len(dynamic) - 15, 16):
        tag, value = struct.unpack_from("<qQ", dynamic, position)
        if tag == _DT_NULL:
            break
        entries[tag] = value
    symtab, strtab = entries.get(_DT_SYMTAB), entries.get(_DT_STRTAB)
    if symtab is None or strtab is None:
        raise HookError("the guest's libssl has no dynamic symbol table")
    symtab = symtab if symtab >= base else base + symtab
    strtab = strtab if strtab >= base else base + strtab
    count = _symbol_count(read, base, entries)
    if count is None:  # no hash table: .dynstr usually follows .dynsym
        count = (strtab - symtab) // 24 if strtab > symtab else 0
    if not 0 < count < 100_000:
        raise HookError("the guest's libssl symbol table is not where expected")
    symbols = read(symtab, count * 24)
    found: dict[str, int] = {}
    for index in range(count):
        st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from("<IBBHQQ", symbols, index * 24)
        if st_info & 0xF != 2 or not st_value or not st_shndx:
            continue
        name = _string(read, strtab + st_name)
        if name in wanted:
            found[name] = st_value
            if len(found) == len(wanted):
                break
    return found


_DT_HASH, _DT_GNU_HASH = 4, 0x6FFFFEF5


def _symbol_count(read: Callable[[int, int], bytes], base: int, entries: dict[int, int]) -> int | None:
    """The number of dynamic symbols, from DT_HASH's nchain or by walking DT_GNU_HASH
    (patchelf, as auditwheel runs it, may move .dynstr away from .dynsym)."""
    if _DT_HASH in entries:
        address = entries[_DT_HASH] if entries[_DT_HASH] >= base else base + entries[_DT_HASH]
        return struct.unpack("<II", read(address, 8))[1]
    if _DT_GNU_HASH not in entries:
        return None
    address = entries[_DT_GNU_HASH] if entries[_DT_GNU_HASH] >= base else base + entries[_DT_GNU_HASH]
    nbuckets, symoffset, bloom_size, _shift = struct.unpack("<IIII", read(address, 16))
    if nbuckets > 1 << 20 or bloom_size > 1 << 20:
        return None
    buckets_at = address + 16 + bloom_size * 8
    buckets = struct.unpack(f"<{nbuckets}I", read(buckets_at, nbuckets * 4))
    last = max(buckets, default=0)
    if last < symoffset:
        return symoffset
    chains_at = buckets_at + nbuckets * 4
    index = last
    while True:  # the last chain ends with a hash whose low bit is set
        (value,) = struct.unpack("<I", read(chains_at + (index - symoffset) * 4, 4))
        if value & 1:
            return index + 1
        index += 1
        if index - last > 1 << 16:
            return None


def _string(read: Callable[[int, int], bytes], address: int) -> str:
    data = b""
    while b"\0" not in data and len(data) < 256:
        chunk = read(address + len(data), 64)
        data += chunk
    return data.split(b"\0", 1)[0].decode("ascii", "replace")


@dataclass(slots=True)
class HookPoint:
    address: int
    function: str
    page_table: int  # the target's CR3 (physical address of its PGD)
    target: object  # the harvester's GuestTarget
    hardware: bool = True
    #: Called with every register instead of ``on_hit`` (a key-log function's arguments: Go's
    #: register ABI uses RAX, RBX, RCX, RDI, RSI, R8-R11; see bridge.vmi.keylog)
    on_registers: Callable[[dict[str, int], str], None] | None = None


@dataclass(slots=True)
class HookStats:
    stops: int = 0
    hits: int = 0  # stops of a target (CR3 matched)
    other_processes: int = 0
    emulated: int = 0
    stepped_over: int = 0
    stop_seconds: float = 0.0  # the guest paused in our hands


@dataclass
class GdbHooks:
    remote: GdbRemote
    on_hit: Callable[[object, int, str], None]  # (target, SSL *, function)
    stats: HookStats = field(default_factory=HookStats)
    points: dict[int, list[HookPoint]] = field(default_factory=dict)
    _watchdog: subprocess.Popen | None = None

    def start_watchdog(self, qmp_socket: str | None = None) -> None:
        """A process that, at our end, removes the breakpoints and resumes the guest."""
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "bridge.vmi.gdb_watchdog", str(self.remote.sock.fileno()), qmp_socket or ""],
            stdin=subprocess.PIPE, pass_fds=(self.remote.sock.fileno(),), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def _tell_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.stdin is not None:
            points = [{"address": p.address, "hardware": p.hardware} for group in self.points.values() for p in group]
            self._watchdog.stdin.write((json.dumps(points) + "\n").encode())
            self._watchdog.stdin.flush()

    def install(self, points: list[HookPoint]) -> None:
        """Replace the breakpoints (the guest must be stopped)."""
        wanted = {(p.address, p.page_table) for p in points}
        for address, group in list(self.points.items()):
            if not any((address, p.page_table) in wanted for p in group):
                self.remote.breakpoint(address, hardware=group[0].hardware, insert=False)
                del self.points[address]
        for point in points:
            group = self.points.setdefault(point.address, [])
            if any(p.page_table == point.page_table for p in group):
                continue
            if not group:
                point.hardware = self.remote.breakpoint(point.address, hardware=True)
                if not point.hardware and not self.remote.breakpoint(point.address, hardware=False):
                    raise HookError(f"the gdbstub refused a breakpoint at {point.address:#x}")
            else:
                point.hardware = group[0].hardware
            group.append(point)
        self._tell_watchdog()

    def handle_stop(self) -> None:
        """The guest stopped: hand a hit to the harvester, then resume past the instruction."""
        started = time.perf_counter()
        self.stats.stops += 1
        values = self.remote.read_registers("rip", "cr3", "eflags", *REGISTERS)
        group = self.points.get(values["rip"])
        if group is None:
            self.remote.cont()
            self.stats.stop_seconds += time.perf_counter() - started
            return
        cr3 = values["cr3"] & _CR3_ADDRESS
        point = next((p for p in group if p.page_table & _CR3_ADDRESS == cr3), None)
        if point is not None:
            self.stats.hits += 1
            try:
                if point.on_registers is not None:
                    point.on_registers(values, point.function)
                else:
                    self.on_hit(point.target, values["rdi"], point.function)
            except (GuestAccessError, HookError):
                pass  # counted by the harvester; the guest must resume regardless
        else:
            self.stats.other_processes += 1
        self._resume(group[0], values)
        self.stats.stop_seconds += time.perf_counter() - started

    def _resume(self, point: HookPoint, values: dict[str, int]) -> None:
        remote = self.remote
        try:
            code = remote.read_memory(point.address, 16)
            effect = emulate(code, values, remote.read_memory)
        except HookError:
            effect = None
        if effect is not None:
            for address, data in effect.memory:
                if remote.request(b"M%x,%x:" % (address, len(data)) + data.hex().encode()) != b"OK":
                    effect = None
                    break
        if effect is not None:
            for name, value in effect.registers.items():
                remote.write_register(name, value)
            remote.write_register("rip", point.address + effect.length)
            self.stats.emulated += 1
        else:  # step over: remove, step, re-insert
            remote.breakpoint(point.address, hardware=point.hardware, insert=False)
            remote.step()
            remote.breakpoint(point.address, hardware=point.hardware)
            self.stats.stepped_over += 1
        remote.cont()

    def remove_all(self) -> None:
        for address, group in self.points.items():
            self.remote.breakpoint(address, hardware=group[0].hardware, insert=False)
        self.points.clear()
        self._tell_watchdog()

    def close(self) -> None:
        """Remove every breakpoint, let the guest run, stop the watchdog."""
        try:
            self.remote.interrupt()
            self.remote.wait_stop(2.0)
            self.remove_all()
            self.remote.detach()
        except (HookError, OSError):
            pass  # the watchdog cleans up
        else:
            if self._watchdog is not None and self._watchdog.stdin is not None:
                self._watchdog.stdin.write(b"null\n")  # cleaned up: nothing left for the watchdog
        finally:
            if self._watchdog is not None:
                if self._watchdog.stdin is not None:
                    self._watchdog.stdin.close()
                self._watchdog.wait(10)
            self.remote.close()


def run_hooks(hooks: GdbHooks, points_for: Callable[[], list[HookPoint]], stop: threading.Event, *,
              refresh_interval: float = 2.0) -> None:
    """The hook loop: install, continue, handle stops; every ``refresh_interval`` s
    re-install for the current targets."""
    remote = hooks.remote
    remote.interrupt()
    if remote.wait_stop(10.0) is None:
        raise HookError("the guest did not stop for the gdbstub")
    if not remote.registers:
        remote.load_registers()
    hooks.install(points_for())
    remote.cont()
    next_refresh = time.monotonic() + refresh_interval
    while not stop.is_set():
        reply = remote.wait_stop(0.1)
        if reply is not None:
            hooks.handle_stop()
        if time.monotonic() >= next_refresh:
            remote.interrupt()
            if remote.wait_stop(5.0) is not None:
                hooks.install(points_for())
                remote.cont()
            next_refresh = time.monotonic() + refresh_interval


def hook_points(targets, functions: tuple[str, ...], symbol_cache: dict[str, dict[str, int]]) -> list[HookPoint]:  # type: ignore[no-untyped-def]
    """The breakpoints for the harvester's current targets."""
    points = []
    for target in targets:
        base = target.libssl_base
        offsets = symbol_cache.get(target.layout.build_id)
        if offsets is None:
            try:
                offsets = symbol_cache[target.layout.build_id] = dynamic_symbols(target.space.read, base, set(functions))
            except GuestAccessError:
                continue
        for function in functions:
            if function in offsets:
                points.append(HookPoint(base + offsets[function], function, target.process.page_table, target))
    return points
