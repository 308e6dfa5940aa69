"""An older grpcio from the package registry (another BoringSSL build, linked into
its cygrpc module), for the harvest test of a build no test looked at before.

    python -m tests.support.grpc_builds fetch    # idempotent

``pip download`` fetches the wheel (the venv's pip); only its ``grpc`` package is
kept, in ``build/grpc-builds/grpcio-<version>/`` (put it first on PYTHONPATH).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDS_DIR = ROOT / "build" / "grpc-builds"
#: grpcio 1.66.2 (September 2024): BoringSSL of that time; the venv's grpcio is newer.
OLDER = "1.66.2"


def fetch(version: str = OLDER) -> Path:
    """The directory to put on PYTHONPATH for ``import grpc`` of that version."""
    target = BUILDS_DIR / f"grpcio-{version}"
    if (target / "grpc" / "__init__.py").is_file():
        return target
    BUILDS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILDS_DIR) as directory:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", directory, f"grpcio=={version}"], check=True, stdout=subprocess.DEVNULL)
        (wheel,) = Path(directory).glob("grpcio-*.whl")
        partial = Path(directory) / "unpacked"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(partial, [name for name in archive.namelist() if name.startswith("grpc/")])
        partial.rename(target)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["fetch"]:
        sys.exit("usage: python -m tests.support.grpc_builds fetch")
    print(fetch())
