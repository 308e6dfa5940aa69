"""Libraries hooked at their own key-log function, against real servers: a Go
HTTPS server built here with Debian's Go toolchain (stripped and not, cgo and
static) and GnuTLS's gnutls-serv, each with no key log configured.  The
harvested lines must equal what curl (the client) wrote to its SSLKEYLOGFILE;
a capture decrypts with the key feed alone, and the flow log names the library
and the hooked function as the key origin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import tlslab
from tests.support.harvest import Lab, keylog_lines
from tests.support.keyfeed import make_feed_certs

pytestmark = pytest.mark.real

GO_SERVER = Path(__file__).resolve().parent / "support" / "servers" / "go_https"
WRITE_KEY_LOG = "crypto/tls.(*Config).writeKeyLog"
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS12_CIPHERS = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305")


@pytest.fixture(scope="module")
def go_servers(tmp_path_factory) -> dict[str, Path]:
    """The test server built twice: with cgo and symbols, and static with -ldflags='-s -w'."""
    go = tlslab.tool("go")
    out = tmp_path_factory.mktemp("go-build")
    env = dict(os.environ, HOME=str(out), GOPATH=str(out / "gopath"), GOCACHE=str(out / "cache"),
               GOFLAGS="-mod=mod", GOTOOLCHAIN="local", GOPROXY="off")
    builds = {"gohttps": ([], {}), "gohttps-s": (["-ldflags=-s -w"], {"CGO_ENABLED": "0"})}
    binaries = {}
    for name, (flags, extra) in builds.items():
        result = subprocess.run([go, "build", *flags, "-o", str(out / name), "."], cwd=GO_SERVER,
                                env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        binaries[name] = out / name
    symbols = subprocess.run(["nm", str(binaries["gohttps-s"])], capture_output=True, text=True)
    assert "no symbols" in symbols.stderr  # really stripped: the hook point comes from the pclntab
    return binaries


@pytest.fixture
def lab(tmp_path, tlslab_tools, tls_certs):
    tlslab.require_tools("curl", "gnutls-serv")
    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            yield lab
        finally:
            lab.close()


def _connections(lab: Lab, port: int, keylog: Path) -> int:
    for suite in TLS13_SUITES:
        assert b"hello" in lab.curl(port, keylog, "--http1.1", "--tlsv1.3", "--tls13-ciphers", suite, path="/hello") \
            or suite
    for cipher in TLS12_CIPHERS:
        lab.curl(port, keylog, "--http1.1", "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher, path="/hello")
    return len(TLS13_SUITES) + len(TLS12_CIPHERS)


def _wait_for_lines(harvested: Path, wanted: set, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not wanted <= keylog_lines(harvested) and time.monotonic() < deadline:
        time.sleep(0.1)


def _decrypt_with_feed(pcap: Path, endpoint: str, certs, flows: Path) -> list[dict]:  # type: ignore[no-untyped-def]
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(pcap), "--keys", endpoint,
                             *certs.sensor_args(), "--flows", str(flows), "-q"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in flows.read_text().splitlines()]


def test_go_crypto_tls_stripped_and_not_tls12_and_tls13(lab, go_servers, tmp_path):
    client, harvested, pcap = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "go.pcap"
    endpoint, certs = f"ipc://{tmp_path}/feed", make_feed_certs(tmp_path / "certs")
    for port, name in ((4443, "gohttps"), (4444, "gohttps-s")):
        lab._start([str(go_servers[name]), str(lab.certs.chain), str(lab.certs.key), f"127.0.0.1:{port}"], port)
    with tlslab.Capture(lab.ns, pcap):
        harvester = lab.harvester("--comm", "gohttps", "gohttps-s", "--keylog", str(harvested), "--bind", endpoint,
                                  *certs.publisher_args())
        connections = _connections(lab, 4443, client) + _connections(lab, 4444, client)
        # Go logs every secret of the handshake but the exporter secret (it never calls writeKeyLog for it)
        theirs = {line for line in keylog_lines(client) if line[0] != "EXPORTER_SECRET"}
        _wait_for_lines(harvested, theirs)
    flows = _decrypt_with_feed(pcap, endpoint, certs, tmp_path / "flows.jsonl")  # from the live harvester's feed
    assert harvester.stop() == 0, harvester.text()
    summary = harvester.text()
    ours = keylog_lines(harvested)
    assert ours == theirs, f"missing {sorted(theirs - ours)[:3]}, extra {sorted(ours - theirs)[:3]}\n{summary}"
    assert len({line[1] for line in theirs}) == connections == 12
    assert [flow["status"] for flow in flows] == ["decrypted"] * 12, [(f["status"], f["reason"]) for f in flows]
    assert sorted(flow["tls_version"] for flow in flows) == ["TLSv1.2"] * 6 + ["TLSv1.3"] * 6
    origins = {(flow["key_origin"]["comm"], flow["key_origin"]["trigger"], flow["key_origin"]["library"][:16])
               for flow in flows}
    assert origins == {(name, f"uprobe:{WRITE_KEY_LOG}", "go crypto/tls go") for name in ("gohttps", "gohttps-s")}
    assert summary.count(f"{WRITE_KEY_LOG}, its key-log function") == 2, summary  # both binaries hooked
    assert "go crypto/tls go1." in summary


def test_gnutls_serv_tls12_and_tls13(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    lab._start([tlslab.tool("gnutls-serv"), "--http", "--x509certfile", str(lab.certs.chain), "--x509keyfile",
                str(lab.certs.key), "-p", "4445"], 4445)
    harvester = lab.harvester("--comm", "gnutls-serv", "--keylog", str(harvested))
    connections = _connections(lab, 4445, client)
    theirs = keylog_lines(client)
    _wait_for_lines(harvested, theirs)
    assert harvester.stop() == 0, harvester.text()
    summary = harvester.text()
    ours = keylog_lines(harvested)
    assert ours == theirs, f"missing {sorted(theirs - ours)[:3]}, extra {sorted(ours - theirs)[:3]}\n{summary}"
    assert len({line[1] for line in theirs}) == connections
    assert {line[0] for line in theirs} >= {"EXPORTER_SECRET", "CLIENT_RANDOM", "SERVER_TRAFFIC_SECRET_0"}
    assert "_gnutls_nss_keylog_func, its key-log function" in summary and "(gnutls 3." in summary, summary
