"""What the inline IPS costs: added latency per request and throughput, inline against
plain forwarding through the same gateway, in one run.

The lab of tests/test_ips_inline.py (tests/support/inline_lab.py): client — gateway —
server namespaces, nginx with TLS 1.3 on the server, the process harvester publishing
its secrets, Suricata 7 in af-packet IPS mode beside the gateway.  A Python client in
the client namespace measures, over HTTPS:

* requests on an open keep-alive connection (GET of a 1 KiB file): each request's
  time, p50 and p99;
* new connections (TCP + TLS handshake + the first request): p50 and p99 (inline,
  the first request also waits for the harvester's secrets);
* one download of a large file: MB/s.

First with the gateway forwarding plainly (no NFQUEUE rule), then with the rules in
and ``tls-bridge ips --inline`` judging every record — once with ``--no-queue-gso``
(the kernel cuts offload super-packets into MTU-sized packets before queueing them:
how the bridge ran before NFQA_CFG_F_GSO), once as it runs by default — with the CPU
time the bridge and the judging Suricata used meanwhile (its hold-time histogram from
its Prometheus metrics is printed too), and a few requests a drop rule matches: how
long their record waited for Suricata's drop (``held_ms`` of the cut).  Beside it the
reactive mode (``tls-bridge ips`` on eve alerts, the lab of tests/test_ips.py: mirror
→ sensor → Suricata IDS): its alert-to-cut time, after which the request has already
reached the server.

    .venv/bin/python bench/bench_ips_inline.py [--requests 300] [--connections 30] [--size-mb 32]

Needs root and what the test needs (nginx, curl, iptables, Suricata 7, tshark).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import tlslab
from tests.support.inline_lab import (
    SERVER,
    exec_in,
    forwarding_queued,
    inline_lab,
    jsonl,
)

CLIENT = r"""
import http.client, json, ssl, sys, time
server, requests, connections = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
context.minimum_version = ssl.TLSVersion.TLSv1_3
def get(connection, path):
    connection.request("GET", path)
    response = connection.getresponse()
    size = 0
    while True:
        chunk = response.read(1 << 20)
        if not chunk:
            return size
        size += len(chunk)
kept = http.client.HTTPSConnection(server, 443, context=context, timeout=60)
get(kept, "/small?warm")
open_connection = []
for i in range(requests):
    started = time.perf_counter()
    assert get(kept, f"/small?{i}") == 1024
    open_connection.append(time.perf_counter() - started)
new = []
for i in range(connections):
    started = time.perf_counter()
    fresh = http.client.HTTPSConnection(server, 443, context=context, timeout=60)
    assert get(fresh, f"/small?new{i}") == 1024
    new.append(time.perf_counter() - started)
    fresh.close()
