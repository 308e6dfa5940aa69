#!/usr/bin/env python3
"""ClientHello flood benchmark (issue 17): this tree against a reference tree, in one run.

The flood (:mod:`tests.support.flood`): per connection a SYN and curl's real
ClientHello (from the committed capture ``tests/fixtures/tls13-http1.pcap``), never
answered, each from its own source address and port, its own client random, at
``--rate`` new connections per second of capture time; the five real connections
of the committed captures interleaved in it (``--real``).

For each tree (this one, and ``--reference``: a ``git worktree`` of the commit
before the issue's work, made in /tmp if missing), pinned to one core:

1. **rate**: ``tls-bridge decrypt -r FLOOD --flows FILE -q`` over ``--connections``
   connections: wall time, new connections per second, peak RSS of exactly that
   process (its VmHWM), flow log lines and bytes;
2. **engine rate**: the engine alone over the frames, read beforehand (no capture
   reading, no output): connections per second through ``run`` and through
   ``finish``;
3. **bytes per half-open connection**: ``--sample`` connections run through the
   engine and kept open, their memory by tracemalloc (Python objects only: not what
   the compiled front holds) and by RSS (``/proc/self/statm``, what the machine
   gives: malloc overhead, the front's entries, OpenSSL objects), divided by their
   number.

Then, for this tree only, ``--big`` connections (default 1,000,000) with the real
connections inside, through ``decrypt -r`` under ``--memory-limit``: peak RSS against
the budget, evictions by reason, the real connections' status; ``--verify`` also
has tshark decrypt them from the same capture and compares the plaintext.

Usage: .venv/bin/python bench/bench_flood.py [--connections 100000] [--big 1000000] [--verify]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.fixtures import FIXTURES  # noqa: E402
from tests.support.flood import Flood, mixed, write_pcap  # noqa: E402

BUILD = ROOT / "build" / "bench"
REFERENCE_COMMIT = "2158dd0"
START_NS = 1_700_000_000 * 10**9

_PROBE = r"""
import gc, json, sys, time, tracemalloc
from bridge.capture.pcapfile import read_capture
from bridge.engine import Engine
from bridge.keys.store import KeyStore

path, sample = sys.argv[1], int(sys.argv[2])
frames = list(read_capture(path))
connections = len(frames) // 2

def rss():  # measured first, in a fresh interpreter: freed memory is not reused yet
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

def discard(event):
    pass

# a tree whose engine takes lists of frames (a capture chunk at a time) gets them so
batched = "lists of frames" in (Engine.run.__doc__ or "")
def chunks(frames):
    return [frames[i:i + 4096] for i in range(0, len(frames), 4096)] if batched else frames

# bytes per half-open connection: the engine as the product runs it (frames in: on this
# tree, the compiled front holds them; tracemalloc sees only Python's objects, RSS all)
part = frames[: 2 * sample]
gc.collect()
before = rss()
engine = Engine(KeyStore(), output=discard)
engine.run(chunks(part))
gc.collect()
rss_per = (rss() - before) / sample
del engine
gc.collect()
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
engine = Engine(KeyStore(), output=discard)
engine.run(chunks(part))
traced_per = (tracemalloc.get_traced_memory()[0] - base) / sample
tracemalloc.stop()
del engine
gc.collect()
# engine rate: frames in, events out (to nowhere), all connections kept until the end
best_process = best_finish = 0.0
batches = chunks(frames)
for _ in range(3):
    engine = Engine(KeyStore(), output=discard)
    gc.collect(); gc.disable()
    t0 = time.perf_counter()
    engine.run(batches)
    t1 = time.perf_counter()
    engine.finish()
    t2 = time.perf_counter()
    gc.enable()
    best_process = max(best_process, connections / (t1 - t0))
    best_finish = max(best_finish, connections / (t2 - t1))
    del engine
