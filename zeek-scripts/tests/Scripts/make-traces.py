#!/usr/bin/env python3
"""Regenerate the btest traces in ../Traces from real TLS sessions.

    sudo .venv/bin/python zeek-scripts/tests/Scripts/make-traces.py

Needs root (network namespaces), nginx, curl, tcpdump and mergecap -- what
scripts/setup.sh installs.  It runs two real HTTPS sessions with the test
helpers of tests/support/tlslab.py, in namespaces of their own:

* TLS 1.3, one connection to port 8443: ``/index.html``, a credential in the
  query (``?password=hunter2``), a PE executable (``/downloads/update.exe``,
  sniffed as application/x-dosexec) and a shell script (``/tools/install.sh``,
  flagged by its name);
* TLS 1.2, one connection to port 8444: ``/private/report.txt`` with HTTP Basic
  authentication (``curl -u alice:wonderland``).

curl writes SSLKEYLOGFILE; the two captures and key logs are merged, the keys
are served by ``tls-bridge keys publish --insecure`` on an ipc:// endpoint and
``tls-bridge decrypt -r ... --keys ...`` decrypts the merged capture, so the flow
log carries a real ``key_origin``.  The outputs are exactly what the bridge
writes:

* ``tls-bridge-http.pcap``        -- the synthetic cleartext connections (-w)
* ``tls-bridge-http.flows.jsonl`` -- the matching flow log (--flows)

Each run makes new client ports, randoms and timestamps: regenerating the
traces means regenerating the btest baselines that show those (see
../README.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TRACES = Path(__file__).resolve().parents[1] / "Traces"
WORK = Path("/tmp/tls-bridge-zeek-traces")
sys.path.insert(0, str(ROOT))

from tests.support import tlslab  # noqa: E402

# A DOS/PE header: enough for Zeek's file-magic signature (application/x-dosexec).
PE_STUB = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00\xb8" + b"\x00" * 43 + b"\x80\x00\x00\x00"
    + b"\x0e\x1f\xba\x0e\x00\xb4\x09\xcd\x21\xb8\x01\x4c\xcd\x21"
    + b"This program cannot be run in DOS mode.\r\r\n$" + b"\x00" * 7
    + b"PE\x00\x00" + b"\x00" * 60
)

FILES_13 = {
    "/index.html": b"<html><body><h1>tls-bridge zeek trace</h1></body></html>\n",
    "/tls-bridge-test-marker": b"marker\n",
    "/downloads/update.exe": PE_STUB,
    "/tools/install.sh": b"#!/bin/sh\necho installing\n",
}
URLS_13 = ("/index.html", "/tls-bridge-test-marker?password=hunter2&lang=en", "/downloads/update.exe", "/tools/install.sh")
FILES_12 = {"/private/report.txt": b"quarterly numbers\n"}
URLS_12 = ("/private/report.txt",)


def main() -> int:
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    certs = tlslab.make_cert(WORK / "certs", key_type="ec")
    run13 = tlslab.run_curl_nginx(WORK / "tls13", certs=certs, tls="1.3", port=8443, urls=URLS_13, files=FILES_13, name="tls13")
    time.sleep(0.2)
    run12 = tlslab.run_curl_nginx(
        WORK / "tls12", certs=certs, tls="1.2", port=8444, urls=URLS_12, files=FILES_12, name="tls12",
        curl_args=("-u", "alice:wonderland"),
    )
    capture = WORK / "https.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", str(capture), str(run13.pcap), str(run12.pcap)], check=True)
    keylog = WORK / "sslkeys.log"
    keylog.write_bytes(run13.keylog.read_bytes() + run12.keylog.read_bytes())

    bridge = str(ROOT / ".venv" / "bin" / "tls-bridge")
    endpoint = f"ipc://{WORK}/feed"
    publisher = subprocess.Popen(
        [bridge, "keys", "publish", "--keylog", str(keylog), "--bind", endpoint, "--insecure", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        pcap, flows = TRACES / "tls-bridge-http.pcap", TRACES / "tls-bridge-http.flows.jsonl"
        subprocess.run(
            [bridge, "decrypt", "-r", str(capture), "--keys", endpoint, "--keys-insecure", "--keys-timeout", "5",
             "-w", str(pcap), "--flows", str(flows), "-q"],
            check=True, timeout=120,
        )
    finally:
        publisher.terminate()
        publisher.wait(10)
    lines = flows.read_text().splitlines()
    print(f"{pcap.name}: {pcap.stat().st_size} bytes; {flows.name}: {len(lines)} flows")
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("make-traces.py: needs root (network namespaces, tcpdump)")
    sys.exit(main())
