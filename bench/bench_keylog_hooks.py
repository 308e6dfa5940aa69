"""What hooking a library's key-log function costs a TLS server, per library.

In one run, for a Go HTTPS server (tests/support/servers/go_https built with
Debian's go), ``gnutls-serv --http`` and a gRPC server in Python (BoringSSL in
grpcio; s_time's HTTP/1 request is refused after the handshake): new TLS 1.3 connections (``openssl
s_time -new``: a full handshake and one GET, sequential) without a harvester,
then with ``tls-bridge harvest process --pid SERVER`` hooking the library's
key-log function (4 hits per TLS 1.3 handshake for Go, 5 for GnuTLS and BoringSSL), then
without again.  Per run: connections per second, and the server's CPU time per
connection (user + system from /proc/PID/stat, which includes the uprobe traps
and the kernel's argument copies; a figure the other load of a shared host
disturbs far less than the rate); for the hooked run also the harvester's own
CPU time per connection, and the records it published per connection made
(each connection at least once; twice where the exporter secret is logged after
the traffic secrets: GnuTLS, BoringSSL).  Needs root.

Then, free of the network and of s_time: bench/go_handshakes, Go's client and server
handshaking in one process over net.Pipe (8 writeKeyLog calls per handshake), rounds
of N handshakes alternately unhooked and hooked (three each, medians): the time per
handshake, and the cost of one hooked call.

    .venv/bin/python bench/bench_keylog_hooks.py [--seconds 4] [--handshakes 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 44391


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=bench", "-days", "2"],
                   check=True, capture_output=True)
    return cert, key


def _go_build(directory: Path, source: Path, name: str) -> Path:
    binary = directory / name
    env = dict(os.environ, GOCACHE=str(Path.home() / ".cache" / "tls-bridge" / "go-build"), GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GOPROXY="off", GOPATH=str(directory / "gopath"))
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=source, env=env, check=True, capture_output=True)
    return binary


def _go_server(directory: Path) -> Path:
    return _go_build(directory, ROOT / "tests" / "support" / "servers" / "go_https", "gohttps")


def _in_process(directory: Path, cert: Path, key: Path, handshakes: int) -> dict[str, float]:
    """Median µs per in-process Go handshake, unhooked and hooked, and the records published."""
    binary = _go_build(directory, ROOT / "bench" / "go_handshakes", "gohs")
    process = subprocess.Popen([str(binary), str(cert), str(key), str(handshakes)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None

    def round_us() -> float:
        process.stdin.write("\n")
        process.stdin.flush()
        count, seconds = process.stdout.readline().split()
        return float(seconds) / int(count) * 1e6

    from bridge.harvest.elf import read_elf
    from bridge.harvest.keylog_targets import find_hook_points
    from bridge.harvest.uprobes import UprobeSession

    (point,) = find_hook_points(str(binary), read_elf(str(binary)))
    unhooked, probed, hooked, published = [], [], [], 0
    try:
        round_us()  # warm up
        for index in range(3):
            unhooked.append(round_us())
            with UprobeSession(watchdog=False) as probes:  # the probe alone: its events never read
                probes.attach_raw(point.path, point.offset, "bench", point.probe_args)
                probed.append(round_us())
            harvester = _harvester(process.pid, directory / f"gohs-{index}.keylog")
            try:
                hooked.append(round_us())
                time.sleep(0.5)
            finally:
                harvester.send_signal(signal.SIGTERM)
                tail = harvester.communicate(timeout=60)[1]
            match = re.search(r"(\d+) connections published", tail)
            published += int(match[1]) if match else 0
    finally:
        process.stdin.close()
        process.wait(10)
    return {"unhooked": sorted(unhooked)[1], "probed": sorted(probed)[1], "hooked": sorted(hooked)[1],
            "published": published, "handshakes": 3 * handshakes}


def _cpu(pid: int) -> float:
    """User + system seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(seconds: float) -> tuple[float, int]:
    """(connections per wall-clock second, connections)."""
    started = time.monotonic()
    result = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{PORT}", "-new", "-time", str(int(seconds)),
                             "-www", "/"], capture_output=True, text=True, timeout=seconds + 60)
    elapsed = time.monotonic() - started
    match = re.search(r"(\d+) connections in \d+ real seconds", result.stdout)
    if not match:
        raise SystemExit(f"s_time: {result.stdout[-300:]} {result.stderr[-300:]}")
    return int(match[1]) / elapsed, int(match[1])


