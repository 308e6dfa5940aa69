"""LibVMI beside our own guest-memory backends, on the test guest (QEMU TCG, Debian
6.1 kernel, 512 MiB of RAM in a file), in one run:

* 4-KiB physical reads a second (the same random pages for every backend): the RAM
  file (mmap), the QEMU process (``/proc/PID/mem``), LibVMI's file driver (partial
  init) as the harvester uses it (page cache flushed before each read) and, for
  scale, with its page cache kept (stale pages: not usable on a running guest);
* one client-random search: a connection to the guest's s_server is held open, its
  client random (from the client's key log) is searched over the whole guest RAM in
  1 MiB reads, and in the s_server's writable anonymous memory through our page walks
  (what the harvester searches);
* page walks: our walker and LibVMI's (``vmi_nested_pagetable_lookup``,
  ``vmi_get_nested_va_pages``) on the s_server's page tables.

    .venv/bin/python bench/bench_libvmi.py [--reads 20000]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.vmi import paging  # noqa: E402
from bridge.vmi.btf import btf_from_kernel_image  # noqa: E402
from bridge.vmi.libvmi_paging import LibvmiPageWalker  # noqa: E402
from bridge.vmi.linux import LinuxGuest  # noqa: E402
from bridge.vmi.physmem import LibvmiBackend, MemoryFileBackend, QemuProcessBackend  # noqa: E402
from tests.support.guest import Guest, build_guest_image  # noqa: E402

CHUNK = 1 << 20


class _CachedLibvmi(LibvmiBackend):
    """LibVMI with its page cache kept (no flush): stale on a running guest; for scale only."""

    def _raw(self, offset: int, size: int) -> bytes:
        data, read = self._read_pa(offset, size, padding=True)
        return data


def _reads(memory, pages: list[int]) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for page in pages:
        memory.read(page, 4096)
    return len(pages) / (time.perf_counter() - started)


def _search_ram(memory, needle: bytes) -> tuple[float, list[int]]:  # type: ignore[no-untyped-def]
    hits = []
    started = time.perf_counter()
    for first, end in memory.layout.ranges():
        for position in range(first, end, CHUNK):
            data = memory.read(position, min(CHUNK + len(needle) - 1, end - position))
            index = data.find(needle)
            while index >= 0:
                hits.append(position + index)
                index = data.find(needle, index + 1)
    return time.perf_counter() - started, sorted(set(hits))


def _search_process(memory, linux: LinuxGuest, process, needle: bytes) -> tuple[float, int, int]:  # type: ignore[no-untyped-def]
    """The harvester's search: the writable anonymous VMAs, page runs read through our walk."""
    started = time.perf_counter()
    hits = searched = 0
    for vma in linux.vmas(process):
        if not vma.writable_anonymous:
            continue
        for _, physical, size in paging.mapped_pages(memory, process.page_table, vma.start, vma.end):
            data = memory.read(physical, size)
            searched += size
            hits += data.count(needle)
    return time.perf_counter() - started, hits, searched


def _held_connection(guest: Guest, keylog: Path) -> tuple[subprocess.Popen, bytes]:
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(4433)}", "-keylogfile",
                             str(keylog), "-quiet", "-tls1_3"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if keylog.exists() and "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text():
            line = next(line for line in keylog.read_text().splitlines() if line.startswith("CLIENT_TRAFFIC"))
            return proc, bytes.fromhex(line.split()[1])
        time.sleep(0.05)
    raise RuntimeError("the held connection never completed its handshake")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=20000, help="4-KiB reads per backend (default 20000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lv-bench-") as scratch:
        directory = Path(scratch)
        with Guest(build_guest_image("6.1"), workdir=directory) as guest:
            backends = {
                "RAM file (mmap)": MemoryFileBackend(guest.memory_path),
                "QEMU process (/proc/PID/mem)": QemuProcessBackend(guest.qemu_pid, guest.memory_bytes),
                "LibVMI file driver, cache flushed per read": LibvmiBackend(str(guest.memory_path)),
                "LibVMI file driver, cache kept (stale)": _CachedLibvmi(str(guest.memory_path)),
            }
            memory = backends["RAM file (mmap)"]
            linux = LinuxGuest(memory, btf_from_kernel_image(guest.image.kernel), memory.layout.ranges())
            server = next(p for p in linux.processes() if p.comm == "openssl")
            rng = random.Random(22)
            pages = [rng.randrange(guest.memory_bytes // 4096) * 4096 for _ in range(args.reads)]
            proc, client_random = _held_connection(guest, directory / "client.keylog")
            rows = []
            try:
                for name, backend in backends.items():
                    per_second = _reads(backend, pages)
                    ram_seconds, hits = _search_ram(backend, client_random)
                    process_seconds, process_hits, searched = _search_process(backend, linux, server, client_random)
                    rows.append((name, per_second, ram_seconds, len(hits), process_seconds, process_hits, searched))
                walker = LibvmiPageWalker(backends["LibVMI file driver, cache flushed per read"])
                started = time.perf_counter()
                ours = list(paging.mapped_pages(memory, server.page_table, 0, 1 << 47)) + list(
                    paging.mapped_pages(memory, server.page_table, 0xFFFF_8000_0000_0000, 1 << 64))
                ours_seconds = time.perf_counter() - started
                started = time.perf_counter()
                theirs = list(walker.pages(server.page_table))
                theirs_seconds = time.perf_counter() - started
                sample = [virtual + 0x123 for virtual, _, _ in ours[:: max(1, len(ours) // 2000)]]
                started = time.perf_counter()
                mine = [paging.translate(memory, server.page_table, virtual) for virtual in sample]
                translate_ours = (time.perf_counter() - started) / len(sample)
                started = time.perf_counter()
                libvmi = [walker.translate(server.page_table, virtual) for virtual in sample]
                translate_theirs = (time.perf_counter() - started) / len(sample)
            finally:
                proc.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
                for backend in backends.values():
                    backend.close()
    print(f"guest: 512 MiB, Debian 6.1 under QEMU TCG; {args.reads} random 4-KiB reads per backend; "
          f"client random searched over all {guest.memory_bytes >> 20} MiB of RAM (1 MiB reads) and in the "
          f"s_server's writable anonymous memory ({rows[0][6] / 1e6:.2f} MB, through our page walk)\n")
    print("| backend | 4-KiB reads/s | client-random search, whole RAM | hits | search in s_server's memory | hits |")
    print("|---|---|---|---|---|---|")
    for name, per_second, ram_seconds, hits, process_seconds, process_hits, _ in rows:
        print(f"| {name} | {per_second:,.0f} | {ram_seconds * 1000:.0f} ms ({guest.memory_bytes / ram_seconds / 2**30:.2f} GiB/s) "
              f"| {hits} | {process_seconds * 1000:.1f} ms | {process_hits} |")
    print()
    print("| page walk of the s_server | ours (bridge.vmi.paging) | LibVMI |")
    print("|---|---|---|")
    print(f"| all present pages ({len(ours)}, kernel half included) | {ours_seconds * 1000:.0f} ms | "
          f"{theirs_seconds * 1000:.0f} ms (equal: {sorted(ours) == sorted(theirs)}) |")
    print(f"| one translation ({len(sample)} samples) | {translate_ours * 1e6:.1f} µs | {translate_theirs * 1e6:.1f} µs "
          f"(equal: {mine == libvmi}) |")


if __name__ == "__main__":
    main()
