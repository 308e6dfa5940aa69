"""QUIC and HTTP/3 end to end, with real peers and real oracles (issue 15).

aioquic's HTTP/3 client and server (tests/support/quic_peers.py, from the
package registry) talk in a private network namespace under tcpdump: QUIC v1
with several requests, large bodies both ways and two key updates; four
requests at once on another connection; QUIC v2.  ``tls-bridge decrypt`` reads
the capture with the client's key log and writes the synthetic cleartext and
the flow log.  Oracles: tshark's QUIC decryption of the same capture (every
request stream's bytes), the client's own record of what it sent and received,
the server's record of what it answered, and real Suricata 7 on the synthetic
pcap: every request path seen as HTTP, each response's length, the marker rule.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import quiclab, tlslab
from tests.support import suricata as S
from tests.support import zeek as Z
from tests.support.decrypt import decrypt_cli

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "suricata-rules" / "tls-bridge.rules"
SID_MARKER = 1915000

class _NsName:
    """A namespace made elsewhere, as tlslab.Capture wants it (its ``proc``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._procs: list[tlslab.Proc] = []

    def proc(self, cmd, **kw):  # type: ignore[no-untyped-def]
        process = tlslab.Proc(["ip", "netns", "exec", self.name, *cmd], name=Path(cmd[0]).name, **kw)
        self._procs.append(process)
        return process


CLIENTS = [
    quiclab.H3Client(["GET /index.html", "GET /bytes/400000", "POST /upload 300000", "GET /tls-bridge-test-marker",
                      "POST /form 2000", "GET /last.html"], key_update_after=[1, 3], change_cid_after=[2]),
    quiclab.H3Client(["GET /p/one", "GET /p/two", "GET /bytes/60000", "POST /p/four 5000"], parallel=4),
    quiclab.H3Client(["GET /v2/index.html", "GET /bytes/25000"], version=2),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> quiclab.H3Run:  # type: ignore[no-untyped-def]
    return quiclab.run_h3(tmp_path_factory.mktemp("quic-run"), CLIENTS)


def test_the_peers_did_what_the_test_asked(run):
    assert [len(c["requests"]) for c in run.clients] == [len(c.requests) for c in CLIENTS]
    assert run.clients[0]["key_updates"] == 2 and run.clients[2]["version"] == 2
    assert all(r["status"] == 200 for c in run.clients for r in c["requests"])
    assert len(run.server) == sum(len(c.requests) for c in CLIENTS)


def test_stream_data_as_tshark_decrypts_it(run):
    tshark, _ = quiclab.tshark_quic_streams(run.pcap, run.keylog)
    ours = quiclab.bridge_quic_streams(run.pcap, run.keylog)
    requests = {key: data for key, data in tshark.items() if key[0] >= 0 and key[2] % 4 == 0}
    # tshark has every request stream of the three connections, both directions
    assert len(requests) == 2 * sum(len(c.requests) for c in CLIENTS)
    for key, data in requests.items():
        assert ours.get(key) == data, key


def test_decrypt_flow_log_and_suricata_on_the_synthetic_cleartext(run, tmp_path):
    synthetic = tmp_path / "synthetic.pcap"
    flows = decrypt_cli(run.pcap, run.keylog, tmp_path, "-w", str(synthetic))
    assert len(flows) == len(CLIENTS)
    for line, client, spec in zip(flows, run.clients, CLIENTS):
        assert line["status"] == "decrypted", line
        assert line["sni"] == "quic.example.test" and line["alpn"] == "h3" and line["tls_version"] == "TLSv1.3"
        assert line["quic"]["version"] == ("QUICv2" if spec.version == 2 else "QUICv1")
        assert line["quic"]["requests"] == len(spec.requests)
        assert line["key_updates"] == 2 * client["key_updates"]  # each direction updates
        assert line["certificates"][0]["subject"] == "CN=quic.example.test"
        assert line["synthetic"]["connections"] == len(spec.requests)
        assert line["quic"]["connection_ids"]["c2s"] == 1 + len(spec.change_cid_after)  # the client moved
        assert (line["synthetic"]["client"], line["synthetic"]["server"]) == (line["client"], line["server"])
    eve = S.run_offline(synthetic, rules=[RULES], workdir=tmp_path / "suricata")
    requests = [r for r in eve.http_requests() if r.method]
    expected = sorted((r["method"], r["path"]) for c in run.clients for r in c["requests"])
    assert sorted((r.method, r.url) for r in requests) == expected, eve.summary()
    assert {r.hostname for r in requests} == {"quic.example.test"}, eve.summary()
    assert all(r.status == 200 for r in requests), eve.summary()
    # each response as long as the client received it, on the QUIC connection's addresses and ports
    lengths = sorted((e["http"]["url"], e["http"].get("length")) for e in eve.events("http"))
    assert lengths == sorted((r["path"], r["response_bytes"]) for c in run.clients for r in c["requests"])
    servers = {line["server"] for line in flows}
    assert {f"{r.flow[2]}:{r.flow[3]}" for r in requests} == servers
    assert len(eve.alerts(SID_MARKER)) == 1, eve.summary()
    assert eve.events("tls") == [] and eve.stream_anomalies() == [], eve.summary()
    # Zeek (the whole default Zeek and the project's package, reading the flow log)
    zeek = Z.require("tests/test_quic_real.py::test_decrypt_flow_log_and_suricata_on_the_synthetic_cleartext")
    work = tmp_path / "zeek"
    work.mkdir()
    result = Z.run(zeek, ["-r", str(synthetic), str(Z.PACKAGE), f"TLSBridge::flow_log={tmp_path / 'flows.jsonl'}"],
                   cwd=work)
    http = Z.read_log(work / "http.log")
    assert sorted((r["method"], r["uri"]) for r in http) == expected, http
    assert {r["host"] for r in http} == {"quic.example.test"} and {r["status_code"] for r in http} == {"200"}
    assert sorted((r["uri"], int(r["response_body_len"])) for r in http) == lengths
    assert "error" not in result.stderr.lower(), result.stderr


def test_retry(tmp_path):
    """A server that answers with a Retry: the client's next Initial has a new
    Destination Connection ID, and Initial keys are derived from it (RFC 9001 §5.2)."""
    retried = quiclab.run_h3(tmp_path / "retry", [quiclab.H3Client(["GET /after-retry", "GET /bytes/20000"])],
                             retry=True)
    flows = decrypt_cli(retried.pcap, retried.keylog, tmp_path)
    (line,) = flows
    assert line["status"] == "decrypted" and line["quic"]["retry"] is True, line
    assert line["quic"]["retry_tag_valid"] is True
    assert line["quic"]["requests"] == 2 and line["sni"] == "quic.example.test"
    assert line["c2s"]["skipped_records"] == 0 and line["s2c"]["skipped_records"] == 0


def test_key_requests_and_the_key_feed(run, tmp_path):
    """``decrypt --keys``: each QUIC ClientHello's client random is asked for on the
    key feed (a key request naming the UDP endpoints); a harvester stand-in answers
    each request with that connection's secrets from the client's key log, and
    every QUIC connection is decrypted with them."""
    import queue
    import threading
    import time

    from bridge.keyfeed import wire
    from bridge.keyfeed.publisher import Publisher, PublisherConfig
    from bridge.keyfeed.security import load_server
    from bridge.keys.keylog import read_keylog
    from tests.support.keyfeed import BridgeProcess, free_tcp_pair, make_feed_certs

    by_random: dict[bytes, dict[str, bytes]] = {}
    for entry in read_keylog(run.keylog):
        by_random.setdefault(entry.client_random, {})[entry.label] = entry.secret
    certs = make_feed_certs(tmp_path / "certs")
    endpoint = f"tcp://127.0.0.1:{free_tcp_pair()}"
    asked: queue.Queue = queue.Queue()
    requests: list = []
    flows = tmp_path / "flows.jsonl"
    with Publisher(PublisherConfig(endpoint), server=load_server(certs.publisher_secret, certs.allow_dir)) as publisher:
        publisher.take_key_requests(asked.put)
        stop = threading.Event()

        def answer() -> None:
            while not stop.is_set():
                try:
                    request = asked.get(timeout=0.1)
                except queue.Empty:
                    continue
                requests.append(request)
                if not request.ended and request.client_random in by_random:
                    publisher.publish(wire.KeyRecord(request.client_random, by_random[request.client_random],
                                                     captured_at=time.time()))

        answering = threading.Thread(target=answer)
        answering.start()
        try:
            with BridgeProcess(["decrypt", "-r", str(run.pcap), "--keys", endpoint, *certs.sensor_args(),
                                "--keys-timeout", "30", "--flows", str(flows)], tmp_path / "decrypt.err") as decrypt:
                assert decrypt.wait(90) == 0, decrypt.text()
        finally:
            stop.set()
            answering.join()
    lines = [json.loads(line) for line in flows.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["decrypted"] * len(CLIENTS), lines
    assert [line["quic"]["requests"] for line in lines] == [len(c.requests) for c in CLIENTS]
    wanted = {(r.client_random.hex(), f"127.0.0.1:{r.client[1]}", f"127.0.0.1:{r.server[1]}")
              for r in requests if not r.ended}
    assert wanted == {(line["client_random"], line["client"], line["server"]) for line in lines}
    assert all(len(line["key_origin"]["publisher"]) == 32 for line in lines), lines[0]["key_origin"]


def test_live_capture_and_injection(run, tmp_path):
    """``decrypt -i``: the capture replayed onto a veth is decrypted live, each QUIC
    connection logged once it closed (CONNECTION_CLOSE and a short drain, wall time),
    its requests injected as cleartext into another interface, where a capture sees them."""
    import time

    from bridge.capture.pcapfile import read_capture
    from bridge.reinject.outputs import InterfaceOutput
    from tests.support.keyfeed import BridgeProcess
    from tests.support.netns import in_netns, veth_namespace

    flows = tmp_path / "live.jsonl"
    injected = tmp_path / "injected.pcap"
    frames = list(read_capture(run.pcap))
    with veth_namespace("quic15-live") as ns:
        # injected into tls0, seen on its veth peer (no dummy module here)
        subprocess.run(["ip", "-n", ns, "link", "add", "tls0", "type", "veth", "peer", "name", "ids0"], check=True)
        for name in ("tls0", "ids0"):
            subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        with tlslab.Capture(_NsName(ns), injected, filter="tcp", iface="ids0"):
            with BridgeProcess(["decrypt", "-i", "vb", "--keylog", str(run.keylog), "--inject", "tls0",
                                "--flows", str(flows)], tmp_path / "decrypt.err",
                               prefix=["ip", "netns", "exec", ns]) as decrypt:
                decrypt.wait_for("capturing on vb")
                output = in_netns(ns, lambda: InterfaceOutput("va"))
                for index, frame in enumerate(frames):
                    output.write(frame.timestamp_ns, frame.data)
                    if index % 50 == 49:
                        time.sleep(0.01)
                output.close()
                assert output.stats.dropped == 0 and output.stats.errors == 0
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and (
                        not flows.exists() or len(flows.read_text().splitlines()) < len(CLIENTS)):
                    time.sleep(0.1)
                decrypt.stop()
    lines = [json.loads(line) for line in flows.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["decrypted"] * len(CLIENTS), lines
    assert {line["ended_by"] for line in lines} == {"close"}
    assert [line["synthetic"]["connections"] for line in lines] == [len(c.requests) for c in CLIENTS]
    paths = subprocess.run(["tshark", "-r", str(injected), "-Y", "http.request", "-T", "fields",
                            "-e", "http.request.uri"], capture_output=True, text=True, timeout=120).stdout.split()
    assert sorted(paths) == sorted(r["path"] for c in run.clients for r in c["requests"])


def test_zero_rtt(tmp_path):
    """A resumed connection whose requests go as 0-RTT data (RFC 9001 §4.6), under
    the CLIENT_EARLY_TRAFFIC_SECRET, in the same datagram as the ClientHello."""
    resumed = quiclab.run_h3(tmp_path / "0rtt", [quiclab.H3Client(["GET /early/one", "POST /early/two 3000"],
                                                                   zero_rtt=True)])
    assert "CLIENT_EARLY_TRAFFIC_SECRET" in resumed.keylog.read_text()
    synthetic = tmp_path / "synthetic.pcap"
    first, second = decrypt_cli(resumed.pcap, resumed.keylog, tmp_path, "-w", str(synthetic))
    assert first["status"] == "decrypted" and first["quic"]["requests"] == 1 and not first["resumed"]
    assert second["status"] == "decrypted", second
    assert second["resumed"] and second["early_data"] == {"offered": True, "accepted": True}
    assert second["quic"]["requests"] == 2 and second["c2s"]["skipped_records"] == 0
    assert second["quic"]["zero_rtt_packets"] > 0 and first["quic"]["zero_rtt_packets"] == 0
    paths = subprocess.run(["tshark", "-r", str(synthetic), "-Y", "http.request", "-T", "fields",
                            "-e", "http.request.uri"], capture_output=True, text=True, timeout=120).stdout.split()
    assert sorted(paths) == sorted(["/ticket", "/early/one", "/early/two"])


def test_the_sensor_with_two_workers(run, tmp_path):
    """``tls-bridge run`` with two workers sharing an interface by flow (AF_PACKET
    fanout hash: both directions of a UDP 4-tuple to one worker): every QUIC
    connection logged once, decrypted, its requests injected."""
    import time

    from bridge.capture.pcapfile import read_capture
    from bridge.reinject.outputs import InterfaceOutput
    from tests.support.keyfeed import BridgeProcess
    from tests.support.netns import in_netns, veth_namespace

    flows, injected, config = tmp_path / "flows.jsonl", tmp_path / "injected.pcap", tmp_path / "sensor.toml"
    config.write_text(f"""
[capture]
interfaces = ["vb"]
workers = 2
[keys]
keylogs = ["{run.keylog}"]
[inject]
interface = "tls0"
[output]
flows = "{flows}"
[metrics]
listen = "127.0.0.1:9815"
""")
    with veth_namespace("quic15-run") as ns:
        subprocess.run(["ip", "-n", ns, "link", "add", "tls0", "type", "veth", "peer", "name", "ids0"], check=True)
        for name in ("tls0", "ids0"):
            subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        with tlslab.Capture(_NsName(ns), injected, filter="tcp", iface="ids0"):
            with BridgeProcess(["run", "--config", str(config)], tmp_path / "run.err",
                               prefix=["ip", "netns", "exec", ns]) as sensor:
                sensor.wait_for("running 2 workers")
                deadline = time.monotonic() + 30  # both workers capturing (in the fanout group)
                while time.monotonic() < deadline and "tls_bridge_workers_up 2" not in subprocess.run(
                        ["ip", "netns", "exec", ns, "curl", "-sS", "http://127.0.0.1:9815/metrics"],
                        capture_output=True, text=True).stdout:
                    time.sleep(0.3)
                output = in_netns(ns, lambda: InterfaceOutput("va"))
                for index, frame in enumerate(read_capture(run.pcap)):
                    output.write(frame.timestamp_ns, frame.data)
                    if index % 50 == 49:
                        time.sleep(0.01)
                output.close()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and (
                        not flows.exists() or len(flows.read_text().splitlines()) < len(CLIENTS)):
                    time.sleep(0.2)
                assert sensor.stop() == 0, sensor.text()
    lines = [json.loads(line) for line in flows.read_text().splitlines()]
    assert sorted(line["client"] for line in lines) == sorted({line["client"] for line in lines})  # once each
    assert [line["status"] for line in lines] == ["decrypted"] * len(CLIENTS), lines
    paths = subprocess.run(["tshark", "-r", str(injected), "-Y", "http.request", "-T", "fields",
                            "-e", "http.request.uri"], capture_output=True, text=True, timeout=120).stdout.split()
    assert sorted(paths) == sorted(r["path"] for c in run.clients for r in c["requests"])


def test_http2_as_the_synthetic_protocol(run, tmp_path):
    """``--http3-as http2``: each request an HTTP/2 connection (prior knowledge, one
    stream); Suricata parses every one as HTTP/2 and alerts on the marker, and
    tshark's HTTP/2 dissector reads every path and response length."""
    synthetic = tmp_path / "synthetic-h2.pcap"
    flows = decrypt_cli(run.pcap, run.keylog, tmp_path, "-w", str(synthetic), "--http3-as", "http2")
    assert [line["status"] for line in flows] == ["decrypted"] * len(CLIENTS)
    eve = S.run_offline(synthetic, rules=[RULES], workdir=tmp_path / "suricata")
    requests = [r for r in eve.http_requests() if r.method]
    expected = sorted((r["method"], r["path"]) for c in run.clients for r in c["requests"])
    assert sorted((r.method, r.url) for r in requests) == expected, eve.summary()
    assert {r.hostname for r in requests} == {"quic.example.test"}, eve.summary()
    assert set(eve.app_protos().values()) == {"http2"}, eve.summary()
    assert len(eve.alerts(SID_MARKER)) == 1, eve.summary()
    assert eve.stream_anomalies() == [], eve.summary()
    fields = subprocess.run(["tshark", "-r", str(synthetic), "-d", "tcp.port==4433,http2", "-Y",
                             "http2.type == 1", "-T", "fields", "-e", "http2.header.name", "-e", "http2.header.value"],
                            capture_output=True, text=True, timeout=120).stdout.splitlines()
    paths, lengths = [], []
    for line in fields:
        names, values = line.split("\t")
        pairs = dict(zip(names.split(","), values.split(",")))
        if ":path" in pairs:
            paths.append(pairs[":path"])
        else:
            lengths.append(int(pairs["content-length"]))
    assert sorted(paths) == sorted(r["path"] for c in run.clients for r in c["requests"])
    assert sorted(lengths) == sorted(r["response_bytes"] for c in run.clients for r in c["requests"])


def test_ipv6(tmp_path):
    """QUIC over IPv6 (::1): decrypted, and the synthetic connections are IPv6 too."""
    six = quiclab.run_h3(tmp_path / "v6", [quiclab.H3Client(["GET /six/index.html", "POST /six/form 4000"])],
                         host="::1")
    synthetic = tmp_path / "synthetic.pcap"
    (line,) = decrypt_cli(six.pcap, six.keylog, tmp_path, "-w", str(synthetic))
    assert line["status"] == "decrypted" and line["client"].startswith("[::1]:") and line["quic"]["requests"] == 2
    fields = subprocess.run(["tshark", "-r", str(synthetic), "-Y", "http.request", "-T", "fields", "-e", "ipv6.src",
                             "-e", "http.request.uri"], capture_output=True, text=True, timeout=120).stdout.split("\n")
    assert sorted(f for f in fields if f) == ["::1\t/six/form", "::1\t/six/index.html"]


def test_version_negotiation(tmp_path):
    """A QUIC v2 client and a v1-only server: a Version Negotiation packet, then the
    client starts over in v1 (a new ClientHello, a new client random)."""
    negotiated = quiclab.run_h3(tmp_path / "vn", [quiclab.H3Client(["GET /vn/index.html"], version=2)], only_v1=True)
    synthetic = tmp_path / "synthetic.pcap"
    (line,) = decrypt_cli(negotiated.pcap, negotiated.keylog, tmp_path, "-w", str(synthetic))
    assert line["status"] == "decrypted", line
    assert line["quic"]["version"] == "QUICv1" and line["quic"]["version_negotiation"] == [1]
    assert line["quic"]["requests"] == 1
    randoms = {l.split()[1] for l in negotiated.keylog.read_text().splitlines()}
    assert randoms == {line["client_random"]}  # the ClientHello of the v1 attempt
