"""Sensor throughput against the number of workers (``tls-bridge run``).

The bulk capture of bench_decrypt.py (real nginx/curl TLS 1.3 connections, 1448-byte
segments) is replayed with tcpreplay onto a veth at a fixed rate; ``tls-bridge run``
captures the other end with 1, then 2 workers (AF_PACKET fanout by flow), decrypts
with the client's key log and injects the cleartext into a second veth.  For each
run: how much of the plaintext came out (all connections decrypted, with their full
byte counts, or not), the kernel drops, and the CPU the workers used per MB.

    .venv/bin/python bench/bench_sensor.py [--rate-mbps 200] [--connections 20] [--size-mb 4]

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


def _namespace() -> str:
    name = f"tlsb-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    for command in (["link", "add", "va", "type", "veth", "peer", "name", "vb"],
                    ["link", "add", "tls0", "type", "veth", "peer", "name", "tls0peer"],
                    ["link", "set", "va", "mtu", "9000"], ["link", "set", "vb", "mtu", "9000"],
                    ["link", "set", "va", "up"], ["link", "set", "vb", "up"], ["link", "set", "tls0", "up"],
                    ["link", "set", "tls0peer", "up"], ["link", "set", "lo", "up"]):
        subprocess.run(["ip", "-n", name, *command], check=True)
    return name


def _metric(ns: str, name: str) -> int:
    text = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "http://127.0.0.1:9815/metrics"],
                          capture_output=True, text=True).stdout
    return sum(int(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\d+)$", text, re.MULTILINE))


def _cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the workers)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == pid or int(stat[1]) == pid:
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run(workers: int, pcap: Path, keylog: Path, meta: dict, rate: float, tmp: Path) -> dict:
    ns = _namespace()
    flows = tmp / f"flows-{workers}.jsonl"
    config = tmp / f"sensor-{workers}.toml"
    config.write_text(f"""[capture]
interfaces = ["vb"]
workers = {workers}
buffer_mb = 256
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
        time.sleep(3.0)
        cpu_before = _cpu(sensor.pid)
        started = time.monotonic()
        subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", "va", f"--mbps={rate}", str(pcap)],
                       check=True, capture_output=True)
        replayed = time.monotonic() - started
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            lines = flows.read_text().splitlines() if flows.exists() else []
            if len(lines) >= meta["connections"] or (time.monotonic() - started > replayed + 30):
                break
            time.sleep(0.2)
        drained = time.monotonic() - started
        drops = _metric(ns, "tls_bridge_capture_drops_total")
        cpu = _cpu(sensor.pid) - cpu_before
    finally:
        sensor.send_signal(signal.SIGTERM)
        sensor.wait(60)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    records = [json.loads(line) for line in flows.read_text().splitlines()] if flows.exists() else []
    complete = [r for r in records if r["status"] == "decrypted" and r["s2c"]["bytes"] >= meta["size_bytes"]]
    plaintext = sum(r["s2c"]["bytes"] + r["c2s"]["bytes"] for r in records if r["status"] == "decrypted")
    return {"workers": workers, "replay_s": replayed, "drain_s": drained, "complete": len(complete),
            "connections": meta["connections"], "plaintext_mb": plaintext / 1e6, "drops": drops,
            "cpu_s": cpu, "statuses": sorted({r["status"] for r in records})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-mbps", type=float, default=200.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--size-mb", type=float, default=4.0)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    if shutil.which("tcpreplay") is None:
        sys.exit("bench_sensor: needs tcpreplay (apt-get install tcpreplay)")
    args.regen = False
    pcap, keylog, meta = bench_decrypt.get_capture(args)
    meta = {"connections": args.connections, "size_bytes": int(args.size_mb * 1e6 * 0.99)}
    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as tmp:
        rows = [run(int(w), pcap, keylog, meta, args.rate_mbps, Path(tmp)) for w in args.workers.split(",")]
    print(f"tcpreplay at {args.rate_mbps:g} Mbit/s of {pcap.stat().st_size / 1e6:.0f} MB "
          f"({args.connections} TLS 1.3 connections), {os.cpu_count()} CPUs")
    header = f"{'workers':>7} {'complete':>9} {'plaintext MB':>13} {'MB/s':>7} {'drops':>7} {'worker CPU s':>13} {'CPU s/100MB':>12}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['workers']:>7} {row['complete']:>4}/{row['connections']:<4} {row['plaintext_mb']:>13.1f} "
              f"{row['plaintext_mb'] / row['drain_s']:>7.1f} {row['drops']:>7} {row['cpu_s']:>13.2f} "
              f"{row['cpu_s'] / max(row['plaintext_mb'], 1e-9) * 100:>12.2f}")


if __name__ == "__main__":
    main()
