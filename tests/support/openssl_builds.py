"""OpenSSL builds from PyPI wheels (auditwheel bundles libssl/libcrypto in
``<package>.libs/``): one per release line, for the profile tests.

    python -m tests.support.openssl_builds fetch    # idempotent; used by scripts/setup.sh

Files land in ``build/openssl-builds/<package>-<version>/`` (libssl and libcrypto only).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDS_DIR = ROOT / "build" / "openssl-builds"


@dataclass(frozen=True)
class WheelBuild:
    package: str
    version: str
    platform: str
    openssl: str  # release line
    build_id: str  # of its libssl

    @property
    def directory(self) -> Path:
        return BUILDS_DIR / f"{self.package}-{self.version}"

    @property
    def libssl(self) -> Path:
        found = sorted(self.directory.glob("libssl*.so*"))
        if len(found) != 1:
            raise FileNotFoundError(f"{self.directory}: run 'python -m tests.support.openssl_builds fetch'")
        return found[0]


WHEEL_BUILDS = (
    WheelBuild("psycopg2-binary", "2.9.9", "manylinux_2_17_x86_64", "1.1.1w", "f8004c56570caa9caa56d78e665d97a422117865"),
    WheelBuild("pygit2", "1.12.2", "manylinux_2_17_x86_64", "3.0.9", "de9c2e2d973c7972d2c01851d2f3cc2ac48eec84"),
    WheelBuild("pygit2", "1.15.1", "manylinux_2_17_x86_64", "3.1.5", "89335de9b8f6000a94e22c41ddbcc72af5504e62"),
    WheelBuild("pygit2", "1.17.0", "manylinux_2_17_x86_64", "3.2.3", "70c3066dfd51f2aa159e44129e0b284ead1c1a08"),
    WheelBuild("pygit2", "1.18.2", "manylinux_2_28_x86_64", "3.3.3", "bfff47f7041c0d8edd9e83a7bea5cdd23762b58d"),
    WheelBuild("pycurl", "7.45.5", "manylinux_2_28_x86_64", "3.4.1", "bf4fe9c6013c34f4e219e56ea5de787a362faf97"),
    WheelBuild("psycopg-binary", "3.3.9", "manylinux_2_17_x86_64", "3.5.9", "5bdf6fc593968e3341155c5676bfb8cc9b60c232"),
    WheelBuild("pycurl", "7.46.0", "manylinux_2_28_x86_64", "3.6.2", "fb9fd81d5d367f45abec6924c83c757b42e3b87a"),
)


def fetch(build: WheelBuild) -> None:
    if build.directory.is_dir() and any(build.directory.glob("libssl*")):
        return
    wheels = BUILDS_DIR / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--only-binary=:all:", "--platform", build.platform, "--python-version", "3.11",
         f"{build.package}=={build.version}", "-d", str(wheels)],
        check=True,
    )
    stem = build.package.replace("-", "_")
    wheel = next(wheels.glob(f"{stem}-{build.version}-*.whl"))
    build.directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            base = name.rsplit("/", 1)[-1]
            if ".libs/" in name and (base.startswith("libssl") or base.startswith("libcrypto")):
                (build.directory / base).write_bytes(archive.read(name))


def main(argv: list[str]) -> int:
    if argv != ["fetch"]:
        print(__doc__, file=sys.stderr)
        return 2
    for build in WHEEL_BUILDS:
        fetch(build)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