print(json.dumps({"process": best_process, "finish": best_finish, "rss_per": rss_per, "traced_per": traced_per}))
"""


def ensure_reference(path: Path) -> Path:
    if not (path / "bridge").is_dir():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), REFERENCE_COMMIT],
                       check=True, capture_output=True)
    return path


def make_flood(connections: int, *, real: bool, rate: float) -> tuple[Path, Path]:
    BUILD.mkdir(parents=True, exist_ok=True)
    pcap = BUILD / f"flood-{connections}{'-real' if real else ''}.pcap"
    keylog = BUILD / "flood-real.keylog"
    keylog.write_bytes(b"".join(fixture.keylog.read_bytes() for fixture in FIXTURES))
    if not pcap.exists():
        flood = Flood().frames(connections, start_ns=START_NS, rate=rate)
        frames = mixed(flood, [fixture.frames() for fixture in FIXTURES], every=max(2, connections // 100)) \
            if real else flood
        partial = pcap.with_suffix(".partial")
        write_pcap(partial, frames)
        partial.rename(pcap)
    return pcap, keylog


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def run_measured(argv: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes of exactly that process (its VmHWM, read every 20 ms
    while it runs: the rusage of wait4 would keep this script's own peak, which a
    forked child inherits across exec), its stderr."""
    started = time.perf_counter()
    with subprocess.Popen(["taskset", "-c", "0", *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        chunks: list[str] = []
        import threading

        reader = threading.Thread(target=lambda: chunks.append(proc.stderr.read() if proc.stderr else ""))
        reader.start()
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _hwm(proc.pid))
            time.sleep(0.02)
        reader.join()
        stderr = "".join(chunks)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}):\n{stderr}")
    return wall, peak, stderr


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def measure_tree(name: str, tree: Path, pcap: Path, connections: int, sample: int) -> dict:
    flows = BUILD / f"flood-flows-{name}.jsonl"
    wall, rss, _ = run_measured([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(pcap), "--flows",
                                 str(flows), "-q"], cwd=tree, env=tree_env(tree))
    probe = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", _PROBE, str(pcap), str(min(sample, connections))],
                           cwd=tree, env=tree_env(tree), capture_output=True, text=True, check=True)
    result = json.loads(probe.stdout)
    result.update(name=name, wall=wall, rate=connections / wall, rss=rss, lines=len(flows.read_text().splitlines()),
                  log_bytes=flows.stat().st_size)
    flows.unlink()
    return result


def big_run(connections: int, budget: int, verify: bool, rate: float) -> None:
    pcap, keylog = make_flood(connections, real=True, rate=rate)
    flows = BUILD / "flood-big-flows.jsonl"
    wall, rss, stderr = run_measured([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(pcap), "--keylog",
                                      str(keylog), "--flows", str(flows), "--memory-limit", str(budget)],
                                     cwd=ROOT, env=tree_env(ROOT))
    summary = stderr.strip().splitlines()[-1]
    lines = [json.loads(line) for line in flows.read_text().splitlines()]
    real = {r["client"]: r for r in lines if str(r.get("client", "")).startswith("127.0.0.1:")}
    summaries = [line for line in lines if line.get("summary") == "never_completed"]
    print(f"\n{connections:,} connections, {len(real)} real ones inside, decrypt -r --memory-limit {budget >> 20} MiB:")
    print(f"  {wall:.1f} s, {connections / wall:,.0f} connections/s, peak RSS {rss / 2**20:,.1f} MiB "
          f"({'under' if rss <= budget else 'OVER'} the budget)")
    print(f"  {summary.removeprefix('tls-bridge: ')}")
    print(f"  flow log: {len(lines)} lines ({flows.stat().st_size:,} bytes), {len(summaries)} summary lines counting "
          f"{sum(s['connections'] for s in summaries):,} never-completed connections")
    print(f"  real connections: {', '.join(sorted(r['status'] for r in real.values()))}")
    if verify:
        from tests.support import tlslab

        expected = {(c["client"], c["server"]) for fixture in FIXTURES for c in fixture.expected}
        streams = {i: ends for i, ends in tlslab.tshark_streams(pcap).items() if ends in expected}
        same = 0
        for stream in tlslab.tshark_follow(pcap, keylog, port=[4433, 8443], streams=streams):
            ours = real[stream.client]
            same += all(ours[d]["sha256"] == hashlib.sha256(data).hexdigest() and ours[d]["bytes"] == len(data)
                        for d, data in (("c2s", stream.c2s), ("s2c", stream.s2c)))
        print(f"  tshark: {same} of {len(expected)} real connections byte-identical")
    flows.unlink()


