"""A real Zeek for the tests: where it comes from, running it, reading its logs.

Zeek is looked for as the demo looks for it (:func:`bridge.demo_zeek.find_zeek`):
``$ZEEK`` (a path to the zeek binary), ``zeek`` on PATH, then
``/opt/zeek/bin/zeek`` (where ``<repo>/../shared/zeek/install.sh`` puts it, and
``scripts/setup.sh`` runs that script when it exists).

The Zeek tests are *required* in CI (``CI=true``) and wherever
``<repo>/../shared/zeek`` exists: a missing Zeek fails them.  On a machine with
neither, they are not run and not passed: each one is skipped with
:data:`MISSING`, counted in :data:`NOT_RUN`, and ``tests/conftest.py`` says at
the end of the run, loudly, how many did not run and how to install Zeek, and
makes the run's exit status 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge import demo_zeek

REPO = Path(__file__).resolve().parents[2]
SHARED_ZEEK = REPO.parent / "shared" / "zeek"
PACKAGE = demo_zeek.PACKAGE

HOW_TO_INSTALL = (
    "install Zeek >= 6.0 (zeek, zeek-config, zeek-cut on PATH, or ZEEK=/path/to/zeek), "
    "e.g. from the Zeek project's packages, or run `sh ../shared/zeek/install.sh` "
    "(-> /opt/zeek) where the project's shared folder is present; `bash scripts/setup.sh` does that"
)
MISSING = "ZEEK NOT INSTALLED: this Zeek test did not run"

# Node ids of the Zeek tests that did not run for want of a Zeek (read by conftest.py).
NOT_RUN: list[str] = []


@dataclass(frozen=True)
class Zeek:
    """An installed Zeek: its binary, its bin directory and version."""

    binary: Path
    version: str

    @property
    def bin_dir(self) -> Path:
        return self.binary.parent

    def env(self, **extra: str) -> dict[str, str]:
        """Environment with this Zeek's tools and the venv's btest first on PATH, TZ/LC_ALL fixed."""
        path = os.pathsep.join([str(self.bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = dict(os.environ, PATH=path, TZ="UTC", LC_ALL="C")
        env.pop("ZEEKPATH", None)
        env.update(extra)
        return env

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        assert path.is_file(), f"{name} missing beside {self.binary}"
        return str(path)


def required() -> bool:
    """Whether a missing Zeek fails the Zeek tests (CI, or the shared Zeek is beside the checkout)."""
    return os.environ.get("CI", "").lower() == "true" or SHARED_ZEEK.is_dir()


def find() -> Zeek | None:
    """The Zeek to test with (the demo's search: $ZEEK, PATH, /opt/zeek), or None."""
    found = demo_zeek.find_zeek()
    if found is None:
        return None
    binary = Path(found).resolve()
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"{binary} --version failed: {out.stderr}"
    return Zeek(binary=binary, version=out.stdout.strip().rsplit(" ", 1)[-1])


def require(nodeid: str) -> Zeek:
    """The Zeek, or: fail (where it is required), or skip loudly and count the test as not run."""
    zeek = find()
    if zeek is not None:
        return zeek
    if required():
        where = "CI=true" if os.environ.get("CI", "").lower() == "true" else f"{SHARED_ZEEK} exists"
        pytest.fail(f"Zeek is required here ({where}) and was not found: {HOW_TO_INSTALL}", pytrace=False)
    NOT_RUN.append(nodeid)
    pytest.skip(MISSING)


def run(zeek: Zeek, args: list[str], *, cwd: Path, timeout: float = 180, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(zeek.binary), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=env or zeek.env())
    if check:
        assert result.returncode == 0, f"zeek {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result


def read_log(path: Path) -> list[dict[str, str | None]]:
    """A Zeek ASCII (TSV) log as dicts by field name (unset fields None); the log must exist."""
    assert path.is_file(), f"{path.name} was not written"
    return demo_zeek.read_log(path)
