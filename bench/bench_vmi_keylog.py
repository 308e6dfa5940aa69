"""What hooking Go's and GnuTLS's key-log functions costs, in a QEMU guest (gdbstub
breakpoints) and in a host process (uprobes), per handshake, beside the unhooked
rate, in one run.

The guest: the tests' key-log guest (tests/support/guest.py: Debian's 6.1 kernel
under TCG, a static stripped go1.19 build of tests/support/servers/go_https on
4435, gnutls-serv on 4436).  For each server: new TLS 1.3 connections from the
host (``openssl s_time -new``: a full handshake and one GET, sequential) without a
harvester, then with ``tls-bridge harvest vm --trigger hooks --gdb`` (a breakpoint
at the key-log function: 4 stops per TLS 1.3 handshake for Go, 5 for GnuTLS; 1 for
TLS 1.2), then without again; and gnutls-serv with ``--trigger wire`` instead (no
hook: its sessions found in its memory from the ClientHellos on the guest's mirror).  Per run: connections per second, wall ms per
connection, QEMU's CPU ms per connection (its /proc stat: the whole guest); for
the hooked run the harvester's stops, the ms per stop the guest spent paused in
our hands, and the records published.  Then the same servers as host processes,
unhooked / ``harvest process`` uprobes / unhooked again (bench/bench_keylog_hooks.py's
measurement: the server's CPU µs per connection).

    .venv/bin/python bench/bench_vmi_keylog.py [--seconds 10] [--process-seconds 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _process_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_keylog_hooks", ROOT / "bench" / "bench_keylog_hooks.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _s_time(port: int, seconds: float, *extra: str) -> tuple[float, int, float]:
    """(connections/s, connections, wall seconds)."""
    started = time.monotonic()
    result = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-time",
                             str(int(seconds)), "-www", "/", *extra], capture_output=True, text=True,
                            timeout=seconds + 120)
    elapsed = time.monotonic() - started
    match = re.search(r"(\d+) connections in \d+ real seconds", result.stdout)
    if not match:
        raise SystemExit(f"s_time: {result.stdout[-300:]} {result.stderr[-300:]}")
    return int(match[1]) / elapsed, int(match[1]), elapsed


def _guest_run(guest, port: int, seconds: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
    cpu = _cpu(guest.qemu_pid)
    rate, made, elapsed = _s_time(guest.host_port(port), seconds, "-tls1_3")
    return {"rate": rate, "made": made, "ms": elapsed / max(made, 1) * 1000,
            "qemu_ms": (_cpu(guest.qemu_pid) - cpu) / max(made, 1) * 1000}


def _guest_harvester(guest, comm: str, keylog: Path, log: Path, mode: str) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    handle = open(log, "w")
    trigger = (["--trigger", "hooks", "--gdb", f"127.0.0.1:{guest.gdb_port}", "--qmp", str(guest.qmp_path)]
               if mode == "hooks" else ["--trigger", "wire", "--wire-pcap", str(guest.pcap)])
    process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "harvest", "vm", "--memory-file",
                                str(guest.memory_path), "--kernel", str(guest.image.kernel), "--name", "bench",
                                "--comm", comm, *trigger, "--keylog", str(keylog)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=handle, text=True)
    deadline = time.monotonic() + 120
    ready = "hooked at its key-log function" if mode == "hooks" else "its sessions searched"
    while ready not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the VM harvester did not start: {log.read_text()[-800:]}")
        time.sleep(0.2)
    time.sleep(1.0)  # the breakpoint installed
    return process


def _guest_measure(guest, name: str, comm: str, port: int, seconds: float, directory: Path,  # type: ignore[no-untyped-def]
                   mode: str = "hooks") -> dict:
    before = _guest_run(guest, port, seconds)
    keylog, log = directory / f"{comm}-{mode}.keylog", directory / f"{comm}-{mode}.log"
    harvester = _guest_harvester(guest, comm, keylog, log, mode)
    try:
        hooked = _guest_run(guest, port, seconds)
        time.sleep(0.5)
    finally:
        harvester.send_signal(signal.SIGTERM)
        harvester.wait(60)
    after = _guest_run(guest, port, seconds)
    text = log.read_text()
    if os.environ.get("BENCH_VERBOSE"):
        print(text, file=sys.stderr)
    stops = re.search(r"(\d+) stops, (\d+) in targets .*? the guest paused ([\d.]+) ms per stop", text)
    published = re.search(r"(\d+) connections published", text)
    return {"name": f"{name} ({mode})", "before": before, "hooked": hooked, "after": after,
            "stops": int(stops[2]) if stops else 0, "paused_ms": float(stops[3]) if stops else -1.0,
            "published": int(published[1]) if published else -1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="per guest run")
    parser.add_argument("--process-seconds", type=float, default=4.0, help="per host-process run")
    args = parser.parse_args()
    from tests.support.go_builds import build_go_server
    from tests.support.guest import Guest, build_keylog_guest_image

    processes = _process_bench()
    with tempfile.TemporaryDirectory(prefix="bench-vmi-keylog-") as tmp:
        directory = Path(tmp)
        go = build_go_server(directory / "go", "gohttps")
        image = build_keylog_guest_image(go)
        rows: list[dict] = []
        done, failure = threading.Event(), []

        def in_guest() -> None:  # QEMU dies with the thread that started it
            try:
                with Guest(image, workdir=directory / "guest", gdb_port=0, name="bench-keylog",
                           pcap=directory / "guest.pcap") as guest:
                    time.sleep(2.0)
                    rows.append(_guest_measure(guest, "go crypto/tls", "gohttps", 4435, args.seconds, directory))
                    rows.append(_guest_measure(guest, "gnutls", "gnutls-serv", 4436, args.seconds, directory))
                    rows.append(_guest_measure(guest, "gnutls", "gnutls-serv", 4436, args.seconds, directory,
                                               mode="wire"))
            except BaseException as exc:  # noqa: BLE001
                failure.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=in_guest)
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        cert, key = processes._certificate(directory)
        host = [
            processes._measure("go crypto/tls", [str(go), str(cert), str(key), f"127.0.0.1:{processes.PORT}"],
                               args.process_seconds, directory),
            processes._measure("gnutls", ["gnutls-serv", "--http", "--x509certfile", str(cert), "--x509keyfile",
                                          str(key), "-p", str(processes.PORT)], args.process_seconds, directory),
        ]
    print("In a QEMU TCG guest, gdbstub hooks or the wire search (no hook): TLS 1.3, openssl s_time -new from the "
          "host; wall ms per connection (conn/s), QEMU CPU ms per connection")
    print(f"{'library (mode)':22} {'unhooked':>16} {'hooked':>16} {'unhooked again':>16} {'added ms/conn':>14} "
          f"{'QEMU CPU ms (unh./hooked)':>26} {'stops/conn':>11} {'ms paused/stop':>15} {'records/conns':>14}")
    for row in rows:
        before, hooked, after = row["before"], row["hooked"], row["after"]
        reference = (before["ms"] + after["ms"]) / 2
        cell = "{:6.1f} ({:4.1f}/s)".format
        print(f"{row['name']:22} {cell(before['ms'], before['rate']):>16} {cell(hooked['ms'], hooked['rate']):>16} "
              f"{cell(after['ms'], after['rate']):>16} {hooked['ms'] - reference:14.1f} "
              f"{(before['qemu_ms'] + after['qemu_ms']) / 2:12.1f} / {hooked['qemu_ms']:<11.1f} "
              f"{row['stops'] / max(hooked['made'], 1):11.1f} {row['paused_ms']:15.2f} "
              f"{str(row['published']) + '/' + str(hooked['made']):>14}")
    print()
    print("Host processes, uprobes (harvest process): TLS 1.3, openssl s_time -new; "
          "server CPU µs per connection (conn/s)")
    print(f"{'library':14} {'unhooked':>18} {'hooked':>18} {'unhooked again':>18} {'server CPU hooked/unhooked':>27} "
          f"{'harvester CPU µs/conn':>22} {'records/conns':>14}")
    for row in host:
        before, hooked, after = row["before"], row["hooked"], row["after"]
        reference = (before[2] + after[2]) / 2
        cell = "{:8.0f} ({:6.0f}/s)".format
        print(f"{row['name']:14} {cell(before[2], before[0]):>18} {cell(hooked[2], hooked[0]):>18} "
              f"{cell(after[2], after[0]):>18} {hooked[2] / reference:27.2f} {row['harvester_us']:22.0f} "
              f"{str(row['published']) + '/' + str(hooked[1]):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
