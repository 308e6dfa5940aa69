"""VM harvester benchmark, on the test guest (QEMU TCG, Debian 6.1 kernel, KASLR).

In one run:

* the guest's s_server: connections/s and time per connection (``openssl s_time
  -new`` from the host through the forwarded port: a full TLS 1.3 handshake and one
  request each, sequential) unhooked, with the on-demand (wire) trigger, on sensors'
  requests (a live sensor on the host's loopback asks over the key feed), and with
  gdbstub breakpoint hooks (SSL_get_session and SSL_free);
* the harvester's figures: trigger (ClientHello on the wire, request received) to
  secret published (p50/p99),
  connections published and missed, stops and time the guest spent paused per stop;
* the introspection costs: guest RAM read throughput (RAM file, QEMU process),
  a page walk, the KASLR scan, BTF parsing, the task list and a VMA walk.

    .venv/bin/python bench/bench_vmi.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.vmi.btf import btf_from_kernel_image  # noqa: E402
from bridge.vmi.linux import LinuxGuest  # noqa: E402
from bridge.vmi.paging import translate  # noqa: E402
from bridge.vmi.physmem import MemoryFileBackend, QemuProcessBackend  # noqa: E402
from tests.support.guest import Guest, build_guest_image  # noqa: E402


def _load(guest: Guest, seconds: float) -> tuple[float, int]:
    result = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{guest.host_port(4433)}", "-new", "-www",
                             "/", "-time", str(int(seconds))], capture_output=True, text=True)
    match = re.search(r"(\d+) connections in ([\d.]+) real seconds", result.stdout)
    if not match:
        raise RuntimeError(f"s_time: {result.stdout[-300:]} {result.stderr[-300:]}")
    return int(match.group(1)) / float(match.group(2)), int(match.group(1))


def _harvester(guest: Guest, log: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "harvest", "vm", "--memory-file",
                                str(guest.memory_path), "--kernel", str(guest.image.kernel), "--pid",
                                *_server_pid(guest), "--keylog", "/dev/null", *extra],
                               stderr=open(log, "w"), cwd=ROOT)
    deadline = time.monotonic() + 60
    while "harvesting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    return process


def _server_pid(guest: Guest) -> list[str]:
    status, output = guest.shell("for p in $(pidof openssl); do grep -q 4433 /proc/$p/cmdline && echo $p; done")
    return output.split()


def _summary(process: subprocess.Popen, log: Path) -> str:
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    text = log.read_text()
    published = re.search(r"(\d+) connections published of (\d+) searched .*?; misses: (\d+) closed .*?, "
                          r"(\d+) not found .*?, (\d+) incomplete, (\d+) unfinished", text)
    latency = re.search(r"trigger to published p50 ([\d.]+) ms, p99 ([\d.]+) ms", text)
    hooks = re.search(r"(\d+) stops, (\d+) in targets.*paused ([\d.]+) ms per stop", text)
    parts = []
    if published:
        done, searched, closed, not_found, incomplete, unfinished = published.groups()
        parts.append(f"{done} published" + (f" of {searched} searched ({closed} closed first, {not_found} not "
                                            f"found, {incomplete} incomplete, {unfinished} still searched at the "
                                            f"stop)" if searched != "0" else ""))
    if latency:
        parts.append(f"trigger→published p50 {latency.group(1)} ms p99 {latency.group(2)} ms")
    if hooks:
        parts.append(f"{hooks.group(1)} stops, {hooks.group(3)} ms ours per stop")
    return "; ".join(parts) or text.strip().splitlines()[-1][:150]


def _on_requests(guest: Guest, directory: Path, seconds: float) -> tuple[str, float, int, str]:
    """The harvester watches nothing; a live sensor on the host's loopback asks for
    every connection it holds records of (s_time's connections are short: a
    request that arrives after the close is a counted miss)."""
    endpoint = f"ipc://{directory}/feed"
    harvester = _harvester(guest, directory / "requests.err", "--trigger", "requests", "--bind", endpoint,
                           "--insecure")
    sensor = subprocess.Popen([sys.executable, "-m", "bridge.cli", "decrypt", "-i", "lo", "--keys", endpoint,
                               "--keys-insecure", "-q"], stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        time.sleep(2.0)
        rate, count = _load(guest, seconds)
    finally:
        sensor.send_signal(signal.SIGTERM)
        sensor.wait(60)
    return ("on request (a sensor asks over the key feed)", rate, count,
            _summary(harvester, directory / "requests.err"))


def _timed(function, repeat: int = 1):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(repeat):
        result = function()
    return (time.perf_counter() - started) / repeat, result


def _introspection(guest: Guest) -> list[tuple[str, str]]:
    rows = []
    memory = MemoryFileBackend(guest.memory_path)
    qemu = QemuProcessBackend(guest.qemu_pid, guest.memory_bytes)
    for name, backend in (("RAM file (mmap)", memory), ("QEMU process (/proc/PID/mem)", qemu)):
        seconds, _ = _timed(lambda b=backend: [b.read(offset, 1 << 20) for offset in range(0, 256 << 20, 1 << 20)])
        rows.append((f"read 256 MiB of guest RAM, {name}", f"{256 / 1024 / seconds:.2f} GiB/s"))
    seconds, btf = _timed(lambda: btf_from_kernel_image(guest.image.kernel))
    rows.append(("BTF from the kernel image (decompress + parse)", f"{seconds * 1000:.0f} ms ({len(btf)} types)"))
    seconds, linux = _timed(lambda: LinuxGuest(memory, btf, memory.layout.ranges()))
    rows.append(("KASLR: find init_task, direct map, image delta", f"{seconds * 1000:.0f} ms"))
    seconds, processes = _timed(lambda: list(linux.processes()), 20)
    rows.append(("walk the task list", f"{seconds * 1000:.2f} ms ({len(processes)} processes)"))
    server = next(p for p in processes if p.comm == "openssl")
    seconds, vmas = _timed(lambda: linux.vmas(server), 20)
    rows.append(("walk a process's VMAs (maple tree, with file names)", f"{seconds * 1000:.2f} ms ({len(vmas)} VMAs)"))
    space = linux.address_space(server)
    heap = next(v for v in vmas if v.writable_anonymous)
    seconds, _ = _timed(lambda: translate(memory, server.page_table, heap.start), 2000)
    rows.append(("one 4-level page walk", f"{seconds * 1e6:.1f} µs"))
    seconds, _ = _timed(lambda: space.read(heap.start, 4096), 2000)
    rows.append(("read one guest-virtual page", f"{seconds * 1e6:.1f} µs"))
    memory.close()
    qemu.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vmi-") as tmp:
        directory = Path(tmp)
        with Guest(build_guest_image("6.1"), pcap=directory / "guest.pcap", gdb_port=0, workdir=directory) as guest:
            rows = []
            rate, count = _load(guest, args.seconds)
            rows.append(("unhooked", rate, count, ""))
            harvester = _harvester(guest, directory / "wire.err", "--wire-pcap", str(guest.pcap))
            rate, count = _load(guest, args.seconds)
            rows.append(("on-demand (ClientHello on the wire, memory search)", rate, count,
                         _summary(harvester, directory / "wire.err")))
            rows.append(_on_requests(guest, directory, args.seconds))
            harvester = _harvester(guest, directory / "hooks.err", "--trigger", "hooks", "--gdb",
                                   f"127.0.0.1:{guest.gdb_port}", "--qmp", str(guest.qmp_path))
            rate, count = _load(guest, args.seconds)
            rows.append(("gdbstub hooks (SSL_get_session, SSL_free)", rate, count,
                         _summary(harvester, directory / "hooks.err")))
            introspection = _introspection(guest)
    print(f"guest s_server under QEMU TCG (1 vCPU), s_time -new from the host, {args.seconds:g} s each")
    header = f"{'trigger':<52} {'conn/s':>7} {'ms/conn':>8} {'added ms':>9}  harvester"
    print(header)
    print("-" * (len(header) + 60))
    base = rows[0][1]
    for name, rate, _count, note in rows:
        print(f"{name:<52} {rate:>7.1f} {1000 / rate:>8.1f} {1000 / rate - 1000 / base:>9.1f}  {note}")
    print()
    for name, value in introspection:
        print(f"{name:<56} {value}")


if __name__ == "__main__":
    main()
