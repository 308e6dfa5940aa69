"""LibVMI for the tests: its Python bindings over ``/opt/libvmi`` (where
``<repo>/../shared/libvmi/install.sh`` puts the C library; ``scripts/setup.sh``
runs it and builds the bindings into ``.venv`` when that folder exists).

The LibVMI tests (those taking the ``libvmi`` fixture of ``tests/conftest.py``)
are *required* in CI (``CI=true``) and wherever ``<repo>/../shared/libvmi``
exists: a missing LibVMI fails them.  On a machine with neither, they are not
run and not passed: each is skipped with :data:`MISSING` and counted in
:data:`NOT_RUN`; at the end of the run a report says, loudly, how many did not
run and how to install LibVMI, and the run's exit status becomes 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_LIBVMI = REPO.parent / "shared" / "libvmi"

HOW_TO_INSTALL = (
    "build LibVMI (https://github.com/libvmi/libvmi) with its file driver into a prefix, then its Python "
    "bindings: `.venv/bin/pip install libvmi==3.7.1 && .venv/bin/python scripts/libvmi_bindings.py build <prefix>` "
    "(the wheel carries a LibVMI copy of its own: the second step links the bindings to yours); where the "
    "project's shared folder is present, `bash scripts/setup.sh` does all of it (`sh ../shared/libvmi/install.sh` "
    "-> /opt/libvmi)"
)
MISSING = "LIBVMI NOT INSTALLED: this LibVMI test did not run"

NOT_RUN: list[str] = []


def required() -> bool:
    """Whether a missing LibVMI fails the LibVMI tests (CI, or the shared LibVMI beside the checkout)."""
    return os.environ.get("CI", "").lower() == "true" or SHARED_LIBVMI.is_dir()


def find() -> ModuleType | None:
    try:
        import libvmi  # type: ignore[import-not-found]
    except ImportError:
        return None
    return libvmi


def require(request: pytest.FixtureRequest) -> ModuleType:
    """The bindings, or: fail (where required), or skip loudly and count the test as not run."""
    libvmi = find()
    if libvmi is not None:
        return libvmi
    if required():
        where = "CI=true" if os.environ.get("CI", "").lower() == "true" else f"{SHARED_LIBVMI} exists"
        pytest.fail(f"LibVMI is required here ({where}) and its Python bindings do not import: {HOW_TO_INSTALL}",
                    pytrace=False)
    NOT_RUN.append(request.node.nodeid)
    manager = request.config.pluginmanager
    if not manager.has_plugin(_Report.name):
        manager.register(_Report(), _Report.name)
    pytest.skip(MISSING)


class _Report:
    """Registered on the first LibVMI test that could not run."""

    name = "tls-bridge-libvmi-not-run"

    def pytest_terminal_summary(self, terminalreporter) -> None:  # type: ignore[no-untyped-def]
        tr = terminalreporter
        tr.section(f"{len(NOT_RUN)} LIBVMI TESTS DID NOT RUN (LibVMI not installed)", sep="!", red=True, bold=True)
        for nodeid in NOT_RUN:
            tr.write_line(f"NOT RUN: {nodeid}", red=True)
        tr.write_line(f"They are not passed. To run them: {HOW_TO_INSTALL}.", red=True, bold=True)
        tr.write_line("Exit status 1: the suite did not run completely.", red=True, bold=True)

    def pytest_sessionfinish(self, session, exitstatus) -> None:  # type: ignore[no-untyped-def]
        if NOT_RUN and exitstatus == 0:
            session.exitstatus = 1