def _children(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry))
    return children


def _worker_pid(supervisor: int) -> int | None:
    """The worker: the supervisor's child named tls-bridge-worker-0 (multiprocessing sets the name
    in its command line only on some systems: the child that runs bridge's worker, by its cmdline)."""
    for pid in _children(supervisor):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline and b"semaphore_tracker" not in cmdline:
            return pid
    return None


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _metrics(ns: str, port: int) -> dict[str, float]:
    result = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", f"http://127.0.0.1:{port}/metrics"],
                            capture_output=True, text=True)
    values: dict[str, float] = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def veth_run(connections: int, budget: int, pps: int, rate: float) -> None:
    """``tls-bridge run`` (one worker) on a veth fed by tcpreplay at ``pps``: the
    worker's RSS sampled every 0.2 s against the budget, /metrics, the flow log."""
    pcap, keylog = make_flood(connections, real=True, rate=rate)
    ns, port = f"flood-bench-{os.getpid()}", 9871
    work = BUILD / "flood-veth"
    work.mkdir(parents=True, exist_ok=True)
    flows = work / "flows.jsonl"
    flows.unlink(missing_ok=True)
    config = work / "sensor.toml"
    config.write_text(f"""[capture]\ninterfaces = ["vb"]\nworkers = 1\nbuffer_mb = 64\n[keys]\nkeylogs = ["{keylog}"]
[decrypt]\nmemory_limit = {budget}\n[inject]\ninterface = ""\n[output]\nflows = "{flows}"
[metrics]\nlisten = "127.0.0.1:{port}"\nlog_interval = 0\n""")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for command in (["link", "add", "va", "type", "veth", "peer", "name", "vb"], ["link", "set", "va", "up"],
                        ["link", "set", "vb", "up"], ["link", "set", "lo", "up"]):
            subprocess.run(["ip", "-n", ns, *command], check=True)
        sensor = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "bridge.cli", "run", "--config",
                                   str(config)], cwd=ROOT, env=tree_env(ROOT), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        worker = None
        while time.monotonic() < deadline and _metrics(ns, port).get("tls_bridge_workers_up") != 1.0:
            time.sleep(0.5)
        worker = _worker_pid(sensor.pid)  # ip netns exec execs: the Popen's pid is the supervisor
        assert worker is not None, "no worker process found"
        print(f"  (worker pid {worker}: {open(f'/proc/{worker}/cmdline', 'rb').read()[:120]!r})")
        replay = subprocess.Popen(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", "va", f"--pps={pps}",
                                   str(pcap)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0
        started = time.monotonic()
        while replay.poll() is None:
            peak = max(peak, _rss(worker))
            time.sleep(0.2)
        replayed = time.monotonic() - started
        total = connections + sum(len(f.expected) for f in FIXTURES)
        deadline = time.monotonic() + 120
        metrics = _metrics(ns, port)
        while metrics.get('tls_bridge_flows_total{worker="0"}', 0) < total and time.monotonic() < deadline:
            peak = max(peak, _rss(worker))
            time.sleep(0.5)
            metrics = _metrics(ns, port)
        sensor.terminate()
        sensor.wait(timeout=120)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    lines = [json.loads(line) for line in flows.read_text().splitlines()] if flows.exists() else []
    real = [r for r in lines if str(r.get("client", "")).startswith("127.0.0.1:")]
    print(f"\n{connections:,} connections through tls-bridge run (1 worker) on a veth, tcpreplay --pps {pps} "
          f"({replayed:.0f} s), [decrypt] memory_limit {budget >> 20} MiB (its 64 MiB capture ring included):")
    def metric(name: str) -> float:
        return metrics.get(f'tls_bridge_{name}{{worker="0"}}', 0)

    print(f"  worker peak RSS {peak / 2**20:,.1f} MiB (sampled every 0.2 s; {'under' if peak <= budget else 'OVER'} "
          f"the budget); flows seen {metric('flows_total'):,.0f}, capture drops {metric('capture_drops_total'):,.0f}")
    evicted = {re.search(r'reason="(\w+)"', key).group(1): int(value) for key, value in metrics.items()  # type: ignore[union-attr]
               if key.startswith("tls_bridge_flows_evicted_by_total")}
    print(f"  evicted by reason {evicted}; never-completed connections only in summary lines "
          f"{metric('flows_summarised_total'):,.0f}")
    print(f"  real connections: {', '.join(sorted(r['status'] for r in real))}; flow log {len(lines)} lines")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=100_000, help="flood for the rate (default: 100000)")
    parser.add_argument("--sample", type=int, default=20_000, help="half-open connections measured (default: 20000)")
    parser.add_argument("--rate", type=float, default=50_000, help="new connections per second of capture time")
    parser.add_argument("--reference", type=Path, default=Path("/tmp/issue17-ref"),
                        help=f"reference tree (a worktree of {REFERENCE_COMMIT} is made there if missing)")
    parser.add_argument("--big", type=int, default=1_000_000, help="connections of the budget run (0: none)")
    parser.add_argument("--budget", type=int, default=256 << 20, help="--memory-limit of the budget run, bytes")
    parser.add_argument("--verify", action="store_true", help="tshark decrypts the real connections of the big run")
    parser.add_argument("--veth", action="store_true", help="also the big flood through tls-bridge run on a veth "
                        "(root: a network namespace, tcpreplay)")
    parser.add_argument("--pps", type=int, default=30_000, help="tcpreplay's packets per second for --veth")
    parser.add_argument("--skip-compare", action="store_true", help="no reference comparison (only the big runs)")
    parser.add_argument("--only-veth", action="store_true", help="of the big runs, only the one through run")
    args = parser.parse_args()

    if args.skip_compare:
        if args.big and not args.only_veth:
            big_run(args.big, args.budget, args.verify, args.rate)
        if args.veth:
            veth_run(args.big or args.connections, args.budget, args.pps, args.rate)
        return
    reference = ensure_reference(args.reference)
    pcap, _ = make_flood(args.connections, real=False, rate=args.rate)
    hello = Flood().hello_bytes
    print(f"flood: {args.connections:,} connections (SYN + curl's {hello}-byte ClientHello, never answered), "
          f"{pcap.stat().st_size / 2**20:,.0f} MiB; one core each (taskset -c 0)")
    results = [measure_tree("reference", reference, pcap, args.connections, args.sample),
               measure_tree("this tree", ROOT, pcap, args.connections, args.sample)]
    print(f"\n{'':24}{'decrypt -r':>12}{'engine':>12}{'engine':>12}{'peak':>10}{'flow log':>12}"
          f"{'bytes per half-open':>24}")
    print(f"{'':24}{'conn/s':>12}{'process/s':>12}{'finish/s':>12}{'RSS MiB':>10}{'lines':>12}"
          f"{'tracemalloc':>12}{'RSS':>12}")
    for r in results:
        print(f"{r['name'] + ' ' + (REFERENCE_COMMIT if r['name'] == 'reference' else 'HEAD'):24}"
              f"{r['rate']:>12,.0f}{r['process']:>12,.0f}{r['finish']:>12,.0f}{r['rss'] / 2**20:>10,.0f}"
              f"{r['lines']:>12,}{r['traced_per']:>12,.0f}{r['rss_per']:>12,.0f}")
    ref, new = results
    print(f"{'ratio (this / reference)':24}{new['rate'] / ref['rate']:>11.1f}x{new['process'] / ref['process']:>11.1f}x"
          f"{new['finish'] / ref['finish']:>11.1f}x{new['rss'] / ref['rss']:>9.2f}x"
          f"{new['lines'] / max(ref['lines'], 1):>11.4f}x{new['traced_per'] / ref['traced_per']:>11.2f}x"
          f"{new['rss_per'] / ref['rss_per']:>11.2f}x")
    if args.big:
        big_run(args.big, args.budget, args.verify, args.rate)
    if args.veth:
        veth_run(args.big or args.connections, args.budget, args.pps, args.rate)


if __name__ == "__main__":
    main()
