"""How fast a guest build never seen before is harvested, per resolution path (QEMU TCG guest).

In one run, on one guest (the tests' guest: Debian's 6.1 kernel, ``openssl s_server
-www``), the VM harvester is started against one server at a time, and
connections are made one after the other from the host (``openssl s_client``, TLS
1.3 and 1.2 alternating, each held 0.3 s then one request), each noted with its
start time and client random:

* **reference** — the guest's wheel OpenSSL 3.5.9, whose profile is shipped (wire trigger);
* **b: candidate confirmed** — the guest's Debian libssl with its own profile hidden
  (``--no-shipped-profiles``, every other shipped profile a candidate): confirmed on
  live connections, TLS 1.3 and 1.2 each, before anything is published (wire trigger);
* **c: learned, hooks** — a copy of that libssl with its build-id changed, no profile
  and no candidate (``--resolve learn``): learned from connections whose ``SSL *``
  the gdbstub breakpoints give (``--trigger hooks,wire``);
* **c: learned, wire only** — the same with the wire trigger alone: each object
  found around its client random in guest memory.

(Path a, calibration here, does not apply to a guest: its library is not loaded
on the host.)  For each: the time from the first connection's start to the first
line published, the connections made before it and how many of those were never
published (a learned layout publishes the connections it was learned from), how
long the layout took from the build's first sight (the harvester's status), and
the share of the connections after the first published one that were published.  Needs root (the guest's RAM file, the gdbstub).

    .venv/bin/python bench/bench_resolve_vm.py [--connections 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.harvest.elf import read_elf  # noqa: E402
from bridge.harvest.profile import SHIPPED_DIR  # noqa: E402
from tests.support.guest import Guest, build_guest_image  # noqa: E402
from tests.test_vmi_guest import _relearn_server  # noqa: E402

DEBIAN = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def _pid(guest: Guest, port: int) -> str:
    _, output = guest.shell(f"for p in $(pidof openssl); do grep -q {port} /proc/$p/cmdline && echo $p; done")
    return output.split()[0]


def _randoms(path: Path) -> list[str]:
    if not path.exists():
        return []
    return list(dict.fromkeys(line.split()[1] for line in path.read_text().splitlines()
                              if line.strip() and not line.startswith("#")))


def _run(guest: Guest, work: Path, name: str, port: int, pid: str, connections: int, *options: str):  # type: ignore[no-untyped-def]
    directory = work / f"run{len(list(work.glob('run*')))}"
    directory.mkdir()
    harvested, status, log = directory / "harvested.keylog", directory / "status.json", directory / "harvest.err"
    process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "harvest", "vm", "--memory-file",
                                str(guest.memory_path), "--kernel", str(guest.image.kernel), "--wire-pcap",
                                str(guest.pcap), "--pid", pid, "--keylog", str(harvested), "--status", str(status),
                                "--profile-cache", str(directory / "cache"), *options],
                               stderr=open(log, "w"), cwd=ROOT)
    deadline = time.monotonic() + 60
    while "harvesting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # (the breakpoints are in)
    started: list[tuple[float, str]] = []
    first_line_at = None
    for index in range(connections):
        keylog = directory / f"client{index}.keylog"
        begun = time.monotonic()
        client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(port)}",
                                   "-keylogfile", str(keylog), "-quiet", "-tls1_3" if index % 2 == 0 else "-tls1_2"],
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        client.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
        started.append((begun, _randoms(keylog)[0]))
        if first_line_at is None and _randoms(harvested):
            first_line_at = time.monotonic()
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    got = set(_randoms(harvested))
    if first_line_at is None and got:
        first_line_at = time.monotonic()
    layout = json.loads(status.read_text())["layouts"][0]
    before = [random for begun, random in started if first_line_at is None or begun < first_line_at]
    first_published = next((i for i, (_, random) in enumerate(started) if random in got), None)
    later = started[first_published + 1:] if first_published is not None else []
    return (name, (first_line_at - started[0][0]) if first_line_at else None, len(before),
            sum(1 for random in before if random not in got), layout.get("resolved_after_s"),
            f"{sum(1 for _, random in later if random in got)}/{len(later)}", layout.get("origin"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tls-bridge-bench-resolve-vm-"))
    rows = []
    try:
        with Guest(build_guest_image("6.1"), pcap=work / "guest.pcap", gdb_port=0, workdir=work / "guest") as guest:
            rows.append(_run(guest, work, "reference: shipped profile (3.5.9)", 4434, _pid(guest, 4434),
                             args.connections))
            others = work / "other-builds"
            others.mkdir()
            for path in SHIPPED_DIR.glob("*.json"):
                if path.stem != read_elf(DEBIAN).build_id:
                    shutil.copy(path, others / path.name)
            rows.append(_run(guest, work, "b: candidate confirmed (Debian's)", 4433, _pid(guest, 4433),
                             args.connections, "--no-shipped-profiles", "--profiles", str(others)))
            pid, _ = _relearn_server(guest, work)
            rows.append(_run(guest, work, "c: learned, gdbstub hooks + wire", 4434, str(pid), args.connections,
                             "--no-shipped-profiles", "--resolve", "learn", "--trigger", "hooks,wire",
                             "--gdb", f"127.0.0.1:{guest.gdb_port}", "--qmp", str(guest.qmp_path)))
            rows.append(_run(guest, work, "c: learned, wire only", 4434, str(pid), args.connections,
                             "--no-shipped-profiles", "--resolve", "learn"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'path':38} {'first line after':>17} {'connections before it':>22} {'of them never published':>24} "
          f"{'layout resolved in':>19} {'later published':>16}  origin")
    for name, first, made, missed, resolved, later, origin in rows:
        first_text = f"{first:.2f} s" if first is not None else "never"
        resolved_text = f"{resolved:.2f} s" if resolved is not None else "-"
        print(f"{name:38} {first_text:>17} {made:>22} {missed:>24} {resolved_text:>19} {later:>16}  {origin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
