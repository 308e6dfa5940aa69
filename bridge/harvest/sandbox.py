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
* sees the library as a private copy (with the ``libcrypto`` beside it, if
  any) in a directory only it can read.

Its only output is the profile as JSON on stdout, parsed and validated like any
profile file.  Run as a module: ``python -m bridge.harvest.sandbox LIBRARY``
(the parent side is :func:`calibrate_sandboxed`).
"""

from __future__ import annotations

import ctypes
import os
import resource
import shutil
import subprocess
import sys
import tempfile

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
    with tempfile.TemporaryDirectory(prefix="tls-bridge-sandbox-") as directory:
        copy = os.path.join(directory, os.path.basename(library))
        shutil.copyfile(library, copy)
        source_dir = os.path.dirname(library)
        try:
            siblings = [name for name in os.listdir(source_dir) if name.startswith("libcrypto") and ".so" in name]
        except OSError:
            siblings = []
        for name in siblings[:4]:  # a wheel's bundled libcrypto, found beside the libssl
            try:
                shutil.copyfile(os.path.join(source_dir, name), os.path.join(directory, name))
            except OSError:
                pass
        if os.geteuid() == 0:
            for path in [directory, *(os.path.join(directory, n) for n in os.listdir(directory))]:
                os.chown(path, NOBODY, NOBODY)
        os.chmod(directory, 0o700)
        try:
            result = subprocess.run([sys.executable, "-m", "bridge.harvest.sandbox", copy], capture_output=True,
                                    text=True, timeout=timeout, cwd=directory, stdin=subprocess.DEVNULL,
                                    env={"PATH": "/usr/bin:/bin", "HOME": directory, "TMPDIR": directory,
                                         "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        except subprocess.TimeoutExpired:
            raise ProfileError(f"calibrating {library}: no result within {timeout:.0f} s (killed)") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        if result.returncode < 0:
            detail = f"killed by signal {-result.returncode} ({detail})"
        raise ProfileError(f"calibrating {library}: {detail}")
    profile = Profile.from_json(result.stdout, source=f"calibration of {library}")
    profile.made["sandbox"] = "own network namespace, uid nobody, no capabilities, no_new_privs, rlimits"
    profile.made["library_path"] = library
    return profile


def _confine(directory: str) -> None:
    """Network namespace, then nobody, no new privileges, limits.  Called before the library is opened."""
    libc = ctypes.CDLL(None, use_errno=True)
    if os.geteuid() == 0:
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise BridgeError(f"sandbox: unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}")
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
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
    os.chdir(directory)


def _child(library: str) -> int:
    # Everything the calibration imports, imported while the files are still readable.
    from cryptography import x509  # noqa: F401
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: F401
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: F401
    from cryptography.x509.oid import NameOID  # noqa: F401

    from bridge.harvest.calibrate_ctypes import calibrate_library

    try:
        _confine(os.path.dirname(os.path.abspath(library)))
        sys.stdout.write(calibrate_library(library).to_json())
    except BridgeError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
