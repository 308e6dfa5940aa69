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
