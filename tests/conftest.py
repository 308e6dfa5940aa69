"""Shared pytest fixtures for tls-ids-bridge.

Keep this file to fixtures only; each block below is owned by one area.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # make `tests.support` importable in any pytest import mode
    sys.path.insert(0, str(_ROOT))

from tests.support import tlslab  # noqa: E402


# ---------------------------------------------------------------------------
# tlslab: real TLS sessions / captures / tshark oracle (tests/support/tlslab.py)
# Missing tools or privileges FAIL (never skip).
# ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _own_profile_cache(tmp_path_factory, monkeypatch):
    """Each test's harvesters cache the profiles they make in a directory of the test's
    own (not /var/lib/tls-bridge/profiles): no test sees another's, or an earlier run's."""
    monkeypatch.setenv("TLS_BRIDGE_PROFILE_CACHE", str(tmp_path_factory.mktemp("profile-cache")))


@pytest.fixture(scope="session")
def tlslab_tools() -> dict[str, str]:
    """Root + ip/tcpdump/tshark/openssl present, else the test fails. {name: path}."""
    tlslab.require_root()
    return tlslab.require_tools("ip", "tcpdump", "tshark", "openssl")


@pytest.fixture(scope="session")
def nginx_curl_tools(tlslab_tools) -> dict[str, str]:
    """tlslab_tools plus nginx (nginx-light) and curl."""
    return {**tlslab_tools, **tlslab.require_tools("nginx", "curl")}


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory) -> tlslab.CertChain:
    """RSA-2048 CA + leaf for server.test (session-cached)."""
    return tlslab.make_cert(tmp_path_factory.mktemp("certs-rsa"), key_type="rsa")


@pytest.fixture(scope="session")
def tls_certs_ec(tmp_path_factory) -> tlslab.CertChain:
    """P-256 CA + leaf for server.test (session-cached)."""
    return tlslab.make_cert(tmp_path_factory.mktemp("certs-ec"), key_type="ec")


@pytest.fixture
def netns(tlslab_tools):
    """A fresh network namespace (lo only, mirror-port-like segmentation)."""
    with tlslab.Netns() as ns:
        yield ns


# ---------------------------------------------------------------------------
# (end of tlslab block)
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# zeek: a real Zeek (tests/support/zeek.py).  Required in CI and where
# ../shared/zeek exists (missing: FAIL); elsewhere the Zeek tests that could
# not run are named here, loudly, and the run's exit status is 1.
# ---------------------------------------------------------------------------


@pytest.fixture
def zeek(request):
    """The real Zeek (tests/support/zeek.py); fails where required, else skips loudly."""
    from tests.support import zeek as zeek_support

    return zeek_support.require(request.node.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.support import zeek as zeek_support

    if not zeek_support.NOT_RUN:
        return
    tr = terminalreporter
    tr.section(f"{len(zeek_support.NOT_RUN)} ZEEK TESTS DID NOT RUN (no Zeek found)", sep="!", red=True, bold=True)
    for nodeid in zeek_support.NOT_RUN:
        tr.write_line(f"NOT RUN: {nodeid}", red=True)
    tr.write_line(f"They are not passed. To run them: {zeek_support.HOW_TO_INSTALL}.", red=True, bold=True)
    tr.write_line("Exit status 1: the suite did not run completely.", red=True, bold=True)


def pytest_sessionfinish(session, exitstatus):
    from tests.support import zeek as zeek_support

    if zeek_support.NOT_RUN and exitstatus == 0:
        session.exitstatus = 1


# ---------------------------------------------------------------------------
# (end of zeek block)
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# libvmi: LibVMI's Python bindings (tests/support/libvmi_gate.py).  Required in
# CI and where ../shared/libvmi exists (missing: FAIL); elsewhere the LibVMI
# tests that could not run are named at the end, loudly, and the exit status is 1.
# ---------------------------------------------------------------------------


@pytest.fixture
def libvmi(request):
    """LibVMI's Python bindings (the ``libvmi`` module); fails where required, else skips loudly."""
    from tests.support import libvmi_gate

    return libvmi_gate.require(request)


# ---------------------------------------------------------------------------
# (end of libvmi block)
# ---------------------------------------------------------------------------
