"""The QEMU test guest for the VM-introspection tests: the product's builder and
runner (:mod:`bridge.vmi.testguest`, also behind ``tls-bridge demo --vm``) with a
second OpenSSL build inside.

    image = build_guest_image("6.1")          # or "6.12" (bookworm-backports)
    with Guest(image, pcap=tmp / "guest.pcap") as guest:
        body = curl_guest(guest, 4433, tmp / "keylog.txt", "--tlsv1.3")
        guest.memory_path                       # /dev/shm file = guest physical RAM

Images are cached under ``build/guest/<flavor>/<key>/`` (``build/`` is gitignored; a
clean clone rebuilds them).  Besides the host's ``openssl`` on 4433, the guest
serves ``openssl s_server -www`` on 4434 with a wheel-bundled OpenSSL 3.5.9 (from
``tests.support.openssl_builds``) under ``/opt/ossl35``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bridge.vmi.testguest import (  # noqa: F401 - the tests' names for the product's guest
    ALT_OPENSSL_DIR,
    FAILED_MARKER,
    GUEST_IP,
    READY_MARKER,
    SHELL_END,
    SHM_PREFIX,
    AltOpenSSL,
    Guest,
    GuestError,
    GuestImage,
    KeyLogServers,
    free_port,
    require_tool,
    resolve_kernel_package,
    sweep_stale_shm,
)
from bridge.vmi.testguest import build_guest_image as _build_guest_image

ROOT = Path(__file__).resolve().parents[2]
GUEST_BUILD_DIR = ROOT / "build" / "guest"

# The second OpenSSL in the guest (port 4434): package-version directory in
# build/openssl-builds/ and the library version `openssl version` must report.
ALT_OPENSSL_PACKAGE = "psycopg-binary"
ALT_OPENSSL_PACKAGE_VERSION = "3.3.9"

GUEST_PORTS = (4433, 4434)


def _alt_openssl() -> AltOpenSSL:
    from tests.support import openssl_builds

    for build in openssl_builds.WHEEL_BUILDS:
        if (build.package, build.version) == (ALT_OPENSSL_PACKAGE, ALT_OPENSSL_PACKAGE_VERSION):
            openssl_builds.fetch(build)
            return AltOpenSSL(build.directory, build.openssl, build.directory.name)
    raise GuestError(f"{ALT_OPENSSL_PACKAGE} {ALT_OPENSSL_PACKAGE_VERSION} not in openssl_builds.WHEEL_BUILDS")


def build_guest_image(flavor: str = "6.1", *, force: bool = False) -> GuestImage:
    """Build (or reuse) the test guest for `flavor` ("6.1" or "6.12"), both OpenSSL builds inside."""
    return _build_guest_image(flavor, directory=GUEST_BUILD_DIR / flavor, alt_openssl=_alt_openssl(), force=force)


def build_keylog_guest_image(go_binary: Path, alt_go_binary: Path | None = None, flavor: str = "6.1") -> GuestImage:
    """The test guest with a static Go HTTPS server (built by the caller) on 4435, another
    Go build on 4437, and gnutls-serv on 4436 beside the host's s_server on 4433 (no
    second OpenSSL)."""
    return _build_guest_image(flavor, directory=GUEST_BUILD_DIR / flavor,
                              keylog_servers=KeyLogServers(go_binary=go_binary, gnutls=True,
                                                           alt_go_binary=alt_go_binary))


def curl_guest(guest: Guest, guest_port: int, keylog: Path, *curl_args: str, timeout: float = 60) -> bytes:
    """GET https://127.0.0.1:<host port for guest_port>/ with host curl; SSLKEYLOGFILE=keylog. Body."""
    curl = require_tool("curl")
    url = f"https://127.0.0.1:{guest.host_port(guest_port)}/"
    env = {**os.environ, "SSLKEYLOGFILE": str(keylog)}
    proc = subprocess.run([curl, "-sSk", "--max-time", str(int(timeout)), *curl_args, url],
                          env=env, capture_output=True, timeout=timeout + 10)
    if proc.returncode != 0:
        raise GuestError(f"curl {url} {' '.join(curl_args)} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
