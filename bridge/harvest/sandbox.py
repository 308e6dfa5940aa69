"""Calibrating a library taken from a monitored process, without trusting it.

Calibration loads the library (:mod:`bridge.harvest.calibrate_ctypes`), and
loading runs its code: its constructors first.  The library comes from a
process the harvester watches, which may be hostile, so it is loaded only in a
child process that, before it touches the file:

* has a network namespace of its own (no interface but a down loopback),
* has given up root: uid and gid ``nobody``, no supplementary groups, so no
  capabilities (``PR_SET_NO_NEW_PRIVS`` keeps it so),
* is bounded: address space, CPU seconds, open files, and a wall-clock limit
  after which it is killed,
* reads the library (and the ``libcrypto`` beside it, if any) through
  descriptors opened before it gave up root, and writes nothing: its
  certificate lives in anonymous memory files.

Its only output is the profile as JSON on stdout, parsed and validated like any
profile file.  Run as a module: ``python -m bridge.harvest.sandbox LIBRARY``
(the parent side is :func:`calibrate_sandboxed`).
"""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys

from bridge.errors import BridgeError, ProfileError
from bridge.harvest.profile import Profile

_CLONE_NEWNET = 0x40000000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_DUMPABLE = 4
NOBODY = 65534
#: Limits of the calibrating child.
TIME_LIMIT = 30.0
CPU_SECONDS = 20
ADDRESS_SPACE = 2 << 30


def calibrate_sandboxed(library: str, *, timeout: float = TIME_LIMIT) -> Profile:
    """Calibrate ``library`` in a confined child; raises ProfileError with the reason."""
    if not os.path.isfile(library):
        raise ProfileError(f"{library}: no such file")
    output = run_child("bridge.harvest.sandbox", library, what=f"calibrating {library}", timeout=timeout)
    profile = Profile.from_json(output, source=f"calibration of {library}")
    profile.made["sandbox"] = "own network namespace, uid nobody, no capabilities, no_new_privs, rlimits"
    profile.made["library_path"] = library
    return profile


def run_child(module: str, library: str, *, what: str, timeout: float) -> str:
    """Run ``python -m module library`` (a child that confines itself before it opens
    the library: :func:`_confine`) and return its standard output; raises
    ProfileError with the child's last word when it fails or outlives ``timeout``."""
    try:
        result = subprocess.run([sys.executable, "-m", module, library], check=False, capture_output=True, text=True,
                                timeout=timeout, cwd="/", stdin=subprocess.DEVNULL,
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    except subprocess.TimeoutExpired:
        raise ProfileError(f"{what}: no result within {timeout:.0f} s (killed)") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        if result.returncode < 0:
            detail = f"killed by signal {-result.returncode} ({detail})"
        raise ProfileError(f"{what}: {detail}")
    return result.stdout


def _confine() -> None:
    """Network namespace, then nobody, no new privileges, limits.  Called before the library is opened."""
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() == 0:
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise BridgeError(f"sandbox: unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())} (calibration "
                              "needs CAP_SYS_ADMIN and network namespaces allowed: RestrictNamespaces=net)")
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        except OSError as exc:
            raise BridgeError(f"sandbox: cannot give up root ({exc.strerror}): calibration needs CAP_SETUID and "
                              "CAP_SETGID to run the library as nobody") from None
        if os.getuid() == 0 or os.geteuid() == 0:
            raise BridgeError("sandbox: still root after setuid")
    else:  # an unprivileged harvester: a user namespace gives the network namespace
        if libc.unshare(0x10000000 | _CLONE_NEWNET) != 0:  # CLONE_NEWUSER
            raise BridgeError(f"sandbox: unshare(CLONE_NEWUSER|CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}")
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # its own /proc/self/mem stays readable to it
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _open_library(library: str) -> tuple[int, list[int]]:
    """Descriptors of the library and of any libcrypto beside it (a wheel's bundled
    one), opened before the child gives up root: it loads them through
    ``/proc/self/fd`` and needs no access to their directory."""
    fd = os.open(library, os.O_RDONLY | os.O_CLOEXEC)
    directory = os.path.dirname(os.path.abspath(library))
    crypto = []
    if directory != "/usr/lib/x86_64-linux-gnu":  # a system libssl finds the system libcrypto itself
        try:
            names = sorted(name for name in os.listdir(directory) if name.startswith("libcrypto") and ".so" in name)
        except OSError:
            names = []
        for name in names[:1]:
            try:
                crypto.append(os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                pass
    return fd, crypto


def _child(library: str) -> int:
    # Everything the calibration imports, imported while the files are still readable.
    from cryptography import x509  # noqa: F401
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: F401
    from cryptography.x509.oid import NameOID  # noqa: F401

    from bridge.harvest.calibrate_ctypes import calibrate_library

    try:
        fd, crypto = _open_library(library)
        _confine()
        for descriptor in crypto:  # by soname, the libssl's DT_NEEDED finds it loaded
            ctypes.CDLL(f"/proc/self/fd/{descriptor}", mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        sys.stdout.write(calibrate_library(f"/proc/self/fd/{fd}", name=os.path.basename(library)).to_json())
    except (BridgeError, OSError) as exc:
        print(exc if isinstance(exc, BridgeError) else f"sandbox: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
