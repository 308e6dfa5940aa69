#!/usr/bin/env python3
"""QUIC/HTTP/3 decryption benchmark: tls-bridge vs. tshark on the same real capture.

One run:

1. Records (or reuses, from ``build/bench/quic-<size>/``) a capture of aioquic's
   HTTP/3 client fetching ``--size-mb`` MB over ``--connections`` connections
   (one large GET each, QUIC v1, AES-128-GCM as aioquic negotiates it), in a
   private network namespace under tcpdump (tests/support/quiclab.py).
2. Runs ``tls-bridge decrypt -r CAP --keylog KEYLOG --flows OUT -q`` (with and
   without ``-w``: the synthetic HTTP/1.1 cleartext) pinned to one core; wall time
   and peak RSS of exactly that process (``os.wait4``); checks every connection is
   "decrypted" and carried the bytes the client received.
3. Runs tshark decrypting the same capture with the same key log and printing every
   STREAM frame's stream id (so every packet is decrypted and dissected), pinned too.
4. Prints a table (wall s, CPU s, MB of stream data and packets per CPU second, peak
   RSS MB) and the tls-bridge/tshark ratios (CPU time: what a loaded host does not
   inflate; wall time too).

Needs root (network namespaces, tcpdump), ip, tcpdump, tshark, aioquic ([test] extra).
Usage: sudo .venv/bin/python bench/bench_quic.py [--connections 4] [--size-mb 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import quiclab  # noqa: E402


@dataclass
class Run:
    tool: str
    wall: float
    cpu: float  # user + system: what a loaded host does not inflate
    rss_mb: float
    rc: int
    err: str


def timed(tool: str, argv: list[str], stdout: Path | None = None) -> Run:
    taskset = shutil.which("taskset")
    if taskset:
        argv = [taskset, "-c", "0", *argv]
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    err = tempfile.TemporaryFile()
    try:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
    finally:
        if stdout:
            out.close()
    err.seek(0)
    return Run(tool, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), err.read().decode(errors="replace"))


def record(directory: Path, connections: int, size_mb: int) -> quiclab.H3Run:
    done = directory / "run.json"
    if done.exists():
        saved = json.loads(done.read_text())
        return quiclab.H3Run(directory / "quic.pcap", directory / "client.keylog", directory / "server.keylog",
                             saved["clients"], saved["server"])
    size = size_mb * 1_000_000 // connections
    run = quiclab.run_h3(directory, [quiclab.H3Client([f"GET /bytes/{size}"]) for _ in range(connections)],
                         timeout=600)
    done.write_text(json.dumps({"clients": run.clients, "server": run.server}))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--size-mb", type=int, default=8)
    args = parser.parse_args()
    directory = ROOT / "build" / "bench" / f"quic-{args.connections}x{args.size_mb}"
    run = record(directory, args.connections, args.size_mb)
    received = sum(r["response_bytes"] for c in run.clients for r in c["requests"])
    packets = int(subprocess.run(["capinfos", "-c", "-M", str(run.pcap)], capture_output=True, text=True)
                  .stdout.split()[-1])
    work = Path(tempfile.mkdtemp(prefix="bench-quic-"))
    bridge = [sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(run.pcap), "--keylog", str(run.keylog), "-q"]
    runs = []
    for name, extra in (("tls-bridge", []), ("tls-bridge -w", ["-w", str(work / "synthetic.pcap")])):
        flows = work / "flows.jsonl"
        result = timed(name, [*bridge, "--flows", str(flows), *extra])
        assert result.rc == 0, result.err
        lines = [json.loads(line) for line in flows.read_text().splitlines()]
        assert [line["status"] for line in lines] == ["decrypted"] * args.connections, lines
        assert sum(line["s2c"]["bytes"] for line in lines) >= received
        runs.append(result)
    tshark = timed("tshark", ["tshark", "-r", str(run.pcap), "-o", f"tls.keylog_file:{run.keylog}",
                              "-d", f"udp.port=={quiclab.PORT},quic", "-T", "fields", "-e", "quic.stream.stream_id"],
                   stdout=work / "tshark.out")
    assert tshark.rc == 0, tshark.err
    runs.append(tshark)
    mb = received / 1e6
    print(f"\nQUIC capture: {args.connections} connections, {mb:.1f} MB of HTTP/3 response bodies, {packets} packets "
          f"({run.pcap.stat().st_size / 1e6:.1f} MB)\n")
    print(f"{'tool':<16}{'wall s':>9}{'CPU s':>9}{'MB/CPU s':>10}{'packets/CPU s':>15}{'peak RSS MB':>13}")
    for r in runs:
        print(f"{r.tool:<16}{r.wall:>9.2f}{r.cpu:>9.2f}{mb / r.cpu:>10.1f}{packets / r.cpu:>15.0f}{r.rss_mb:>13.0f}")
    print(f"\nthroughput tls-bridge/tshark, by CPU time: {tshark.cpu / runs[0].cpu:.2f}x "
          f"(with -w: {tshark.cpu / runs[1].cpu:.2f}x); by wall time: {tshark.wall / runs[0].wall:.2f}x; "
          f"peak RSS: {runs[0].rss_mb / tshark.rss_mb:.2f}x")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
