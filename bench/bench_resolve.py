"""How fast a build never seen before is harvested, per resolution path.

In one run, a process runs TLS handshakes without pause (both ends through one
libssl loaded with ctypes, over memory BIOs, TLS 1.3 and 1.2 alternating; each
connection kept alive, its client random and start time noted), and the process
harvester (uprobes) is started beside it:

* **reference** — Debian's libssl, whose profile is shipped;
* **a: calibrated here** — the same code with its build-id changed and every
  shipped profile ignored: calibrated in the sandbox at first sight;
* **b: candidate confirmed** — the same rebuilt library with calibration off:
  the shipped layouts are candidates, confirmed on live connections (TLS 1.3
  and TLS 1.2 each) before anything is published;
* **c: learned** — the same rebuilt library with calibration off and no
  candidate at all (shipped profiles ignored): the layout is learned from live
  connections.  Learning needs the connections' client randoms, so this run's
  handshakes also cross a TCP connection on ``lo`` in a network namespace of
  its own, and the harvester has the wire trigger beside its hooks.

For each: the time from the harvester's start to its first published line,
the connections made in between (not harvested: the build had no layout yet),
how long the layout took to resolve (the harvester's status), and the share of
the later connections published (the last second before the stop aside).  Needs root.

    .venv/bin/python bench/bench_resolve.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import tlslab  # noqa: E402
from tests.support.harvest import rebuilt_library  # noqa: E402

DEBIAN = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
LOOP = r"""
import sys, tempfile, time
from pathlib import Path
from bridge.harvest.calibrate_ctypes import _Handshaker, _Library, _self_signed
from tests.support.servers.ctypes_tls_pair import WiredHandshaker
lib = _Library(sys.argv[1])
out = open(sys.argv[2], "w")
directory = tempfile.mkdtemp()
cert, key = _self_signed(Path(directory))
pair = (WiredHandshaker if sys.argv[3:] == ["wire"] else _Handshaker)(lib, cert, key)
print("ready", flush=True)
runs = ((0x0304, "TLS_AES_128_GCM_SHA256"), (0x0303, "ECDHE-ECDSA-AES128-GCM-SHA256"))
index = 0
while True:
    version, suites = runs[index % 2]
    seen = set(pair.secrets)
    started = time.monotonic()
    pair.handshake(version, suites)
    for random in set(pair.secrets) - seen:
        out.write(f"{started:.6f} {random.hex()}\n")
    out.flush()
    index += 1
    time.sleep(0.02)
"""


def _randoms(keylog: Path) -> set[str]:
    if not keylog.exists():
        return set()
    return {line.split()[1].lower() for line in keylog.read_text().splitlines() if len(line.split()) == 3}


def run(name: str, library: Path, options: list[str], seconds: float, work: Path, *,
        netns: tlslab.Netns | None = None) -> dict[str, object]:
    """One row; with ``netns`` the handshakes also cross lo there and the harvester watches it."""
    work.mkdir()
    made, harvested, status = work / "made.txt", work / "harvested.keylog", work / "status.json"
    prefix = netns.prefix() if netns is not None else []
    loop = subprocess.Popen([*prefix, sys.executable, "-c", LOOP, str(library), str(made),
                             *(["wire"] if netns is not None else [])], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert loop.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    started = time.monotonic()
    wire = ["--trigger", "hooks,wire", "--wire", "lo"] if netns is not None else []
    harvester = subprocess.Popen([*prefix, sys.executable, "-m", "bridge.cli", "harvest", "process", "--pid",
                                  str(loop.pid), "--keylog", str(harvested), "--status", str(status),
                                  "--profile-cache", str(work / "cache"), *wire, *options],
                                 stderr=open(work / "harvest.err", "w"), cwd=ROOT)
    first_line = None
    deadline = started + seconds
    while time.monotonic() < deadline:
        if first_line is None and _randoms(harvested):
            first_line = time.monotonic()
        time.sleep(0.005)
    harvester.terminate()
    harvester.wait(30)
    loop.kill()
    loop.wait()
    connections = [(float(t), r) for t, r in (line.split() for line in made.read_text().splitlines())]
    got = _randoms(harvested)
    after_start = [(t, r) for t, r in connections if t >= started]
    first_index = next((i for i, (_, r) in enumerate(after_start) if r in got), None)
    # the last second before the stop aside: its events may still be in flight when the harvester stops
    later = [(t, r) for t, r in after_start[first_index:] if t < deadline - 1.0] if first_index is not None else []
    layouts = json.loads(status.read_text())["layouts"] if status.exists() else []
    resolved = next((entry.get("resolved_after_s") for entry in layouts), None)
    origin = next((entry.get("origin") for entry in layouts), None)
    return {
        "path": name,
        "origin": origin,
        "first line (s)": None if first_line is None else round(first_line - started, 3),
        "connections before it": first_index,
        "layout resolved (s)": resolved,
        "later published": f"{sum(1 for _, r in later if r in got)}/{len(later)}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (uprobes)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-resolve-") as directory:
        work = Path(directory)
        rebuilt, _ = rebuilt_library(DEBIAN, work / "lib")
        rows = [
            run("reference (shipped profile)", DEBIAN, [], args.seconds, work / "reference"),
            run("a: calibrated here", rebuilt, ["--no-shipped-profiles"], args.seconds, work / "a"),
            run("b: candidate confirmed", rebuilt, ["--resolve", "candidates"], args.seconds, work / "b"),
        ]
        with tlslab.Netns() as ns:
            rows.append(run("c: learned", rebuilt, ["--no-shipped-profiles", "--resolve", "candidates,learn"],
                            args.seconds, work / "c", netns=ns))
    columns = list(rows[0])
    widths = [max(len(str(c)), *(len(str(row[c])) for row in rows)) for c in columns]
    print(" | ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
