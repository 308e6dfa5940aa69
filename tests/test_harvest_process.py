"""The host-process harvester against real servers and clients: the harvested key
log equals the clients' own, and a capture decrypts with the harvested keys alone."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from tests.support import tlslab
from tests.support.harvest import Lab, compare_keylogs, probes_left
from tests.support.keyfeed import BridgeProcess

pytestmark = pytest.mark.real

TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS12_CIPHERS = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
                 "ECDHE-RSA-AES128-SHA256")


@pytest.fixture
def lab(tmp_path, tlslab_tools, tls_certs):
    tlslab.require_tools("nginx", "curl", "node")
    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            yield lab
        finally:
            lab.close()


def _curl_matrix(lab: Lab, port: int, keylog, *, http2: bool = False) -> None:
    version = ["--http2"] if http2 else ["--http1.1"]
    for suite in TLS13_SUITES:
        lab.curl(port, keylog, *version, "--tlsv1.3", "--tls13-ciphers", suite)
    for cipher in TLS12_CIPHERS:
        lab.curl(port, keylog, *version, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher)


def _stop(harvester: BridgeProcess) -> str:
    assert harvester.stop() == 0, harvester.text()
    return harvester.text()


def _assert_same(client, harvested, connections: int) -> None:
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, f"missing {sorted(missing)[:4]}, extra {sorted(extra)[:4]}"
    randoms = {line.split()[1] for line in client.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert len(randoms) == connections


def test_openssl_s_server_and_decrypting_its_capture_with_the_harvest(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    pcap = tmp_path / "traffic.pcap"
    server = lab.s_server()
    with tlslab.Capture(lab.ns, pcap):
        harvester = lab.harvester("--comm", "openssl", "--keylog", str(harvested))
        _curl_matrix(lab, 4433, client)
        for suite in TLS13_SUITES[:2]:
            lab.s_client(4433, client, "-tls1_3", "-ciphersuites", suite)
        lab.s_client(4433, client, "-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384")
        time.sleep(0.3)
        summary = _stop(harvester)
    assert server.alive()
    _assert_same(client, harvested, 10)
    assert "10 connections published" in summary
    flows = tmp_path / "flows.jsonl"
    decrypt = subprocess.run([*_bridge(), "decrypt", "-r", str(pcap), "--keylog", str(harvested), "--flows", str(flows)],
                             capture_output=True, text=True)
    assert decrypt.returncode == 0, decrypt.stderr
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    assert [r["status"] for r in records] == ["decrypted"] * 10, [(r["status"], r["reason"]) for r in records]
    # TLS 1.3 handshakes decrypted from HANDSHAKE_SECRET alone: the certificate is in the flow log
    assert all(r["certificates"] and r["certificates"][0]["san"] for r in records if r["tls_version"] == "TLSv1.3")
    assert all(r["s2c"]["bytes"] > 1000 for r in records)


def test_nginx_master_and_forked_workers_http1_and_http2(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    lab.nginx(port=4436, workers=2)
    harvester = lab.harvester("--comm", "nginx", "--keylog", str(harvested))
    _curl_matrix(lab, 4436, client, http2=True)
    for _ in range(3):
        lab.curl(4436, client, "--http1.1", "--tlsv1.3", path="/big.bin")
    time.sleep(0.3)
    summary = _stop(harvester)
    _assert_same(client, harvested, 10)
    assert "from 3 processes" in summary  # the master and both workers


def test_threaded_python_ssl_server(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    lab.python_server(port=4434)
    harvester = lab.harvester("--comm", "python", "python3", "python3.11", "--keylog", str(harvested))
    _curl_matrix(lab, 4434, client)
    time.sleep(0.3)
    _stop(harvester)
    _assert_same(client, harvested, 7)


def test_node_with_openssl_linked_in(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    lab.node_server(port=4435)
    harvester = lab.harvester("--comm", "node", "--keylog", str(harvested))
    _curl_matrix(lab, 4435, client)
    time.sleep(0.3)
    summary = _stop(harvester)
    _assert_same(client, harvested, 7)
    assert "/usr/bin/node" in summary or "node" in summary


def test_wire_trigger_without_any_hook(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    lab.s_server()
    harvester = lab.harvester("--comm", "openssl", "--trigger", "wire", "--wire", "lo", "--keylog", str(harvested))
    # each held open until its search found it (a fixed moment may be too short on a loaded host)
    for suite in TLS13_SUITES:
        lab.s_client(4433, client, "-tls1_3", "-ciphersuites", suite, harvested=harvested)
    for cipher in TLS12_CIPHERS[:2]:
        lab.s_client(4433, client, "-tls1_2", "-cipher", cipher, harvested=harvested)
    summary = _stop(harvester)
    _assert_same(client, harvested, 5)
    assert "0 hook events" in summary and "searches: 5 ClientHellos and 0 sensor requests, 0 duplicates, 5 published" in summary


def test_processes_that_start_later_and_targets_that_die(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    first = lab.s_server(port=4433)
    harvester = lab.harvester("--comm", "openssl", "--keylog", str(harvested))
    lab.curl(4433, client, "--tlsv1.3")
    first.stop(signal.SIGKILL)  # a target dies; its events may still be queued
    later = lab.s_server(port=4437)  # a process that starts after the harvester
    time.sleep(1.5)  # the rescan period
    lab.curl(4437, client, "--tlsv1.3")
    lab.curl(4437, client, "--tlsv1.2", "--tls-max", "1.2")
    time.sleep(0.3)
    _stop(harvester)
    assert later.alive()
    _assert_same(client, harvested, 3)


def test_a_killed_harvester_leaves_no_probe_and_the_target_keeps_serving(lab, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    lab.s_server()
    harvester = lab.harvester("--comm", "openssl", "--keylog", str(harvested))
    pid = harvester.proc.pid
    assert probes_left(pid), "the harvester placed no probe"
    lab.curl(4433, client, "--tlsv1.3")
    harvester.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while probes_left(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert probes_left(pid) == []
    for _ in range(3):
        assert b"s_server" in lab.curl(4433, client, "--tlsv1.3")  # no stray breakpoint, no hang


def test_without_privileges_the_harvester_says_what_it_needs(tmp_path):
    result = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
         *_bridge(), "harvest", "process", "--all", "--keylog", str(tmp_path / "k")],
        capture_output=True, text=True, cwd="/",
    )
    assert result.returncode == 1 and "needs root" in result.stderr and "CAP_SYS_PTRACE" in result.stderr
    assert "Traceback" not in result.stderr


def _bridge() -> list[str]:
    import sys

    return [sys.executable, "-m", "bridge.cli"]


def test_harvested_secrets_go_out_on_the_key_feed(lab, tmp_path):
    """harvest → CurveZMQ feed → a sensor's key log equals the client's."""
    from tests.support.keyfeed import make_feed_certs

    certs = make_feed_certs(tmp_path / "certs")
    endpoint = f"ipc://{tmp_path}/feed"
    client, dumped = tmp_path / "client.keylog", tmp_path / "dumped.keylog"
    lab.s_server()
    harvester = lab.harvester("--comm", "openssl", "--bind", endpoint, *certs.publisher_args())
    lab.curl(4433, client, "--tlsv1.3")
    lab.curl(4433, client, "--tlsv1.2", "--tls-max", "1.2")
    time.sleep(0.3)
    with BridgeProcess(["keys", "dump", "--connect", endpoint, *certs.sensor_args(), "-o", str(dumped),
                        "--timeout", "2"], tmp_path / "dump.err") as dump:  # a late sensor: from the snapshot
        assert dump.wait() == 0, dump.text()
    _stop(harvester)
    _assert_same(client, dumped, 2)


def test_a_sensors_key_requests_alone_trigger_the_search(lab, tmp_path):
    """No hook, no wire on the harvester: a live sensor that sees a ClientHello
    without secrets asks over the CurveZMQ feed; the harvester searches s_server's
    memory for each client random while the connection is open; the sensor
    decrypts.  One-shot connections may close first: the sensor says so, and the
    harvester counts them instead of searching on for seconds."""
    from tests.support.keyfeed import make_feed_certs

    certs = make_feed_certs(tmp_path / "certs")
    endpoint = f"ipc://{tmp_path}/feed"
    client, harvested, flows = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "flows.jsonl"
    oneshot = tmp_path / "oneshot.keylog"
    lab.s_server()
    harvester = lab.harvester("--comm", "openssl", "--trigger", "requests", "--bind", endpoint,
                              *certs.publisher_args(), "--keylog", str(harvested))
    sensor = BridgeProcess(["decrypt", "-i", "lo", "--keys", endpoint, *certs.sensor_args(), "--flows", str(flows)],
                           tmp_path / "sensor.err", prefix=lab.ns.prefix())
    try:
        sensor.wait_for("capturing on lo", timeout=30)
        for suite in TLS13_SUITES:
            lab.s_client(4433, client, "-tls1_3", "-ciphersuites", suite)
        for cipher in TLS12_CIPHERS[:2]:
            lab.s_client(4433, client, "-tls1_2", "-cipher", cipher)
        for _ in range(3):
            lab.curl(4433, oneshot, "--tlsv1.3")
        time.sleep(0.5)
    finally:
        sensor_code = sensor.stop()
    summary = _stop(harvester)
    assert sensor_code == 0, sensor.text()
    assert "0 hook events" in summary
    counts = re.search(r"searches: 0 ClientHellos and 8 sensor requests, 0 duplicates, (\d+) published, (\d+) closed "
                       r"before found, 0 not ours, 0 not found, 0 incomplete, 0 unfinished at stop", summary)
    assert counts, summary
    published, closed_first = (int(x) for x in counts.groups())
    assert published + closed_first == 8 and published >= 5, summary
    # every held connection's keys, nothing wrong: equal to the clients' own lines
    missing, extra = compare_keylogs(client, harvested)
    assert not missing, summary
    _, extra = compare_keylogs(oneshot, harvested)
    assert len({line[1] for line in extra}) == 5, summary  # only the held connections' randoms are not one-shot
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    held = {line.split()[1] for line in client.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert len(records) == 8
    assert {r["client_random"] for r in records if r["status"] == "decrypted"} >= held
    assert sum(r["status"] == "decrypted" for r in records) == published, records
    assert {r["key_origin"]["trigger"] for r in records if r["key_origin"]} == {"request"}
    # 8 starts, and the end of each connection that had no secrets yet when it ended (the one-shots, at most)
    sent = re.search(r"(\d+) key requests sent to the harvesters \(0 dropped\)", sensor.text())
    assert sent and 8 + closed_first <= int(sent.group(1)) <= 8 + 3, sensor.text()
