"""Libraries hooked at their own key-log function, against real servers: a Go
HTTPS server built here with Debian's Go toolchains (go1.19 stripped and not,
cgo and static; go1.23 from bookworm-backports, stripped: a release whose
pclntab format differs), GnuTLS's gnutls-serv, and a gRPC server in Python (BoringSSL
statically linked into grpcio's cygrpc module, stripped), each with no key log configured.  The
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

from bridge.harvest.elf import read_elf
from tests.support import tlslab
from tests.support.harvest import Lab, keylog_lines, rebuilt_library
from tests.support.keyfeed import make_feed_certs

pytestmark = pytest.mark.real

LIBGNUTLS = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30"
GO_SERVER = Path(__file__).resolve().parent / "support" / "servers" / "go_https"
WRITE_KEY_LOG = "crypto/tls.(*Config).writeKeyLog"
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS12_CIPHERS = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305")


GO_123 = "/usr/lib/go-1.23/bin/go"  # golang-1.23-go (bookworm-backports)


@pytest.fixture(scope="module")
def go_servers(tmp_path_factory) -> dict[str, Path]:
    """The test server built three times: go1.19 with cgo and symbols, go1.19 static with
    -ldflags='-s -w', go1.23 static and stripped.  Go 1.20+ compiles its standard library
    at the first build (half a minute here): its build cache is kept in ~/.cache/tls-bridge
    (a cache only: the binary is the same without it)."""
    go = tlslab.tool("go")
    assert os.access(GO_123, os.X_OK), f"{GO_123} is missing: bash scripts/setup.sh installs golang-1.23-go"
    out = tmp_path_factory.mktemp("go-build")
    cache = Path.home() / ".cache" / "tls-bridge" / "go-build"
    env = dict(os.environ, HOME=str(out), GOPATH=str(out / "gopath"), GOCACHE=str(cache),
               GOFLAGS="-mod=mod", GOTOOLCHAIN="local", GOPROXY="off")
    static = {"CGO_ENABLED": "0"}
    builds = {"gohttps": (go, [], {}), "gohttps-s": (go, ["-ldflags=-s -w"], static),
              "gohttps-123": (GO_123, ["-ldflags=-s -w"], static)}
    binaries = {}
    for name, (compiler, flags, extra) in builds.items():
        result = subprocess.run([compiler, "build", *flags, "-o", str(out / name), "."], cwd=GO_SERVER,
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


def _stop_and_compare(harvester, client: Path, harvested: Path, *, without: tuple[str, ...] = ()) -> tuple[set, str]:  # type: ignore[no-untyped-def]
    """Wait for every line the client logged (but labels ``without``), stop the harvester,
    assert the harvested key log equals them; (the client's lines, the harvester's output)."""
    theirs = {line for line in keylog_lines(client) if line[0] not in without}
    _wait_for_lines(harvested, theirs)
    assert harvester.stop() == 0, harvester.text()
    summary = harvester.text()
    ours = keylog_lines(harvested)
    assert ours == theirs, f"missing {sorted(theirs - ours)[:3]}, extra {sorted(ours - theirs)[:3]}\n{summary}"
    return theirs, summary


def _decrypt_with_feed(pcap: Path, endpoint: str, certs, flows: Path) -> list[dict]:  # type: ignore[no-untyped-def]
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(pcap), "--keys", endpoint,
                             *certs.sensor_args(), "--flows", str(flows), "-q"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in flows.read_text().splitlines()]


def test_go_crypto_tls_stripped_and_not_tls12_and_tls13(lab, go_servers, tmp_path):
    client, harvested, pcap = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "go.pcap"
    endpoint, certs = f"ipc://{tmp_path}/feed", make_feed_certs(tmp_path / "certs")
    servers = {4443: "gohttps", 4444: "gohttps-s", 4446: "gohttps-123"}
    for port, name in servers.items():
        lab._start([str(go_servers[name]), str(lab.certs.chain), str(lab.certs.key), f"127.0.0.1:{port}"], port)
    with tlslab.Capture(lab.ns, pcap):
        harvester = lab.harvester("--comm", *servers.values(), "--keylog", str(harvested), "--bind", endpoint,
                                  *certs.publisher_args())
        connections = sum(_connections(lab, port, client) for port in servers)
        # Go logs every secret of the handshake but the exporter secret (it never calls writeKeyLog for it)
        theirs = {line for line in keylog_lines(client) if line[0] != "EXPORTER_SECRET"}
        _wait_for_lines(harvested, theirs)
    flows = _decrypt_with_feed(pcap, endpoint, certs, tmp_path / "flows.jsonl")  # from the live harvester's feed
    assert harvester.stop() == 0, harvester.text()
    summary = harvester.text()
    ours = keylog_lines(harvested)
    assert ours == theirs, f"missing {sorted(theirs - ours)[:3]}, extra {sorted(ours - theirs)[:3]}\n{summary}"
    assert len({line[1] for line in theirs}) == connections == 18
    assert [flow["status"] for flow in flows] == ["decrypted"] * 18, [(f["status"], f["reason"]) for f in flows]
    assert sorted(flow["tls_version"] for flow in flows) == ["TLSv1.2"] * 9 + ["TLSv1.3"] * 9
    origins = {(flow["key_origin"]["comm"], flow["key_origin"]["trigger"], flow["key_origin"]["library"][:17])
               for flow in flows}
    assert origins == {("gohttps", f"uprobe:{WRITE_KEY_LOG}", "go crypto/tls go1"),
                       ("gohttps-s", f"uprobe:{WRITE_KEY_LOG}", "go crypto/tls go1"),
                       ("gohttps-123", f"uprobe:{WRITE_KEY_LOG}", "go crypto/tls go1")}, origins
    libraries = {flow["key_origin"]["comm"]: flow["key_origin"]["library"] for flow in flows}
    assert libraries["gohttps"].startswith("go crypto/tls go1.19.") and libraries["gohttps-123"].startswith(
        "go crypto/tls go1.23."), libraries
    assert summary.count(f"{WRITE_KEY_LOG}, its key-log function") == 3, summary  # every binary hooked


@pytest.mark.parametrize("build", ["debian", "rebuilt"])
def test_gnutls_serv_tls12_and_tls13(lab, tmp_path, build):
    """Debian's libgnutls, and a copy with another build-id (a security update, as the
    harvester sees one: a build it never met), each probed in the sandbox at first sight."""
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    argv = [tlslab.tool("gnutls-serv"), "--http", "--x509certfile", str(lab.certs.chain), "--x509keyfile",
            str(lab.certs.key), "-p", "4445"]
    build_id = read_elf(LIBGNUTLS).build_id
    if build == "rebuilt":
        copy, build_id = rebuilt_library(LIBGNUTLS, tmp_path / "lib")
        argv = ["env", f"LD_LIBRARY_PATH={copy.parent}", *argv]
    lab._start(argv, 4445)
    harvester = lab.harvester("--comm", "gnutls-serv", "--keylog", str(harvested))
    connections = _connections(lab, 4445, client)
    theirs, summary = _stop_and_compare(harvester, client, harvested)
    assert len({line[1] for line in theirs}) == connections
    assert {line[0] for line in theirs} >= {"EXPORTER_SECRET", "CLIENT_RANDOM", "SERVER_TRAFFIC_SECRET_0"}
    assert "_gnutls_nss_keylog_func, its key-log function" in summary and "(gnutls 3." in summary, summary
    assert (tmp_path / "harvest-profiles" / f"gnutls-{build_id}.json").is_file()  # learned once, kept by build-id
    assert (str(tmp_path / "lib") in summary) == (build == "rebuilt"), summary


GRPC_SERVER = Path(__file__).resolve().parent / "support" / "servers" / "grpc_tls_server.py"


def _grpc_call(lab: Lab, port: int, keylog: Path, *args: str) -> None:
    """One unary gRPC call by curl (HTTP/2 over TLS; the echo server answers the message back)."""
    request = lab.tmp / "grpc-request.bin"
    request.write_bytes(b"\0\0\0\0\x05hello")
    argv = [tlslab.tool("curl"), "-sS", "-k", "--max-time", "20", "--http2", *args, "-X", "POST",
            "-H", "content-type: application/grpc", "-H", "te: trailers", "--data-binary", f"@{request}",
            f"https://127.0.0.1:{port}/tlsbridge.Echo/Call"]
    proc = lab.ns.proc(argv, stdin_pipe=False, env=dict(os.environ, SSLKEYLOGFILE=str(keylog)))
    if proc.wait(30) is None or proc.stop(timeout=1) != 0:
        raise AssertionError(f"curl {' '.join(args)} failed: {proc.describe()}")
    assert proc.out.data == b"\0\0\0\0\x05hello"


@pytest.mark.parametrize("grpcio", ["venv", "older"])
def test_boringssl_in_grpc_python_tls13_and_tls12(lab, tmp_path, grpcio):
    """The venv's grpcio and an older one from the registry (another BoringSSL build,
    another place of ssl_log_secret): each found and hooked with nothing known in advance."""
    from tests.support.grpc_builds import OLDER, fetch

    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    argv = [sys.executable, str(GRPC_SERVER), str(lab.certs.chain), str(lab.certs.key), "4447"]
    if grpcio == "older":
        argv = ["env", f"PYTHONPATH={fetch(OLDER)}", *argv]
    server = lab._start(argv, 4447)
    harvester = lab.harvester("--pid", str(server.pid), "--keylog", str(harvested))
    for suite in TLS13_SUITES:
        _grpc_call(lab, 4447, client, "--tlsv1.3", "--tls13-ciphers", suite)
    for cipher in TLS12_CIPHERS[:2]:
        _grpc_call(lab, 4447, client, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher)
    theirs, summary = _stop_and_compare(harvester, client, harvested)
    assert len({line[1] for line in theirs}) == 5
    assert "cygrpc" in summary and "(boringssl): ssl_log_secret, its key-log function" in summary, summary
    assert (f"grpcio-{OLDER}/grpc/_cython/cygrpc" in summary) == (grpcio == "older"), summary


def test_a_go_binary_redeployed_at_the_same_path_is_hooked_again(lab, go_servers, tmp_path):
    """A service restarted from a new file at the same path (a redeploy: another inode,
    the same build) is probed anew: the old probe stays on the old file."""
    import shutil
    import signal

    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    app = tmp_path / "app" / "gosrv"
    app.parent.mkdir()
    shutil.copy(go_servers["gohttps-s"], app)
    argv = [str(app), str(lab.certs.chain), str(lab.certs.key), "127.0.0.1:4448"]
    first = lab._start(argv, 4448)
    harvester = lab.harvester("--comm", "gosrv", "--keylog", str(harvested))
    lab.curl(4448, client, "--tlsv1.3", path="/hello")
    first.stop(signal.SIGTERM)
    app.unlink()
    shutil.copy(go_servers["gohttps-s"], app)  # the same build: the same offset, another inode
    lab._start(argv, 4448)
    time.sleep(1.5)  # the rescan period
    lab.curl(4448, client, "--tlsv1.3", path="/hello")
    lab.curl(4448, client, "--tlsv1.2", "--tls-max", "1.2", path="/hello")
    _, summary = _stop_and_compare(harvester, client, harvested, without=("EXPORTER_SECRET",))
    assert summary.count(f"hooked {app} (go crypto/tls go1.19.") == 2, summary
