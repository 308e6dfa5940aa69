"""What hooking a library's key-log function costs a TLS server, per library.

In one run, for a Go HTTPS server (tests/support/servers/go_https built with
Debian's go) and ``gnutls-serv --http``: new TLS 1.3 connections per second
(``openssl s_time -new``: a full handshake and one GET, sequential) without a
harvester, then with ``tls-bridge harvest process --pid SERVER`` hooking the
library's key-log function (4 hits per TLS 1.3 handshake), then without again
(the load on this shared host drifts: the two unhooked runs bracket the hooked
one).  Also: connections the harvester published (it must be every one).  Needs root.

    .venv/bin/python bench/bench_keylog_hooks.py [--seconds 4]
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


def _go_server(directory: Path) -> Path:
    binary = directory / "gohttps"
    env = dict(os.environ, GOCACHE=str(Path.home() / ".cache" / "tls-bridge" / "go-build"), GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GOPROXY="off", GOPATH=str(directory / "gopath"))
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=ROOT / "tests" / "support" / "servers" / "go_https",
                   env=env, check=True, capture_output=True)
    return binary


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


def _measure(name: str, argv: list[str], seconds: float,
             directory: Path) -> tuple[str, float, float, float, int, int]:
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        before, _ = _rate(seconds)
        keylog = directory / f"{name.replace('/', '-').replace(' ', '-')}.keylog"
        harvester = _harvester(server.pid, keylog)
        try:
            hooked, made = _rate(seconds)
        finally:
            harvester.send_signal(signal.SIGTERM)
            tail = harvester.communicate(timeout=60)[1]
            if os.environ.get("BENCH_VERBOSE"):
                print(tail, file=sys.stderr)
        after, _ = _rate(seconds)
        match = re.search(r"(\d+) connections published", tail)
        return name, before, hooked, after, made, int(match[1]) if match else -1
    finally:
        server.terminate()
        server.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-keylog-") as tmp:
        directory = Path(tmp)
        cert, key = _certificate(directory)
        rows = [
            _measure("go crypto/tls", [str(_go_server(directory)), str(cert), str(key), f"127.0.0.1:{PORT}"],
                     args.seconds, directory),
            _measure("gnutls", ["gnutls-serv", "--http", "--x509certfile", str(cert), "--x509keyfile", str(key),
                                "-p", str(PORT)], args.seconds, directory),
        ]
    print(f"{'library (TLS 1.3, s_time -new)':34} {'unhooked conn/s':>16} {'hooked conn/s':>14} {'unhooked again':>15} "
          f"{'hooked/unhooked':>16} {'published/hooked connections':>29}")
    for name, before, hooked, after, made, published in rows:
        reference = (before + after) / 2
        print(f"{name:34} {before:16.1f} {hooked:14.1f} {after:15.1f} {hooked / reference:16.2f} "
              f"{f'{published}/{made}':>29}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