started = time.perf_counter()
size = get(kept, "/big")
print(json.dumps({"open": open_connection, "new": new, "bytes": size, "seconds": time.perf_counter() - started}))
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _measure(lab, requests: int, connections: int) -> dict:  # type: ignore[no-untyped-def]
    out = subprocess.run([*exec_in(lab.client), sys.executable, "-c", CLIENT, SERVER, str(requests),
                          str(connections)], capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise SystemExit(f"client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _inline(lab, name: str, extra: tuple[str, ...], args: argparse.Namespace) -> tuple[dict, str]:  # type: ignore[no-untyped-def]
    with lab.ips(name, "--hold-budget", "10", "--verdict-timeout", "5", "--metrics", "127.0.0.1:9813", *extra) as ips:
        ips.wait_for("ips --inline: queue", 30)
        bridge0, suricata0, wall0 = _cpu_seconds(ips.proc.pid), _cpu_seconds(lab.suricata.pid), time.monotonic()
        row = _row(f"inline{' ' + ' '.join(extra) if extra else ''}", _measure(lab, args.requests, args.connections))
        row.update(bridge_cpu=_cpu_seconds(ips.proc.pid) - bridge0,
                   suricata_cpu=_cpu_seconds(lab.suricata.pid) - suricata0, wall=time.monotonic() - wall0)
        histogram = _hold_histogram(lab.gateway)
        for i in range(args.blocked if not extra else 0):
            lab.curl("--http1.1", "-o", "/dev/null", f"https://{SERVER}/tls-bridge-block-marker?bench{i}")
        time.sleep(0.5)
        ips.stop()
    return row, histogram


def _row(name: str, result: dict) -> dict[str, float]:
    return {"mode": name, "open_p50": _percentile(result["open"], 0.5) * 1000,
            "open_p99": _percentile(result["open"], 0.99) * 1000, "new_p50": _percentile(result["new"], 0.5) * 1000,
            "new_p99": _percentile(result["new"], 0.99) * 1000,
            "mbps": result["bytes"] / result["seconds"] / 1e6}


def _hold_histogram(gateway: str) -> str:
    text = subprocess.run([*exec_in(gateway), "curl", "-s", "http://127.0.0.1:9813/metrics"], capture_output=True,
                          text=True, check=False).stdout
    buckets = re.findall(r'tls_bridge_ips_inline_hold_seconds_bucket\{le="([^"]+)"\} ([0-9.e+]+)', text)
    counters = {name: float(value) for name, value in re.findall(
        r"^tls_bridge_ips_inline_(held|released|dropped|accepted|verdicts_passed)_total ([0-9.e+]+)$", text, re.MULTILINE)}
    total = float(buckets[-1][1]) if buckets else 0.0
    shown = [f"<= {float(le) * 1000:g} ms: {int(float(n))}" for le, n in buckets if le != "+Inf" and
             float(le) <= 0.1]
    return (f"  packets accepted at once {int(counters.get('accepted', 0))}, held {int(counters.get('held', 0))}, "
            f"released {int(counters.get('released', 0))}, dropped {int(counters.get('dropped', 0))}; "
            f"{int(counters.get('verdicts_passed', 0))} verdicts passed\n"
            f"  hold time (cumulative, {int(total)} held packets): " + ", ".join(shown))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--connections", type=int, default=30)
    parser.add_argument("--size-mb", type=int, default=32)
    parser.add_argument("--blocked", type=int, default=5, help="requests a drop rule matches, per mode (0: none, "
                        "and the reactive lab is not built)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ips-inline-") as directory:
        tmp = Path(directory)
        certs = tlslab.make_cert(tmp / "certs", key_type="ec")
        with inline_lab(tmp, certs) as lab:
            (lab.html / "small").write_bytes(b"x" * 1024)
            with open(lab.html / "big", "wb") as handle:
                handle.writelines(b"\x00" * (1 << 20) for _ in range(args.size_mb))  # the content does not matter to TLS
            forwarding_queued(lab.gateway, False)
            plain = _row("plain forwarding", _measure(lab, args.requests, args.connections))
            forwarding_queued(lab.gateway, True)
            before, _ = _inline(lab, "bench-no-gso", ("--no-queue-gso",), args)
            inline, histogram = _inline(lab, "bench", (), args)
            cuts = [r for r in jsonl(lab.tmp / "bench" / "ips.jsonl") if r["event"] == "cut"]
            blocked_served = [a for a in lab.access() if "tls-bridge-block-marker?bench" in a["uri"]]
    reactive = _reactive(args.blocked) if args.blocked else []
    print(f"\ninline IPS vs plain forwarding ({args.requests} requests on one TLS 1.3 connection, "
          f"{args.connections} new connections, a {args.size_mb} MB download; same lab, same run)\n")
    print(f"{'mode':<26} {'req p50 ms':>11} {'req p99 ms':>11} {'new p50 ms':>11} {'new p99 ms':>11} {'MB/s':>8} "
          f"{'x plain':>8} {'bridge CPU s':>13} {'Suricata CPU s':>15} {'wall s':>7}")
    for row in (plain, before, inline):
        cpu = (f"{row['bridge_cpu']:>13.2f} {row['suricata_cpu']:>15.2f} {row['wall']:>7.2f}" if "wall" in row else "")
        print(f"{row['mode']:<26} {row['open_p50']:>11.2f} {row['open_p99']:>11.2f} {row['new_p50']:>11.2f} "
              f"{row['new_p99']:>11.2f} {row['mbps']:>8.1f} {row['mbps'] / plain['mbps']:>7.2f}x {cpu}")
    for row in (before, inline):
        print(f"{'added, ' + row['mode']:<26} {row['open_p50'] - plain['open_p50']:>+11.2f} "
              f"{row['open_p99'] - plain['open_p99']:>+11.2f} {row['new_p50'] - plain['new_p50']:>+11.2f} "
              f"{row['new_p99'] - plain['new_p99']:>+11.2f}")
    print(histogram)
    if cuts:
        held = [c["held_ms"] for c in cuts]
        print(f"\nblocked requests, inline: {len(cuts)} connections cut, the record waited for the drop "
              f"p50 {_percentile(held, 0.5):.2f} ms, max {max(held):.2f} ms; requests that reached nginx: "
              f"{len(blocked_served)}")
    if reactive:
        print(f"blocked requests, reactive (eve alert -> RST + nftables): alert to cut p50 "
              f"{_percentile(reactive, 0.5):.2f} ms, max {max(reactive):.2f} ms, after the request reached the server")
    return 0


def _reactive(count: int) -> list[float]:
    """The reactive mode's alert-to-cut times, in the lab of tests/test_ips.py."""
    import threading

    from tests.support.keyfeed import BridgeProcess
    from tests.support.suricata import LiveSuricata
    from tests.test_ips import RULES, Topology, _curl, _nginx

    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-ips-reactive-") as directory:
        tmp = Path(directory)
        certs = tlslab.make_cert(tmp / "certs", key_type="ec")
        keylog, flows, log = tmp / "client.keylog", tmp / "flows.jsonl", tmp / "blocked.jsonl"
        with Topology() as topology:
            server = _nginx(topology, tmp, certs)
            with LiveSuricata("tls0peer", netns=topology.sensor, rules=[RULES], workdir=tmp / "suricata") as suricata, \
                    BridgeProcess(["decrypt", "-i", "m1", "--keylog", str(keylog), "--inject", "tls0", "--flows",
                                   str(flows)], tmp / "decrypt.err", prefix=topology.exec(topology.sensor)) as decrypt, \
                    BridgeProcess(["ips", "--eve", str(suricata.eve_path), "--interface", "g0", "--log", str(log)],
                                  tmp / "ips.err", prefix=topology.exec(topology.gateway)) as ips:
                decrypt.wait_for("capturing on m1")
                ips.wait_for("ips: following")
                for _ in range(count):
                    results: dict = {}
                    thread = threading.Thread(target=_curl, args=(topology, "/tls-bridge-block-marker", keylog,
                                                                   results, "blocked"))
                    thread.start()
                    thread.join(60)
                time.sleep(1.0)
                ips.stop()
                decrypt.stop()
            server.kill()
        times = [r["alert_to_cut_ms"] for r in jsonl(log) if r.get("event") == "cut" and r.get("alert_to_cut_ms")]
    return times


if __name__ == "__main__":
    sys.exit(main())