def _harvester(pid: int, keylog: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "harvest", "process", "--pid", str(pid),
                                "--keylog", str(keylog)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    assert process.stderr is not None
    for line in process.stderr:
        if os.environ.get("BENCH_VERBOSE"):
            print(line, end="", file=sys.stderr)
        if "harvesting" in line:
            return process
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit(f"the harvester did not start: {process.communicate()[1][-500:]}")


def _run(server: int, seconds: float) -> tuple[float, int, float]:
    """(connections/s, connections, server CPU µs per connection)."""
    cpu = _cpu(server)
    rate, made = _rate(seconds)
    return rate, made, (_cpu(server) - cpu) / max(made, 1) * 1e6


def _measure(name: str, argv: list[str], seconds: float, directory: Path) -> dict[str, object]:
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        before = _run(server.pid, seconds)
        keylog = directory / f"{name.replace('/', '-').replace(' ', '-')}.keylog"
        harvester = _harvester(server.pid, keylog)
        try:
            harvester_cpu = _cpu(harvester.pid)
            hooked = _run(server.pid, seconds)
            time.sleep(0.5)  # the last events read
            harvester_cpu = _cpu(harvester.pid) - harvester_cpu
        finally:
            harvester.send_signal(signal.SIGTERM)
            tail = harvester.communicate(timeout=60)[1]
            if os.environ.get("BENCH_VERBOSE"):
                print(tail, file=sys.stderr)
        after = _run(server.pid, seconds)
        match = re.search(r"(\d+) connections published", tail)
        return {"name": name, "before": before, "hooked": hooked, "after": after,
                "harvester_us": harvester_cpu / max(hooked[1], 1) * 1e6,
                "published": int(match[1]) if match else -1}
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--handshakes", type=int, default=1000, help="in-process Go handshakes per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-keylog-") as tmp:
        directory = Path(tmp)
        cert, key = _certificate(directory)
        rows = [
            _measure("go crypto/tls", [str(_go_server(directory)), str(cert), str(key), f"127.0.0.1:{PORT}"],
                     args.seconds, directory),
            _measure("gnutls", ["gnutls-serv", "--http", "--x509certfile", str(cert), "--x509keyfile", str(key),
                                "-p", str(PORT)], args.seconds, directory),
            _measure("boringssl (grpc)", [sys.executable, str(ROOT / "tests" / "support" / "servers" / "grpc_tls_server.py"),
                                          str(cert), str(key), str(PORT)], args.seconds, directory),
        ]
        inproc = _in_process(directory, cert, key, args.handshakes)
    print("TLS 1.3, openssl s_time -new; server CPU µs per connection (conn/s); unhooked runs bracket the hooked one")
    print(f"{'library':16} {'unhooked':>18} {'hooked':>18} {'unhooked again':>18} {'server CPU hooked/unhooked':>27} "
          f"{'harvester CPU µs/conn':>22} {'records/conns':>14}")
    for row in rows:
        before, hooked, after = row["before"], row["hooked"], row["after"]
        reference = (before[2] + after[2]) / 2
        cell = "{:8.0f} ({:6.0f}/s)".format
        print(f"{row['name']:16} {cell(before[2], before[0]):>18} {cell(hooked[2], hooked[0]):>18} "
              f"{cell(after[2], after[0]):>18} {hooked[2] / reference:27.2f} {row['harvester_us']:22.0f} "
              f"{str(row['published']) + '/' + str(hooked[1]):>14}")
    print()
    print(f"Go client and server in one process (net.Pipe), 8 writeKeyLog calls per handshake, "
          f"{args.handshakes} handshakes a round, medians of 3 rounds each")
    base = inproc["unhooked"]
    print(f"{'':34} {'µs/handshake':>13} {'/unhooked':>10} {'µs per call':>12}")
    print(f"{'unhooked':34} {base:13.0f} {1:10.2f} {'':>12}")
    for label, key in (("probe only (events not read)", "probed"), ("the harvester (probe, read, publish)", "hooked")):
        print(f"{label:34} {inproc[key]:13.0f} {inproc[key] / base:10.2f} {(inproc[key] - base) / 8:12.1f}")
    print(f"records published / handshakes hooked by the harvester: {inproc['published']}/{inproc['handshakes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
