"""Real TLS handshakes through one libssl (any build, loaded with ctypes), both
ends in this process over memory BIOs; the library's key log callback writes the
ground truth.  For harvesting wheel-bundled OpenSSL builds that no server here
links.

    python ctypes_tls_pair.py LIBSSL KEYLOG

Prints "ready", waits for a line on stdin, runs the handshakes (TLS 1.3 with
three suites, TLS 1.2 with two), prints "done", and exits at end of input.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from bridge.harvest.calibrate_ctypes import _Handshaker, _Library, _self_signed

RUNS = (
    (0x0304, "TLS_AES_128_GCM_SHA256"),
    (0x0304, "TLS_AES_256_GCM_SHA384"),
    (0x0304, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x0303, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (0x0303, "ECDHE-ECDSA-AES256-GCM-SHA384"),
)


def main(libssl: str, keylog: str) -> None:
    lib = _Library(libssl)
    with tempfile.TemporaryDirectory() as directory:
        cert, key = _self_signed(Path(directory))
        pair = _Handshaker(lib, cert, key)
        print("ready", flush=True)
        sys.stdin.readline()
        for version, suites in RUNS:
            pair.handshake(version, suites)
        with open(keylog, "w") as handle:
            for random, secrets in pair.secrets.items():
                for label, secret in secrets.items():
                    handle.write(f"{label} {random.hex()} {secret.hex()}\n")
        print("done", flush=True)
        sys.stdin.read()
        pair.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
