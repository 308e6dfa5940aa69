"""Sensor throughput against the number of workers (``tls-bridge run``).

The bulk capture of bench_decrypt.py (real nginx/curl TLS 1.3 connections, 1448-byte
segments) is replayed with tcpreplay onto a veth at a fixed rate; ``tls-bridge run``
captures the other end with 1, then 2 workers (AF_PACKET fanout by flow), decrypts
with the client's key log and injects the cleartext into a second veth.  For each
run: how much of the plaintext came out (all connections decrypted, with their full
byte counts, or not), the kernel drops, and the CPU the workers used per MB.

    .venv/bin/python bench/bench_sensor.py [--rate-mbps 0 (topspeed)] [--connections 20] [--size-mb 4]

Needs root, tcpreplay (Debian package), and what bench_decrypt.py needs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_decrypt  # noqa: E402

from tests.support.netns import veth_namespace  # noqa: E402


def _metric_text(ns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "http://127.0.0.1:9815/metrics"],
                          capture_output=True, text=True).stdout


def _metric(ns: str, name: str) -> int:
    text = _metric_text(ns)
    return sum(int(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\d+)$", text, re.MULTILINE))


def _worker_packets(ns: str) -> list[int]:
    """Frames each worker captured (tls_bridge_packets_total by worker)."""
    found = re.findall(r'^tls_bridge_packets_total\{worker="(\d+)"\} (\d+)', _metric_text(ns), re.MULTILINE)
    return [count for _, count in sorted((int(w), int(c)) for w, c in found)]


def _write_probe(path: Path) -> None:
    """64 UDP frames to as many ports: what shows each worker capturing."""
    from bridge.capture.pcapwriter import PcapWriter

    with PcapWriter(path) as writer:
        for port in range(40000, 40064):
            ip = bytes.fromhex("45000020000040004011") + b"\x00\x00" + bytes([192, 0, 2, 1, 192, 0, 2, 2])
            udp = port.to_bytes(2, "big") + (9).to_bytes(2, "big") + (12).to_bytes(2, "big") + b"\x00\x00probe"[:6]
            frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp
            writer.write(1_000_000_000, frame)


def _softnet_drops() -> int:
    """Packets the kernel dropped before any socket saw them (per-CPU backlog full:
    /proc/net/softnet_stat's second column), all CPUs, all namespaces."""
    with open("/proc/net/softnet_stat") as stat:
        return sum(int(line.split()[1], 16) for line in stat if line.strip())


def _family(pid: int) -> list[tuple[int, int, list[str]]]:
    """``pid`` and its children (the sensor and its workers): (pid, parent, /proc/PID/stat's
    fields after the command) each."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(stat[1]) == pid:
            found.append((int(entry), int(stat[1]), stat))
    return found


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user, system) of a process and its children (the workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    family = _family(pid)
    return sum(int(stat[11]) for _, _, stat in family) / tick, sum(int(stat[12]) for _, _, stat in family) / tick


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the sensor's workers)."""
    return [child for child, parent, _ in _family(pid) if parent == pid]


_BUSY_LOOP = """
import sys, time
start = time.perf_counter()
total = 0
for number in range(int(sys.argv[1])):
    total += number
print(time.perf_counter() - start)
"""


def host_scaling(loops: int = 8_000_000) -> float:
    """What this host gives two busy CPUs against one, in the same minute: one busy loop
    (Python, no memory to speak of) on CPU 0 alone, then one on each CPU at once; the
    one's time over the slower of the two, times two.  2.0 on a host whose CPUs are the
    machine's own; less where the hypervisor's CPUs share a core or are overcommitted --
    the bound that two workers against one meet on that host, however good the code."""
    def busy(cpus: list[int]) -> list[float]:
        procs = [subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", _BUSY_LOOP, str(loops)],
                                  stdout=subprocess.PIPE, text=True) for cpu in cpus]
        return [float(proc.communicate()[0]) for proc in procs]

    alone = busy([0])[0]
    return 2 * alone / max(busy([0, 1]))


def run(workers: int, pcap: Path, keylog: Path, meta: dict, rate: float, tmp: Path, fast: bool = True,
        prefill: bool = False) -> dict:
    with veth_namespace("tlsb-bench", injection=True, mtu=9000) as ns:
        return _run(ns, workers, pcap, keylog, meta, rate, tmp, fast, prefill)


def _run(ns: str, workers: int, pcap: Path, keylog: Path, meta: dict, rate: float, tmp: Path, fast: bool,
         prefill: bool) -> dict:
    flows = tmp / f"flows-{workers}-{fast}-{prefill}.jsonl"
    # The sensor appends to its flow log: a run's own lines are the whole file only if it starts
    # with none (a repeated run would otherwise count the earlier run's lines as its own).
    flows.unlink(missing_ok=True)
    config = tmp / f"sensor-{workers}-{fast}-{prefill}.toml"
    config.write_text(f"""[decrypt]
fast_path = {str(fast).lower()}
[capture]
interfaces = ["vb"]
workers = {workers}
buffer_mb = {512 if prefill else 256}
[keys]
keylogs = ["{keylog}"]
[inject]
interface = "tls0"
mtu = 9000
[output]
flows = "{flows}"
[metrics]
listen = "127.0.0.1:9815"
log_interval = 0
""")
    sensor = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bridge.cli", "run", "--config",
                               str(config)], stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        # Every worker captures before the replay (a busy host starts slowly): probe frames (UDP, to many
        # ports, so the fanout spreads them) until each worker has counted some.
        probe = tmp / "probe.pcap"
        _write_probe(probe)
        ready = time.monotonic() + 90
        while time.monotonic() < ready:
            subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", "va", str(probe)],
                           check=True, capture_output=True)
            time.sleep(0.5)
            seen = re.findall(r'^tls_bridge_packets_total\{worker="\d+"\} (\d+)', _metric_text(ns), re.MULTILINE)
            if sum(1 for count in seen if int(count) > 0) >= workers:
                break
        else:
            raise SystemExit(f"bench_sensor: the {workers} workers did not capture within 90 s")
        cpu_before = _cpu(sensor.pid)
        packets_before = _worker_packets(ns)
        backlog_before = _softnet_drops()
        stopped = _children(sensor.pid) if prefill else []
        for pid in stopped:  # the workers wait while the whole capture goes into their rings
            os.kill(pid, signal.SIGSTOP)
        speed = ["--topspeed"] if rate <= 0 else [f"--mbps={rate}"]
        # -K: the capture is read into memory first, so the disk does not pace the replay; its
        # "Actual: ... sent in S seconds" line dates the first frame (the load comes before it).
        replay = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-K", "-i", "va", *speed, str(pcap)],
                                check=True, capture_output=True, text=True)
        finished = time.time()
        replayed = float(re.search(r"sent in ([0-9.]+) seconds", replay.stdout).group(1))
        started = finished - replayed
        if stopped:
            time.sleep(0.5)  # the veth's backlog into the rings
            started = time.time()
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + replayed + 30
        while time.monotonic() < deadline:
            lines = flows.read_text().splitlines() if flows.exists() else []
            if len(lines) >= meta["connections"]:
                break
            time.sleep(0.05)
        # The flow log is flushed per line: its modification time is when the last connection ended.
        drained = (flows.stat().st_mtime if flows.exists() else time.time()) - started
        time.sleep(1.5)  # each worker sends its counters at most once a second
        packets = [after - before for after, before in zip(_worker_packets(ns), packets_before)]
        drops = _metric(ns, "tls_bridge_capture_drops_total")
        backlog = _softnet_drops() - backlog_before
        cpu_after = _cpu(sensor.pid)
        user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
        cpu = user + system
        inject_dropped = _metric(ns, "tls_bridge_inject_dropped_total")
    finally:
        sensor.send_signal(signal.SIGTERM)
        sensor.wait(60)
    records = [json.loads(line) for line in flows.read_text().splitlines()] if flows.exists() else []
    complete = [r for r in records if r["status"] == "decrypted" and r["s2c"]["bytes"] >= meta["size_bytes"]]
    plaintext = sum(r["s2c"]["bytes"] + r["c2s"]["bytes"] for r in records if r["status"] == "decrypted")
    return {"workers": workers, "path": ("compiled" if fast else "Python") + (", prefilled" if prefill else ""), "replay_s": replayed, "drain_s": drained, "complete": len(complete),
            "connections": meta["connections"], "plaintext_mb": plaintext / 1e6, "drops": drops, "backlog_drops": backlog, "inject_dropped": inject_dropped,
            "cpu_s": cpu, "system_s": system,
            "split": "/".join(f"{100 * count / max(sum(packets), 1):.0f}" for count in packets), "statuses": sorted({r["status"] for r in records})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mbps", type=float, default=0.0,
                        help="tcpreplay's rate in Mbit/s (default 0: --topspeed, as fast as the veth takes it)")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=4.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the reference run (one worker on the Python path, [decrypt] fast_path = false)")
    parser.add_argument("--prefill", action="store_true",
                        help="also, for each worker count: the workers stopped (SIGSTOP) while tcpreplay fills their "
                             "rings (512 MiB each), then resumed; MB/s is then their own rate from the resumption, "
                             "with no tcpreplay sharing the cores (what 2 workers on a 2-core host can show)")
    args = parser.parse_args()
    if shutil.which("tcpreplay") is None:
        sys.exit("bench_sensor: needs tcpreplay (apt-get install tcpreplay)")
    args.regen = False
    pcap, keylog, meta = bench_decrypt.get_capture(args)
    meta = {"connections": args.connections, "size_bytes": int(args.size_mb * 1e6 * 0.99)}
    plan = [] if args.no_reference else [(1, False, False)]
    plan += [(int(w), True, False) for w in args.workers.split(",")]
    if args.prefill:
        plan += [(int(w), True, True) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        rows = []
        for w, fast, prefill in plan:
            host = host_scaling()
            rows.append({**run(w, pcap, keylog, meta, args.rate_mbps, Path(tmp), fast, prefill), "host": host})
    rate = "--topspeed" if args.rate_mbps <= 0 else f"{args.rate_mbps:g} Mbit/s"
    print(f"tcpreplay {rate} of {pcap.stat().st_size / 1e6:.0f} MB ({args.connections} TLS 1.3 connections), "
          f"{os.cpu_count()} CPUs")
    header = (f"{'workers':>7} {'path':>19} {'complete':>9} {'plaintext MB':>13} {'replay s':>9} {'MB/s':>7} {'drops':>7} {'backlog':>8} "
              f"{'inject drops':>13} {'worker CPU s':>13} {'of it system':>13} {'MB per CPU s':>13} {'split %':>8} {'host 2/1':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['workers']:>7} {row['path']:>19} {row['complete']:>4}/{row['connections']:<4} "
              f"{row['plaintext_mb']:>13.1f} {row['replay_s']:>9.2f} {row['plaintext_mb'] / row['drain_s']:>7.1f} {row['drops']:>7} "
              f"{row['backlog_drops']:>8} {row['inject_dropped']:>13} "
              f"{row['cpu_s']:>13.2f} {row['system_s']:>13.2f} {row['plaintext_mb'] / max(row['cpu_s'], 1e-9):>13.1f} {row['split']:>8}"
              f" {row['host']:>8.2f}x")
    print("drops: the capture ring's (tls_bridge_capture_drops_total); backlog: the kernel's before any socket "
          "(softnet_stat, the whole host: raise net.core.netdev_max_backlog when it grows)")
    if args.prefill:
        print("prefilled: the workers stopped during the replay, MB/s from their resumption to the last flow-log "
              "line (their own rate, the cores theirs alone); the live rows share the cores with tcpreplay")
    print("split %: the frames each worker took (the fanout hashes connections: with few, the busiest worker "
          "bounds the wall time)")
    print("host 2/1: what this host's two CPUs gave two busy loops against one, just before the row's run "
          "(host_scaling: below 2 where the hypervisor's CPUs share a core or are overcommitted; it bounds two "
          "workers against one)")
    print("replay s: tcpreplay's sending time (from memory, -K); MB/s: plaintext out over the time from the "
          "replay's first frame to the last connection's flow-log line (bounded by how fast tcpreplay fills the "
          "veth); MB per CPU s: what one core of the workers decrypts and injects")


if __name__ == "__main__":
    main()
