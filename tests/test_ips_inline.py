"""The inline IPS end to end, in network namespaces: client — gateway — server.

The gateway forwards; iptables' NFQUEUE target hands the server's port-443
traffic to ``tls-bridge ips --inline``, which decrypts with secrets a harvester
reads out of nginx's memory on the server (the key feed, or the key log the
harvester writes) and holds each record's last segment until a real Suricata 7
in af-packet IPS mode (``deploy/suricata/tls-bridge-inline.yaml``, the drop rule
of ``suricata-rules/tls-bridge-inline.rules``) has passed its plaintext.

Oracles: nginx's access log (what reached the server), curl's exit status and
received bytes, a capture on the client (the resets it got), a capture on the
server decrypted by tshark with curl's own key log (when each request reached
the server), Suricata's eve (when it judged each request).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.support import suricata as S
from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "deploy" / "suricata" / "tls-bridge-inline.yaml"
INLINE_RULES = ROOT / "suricata-rules" / "tls-bridge-inline.rules"
SERVER, CLIENT = "10.113.2.2", "10.113.1.2"
QUEUE = "13"
BLOCK = "/tls-bridge-block-marker"
TEST_RULES = 'alert http any any -> any any (msg:"inline test: request seen"; flow:to_server; http.uri; ' \
    'content:"/files/"; sid:9913002; rev:1;)\n'

pytestmark = pytest.mark.real


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _exec(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


@dataclass
class Lab:
    tmp: Path
    client: str
    gateway: str
    server: str
    feed: str
    harvested_keylog: Path
    client_keylog: Path
    access_log: Path
    html: Path
    eve: Path
    suricata: subprocess.Popen

    def ips(self, name: str, *extra: str, keys: tuple[str, ...] | None = None) -> BridgeProcess:
        keys = keys if keys is not None else ("--keys", self.feed, "--keys-insecure")
        work = self.tmp / name
        work.mkdir()
        return BridgeProcess(["ips", "--inline", "-q", QUEUE, "--suricata-in", "ipsin0", "--suricata-out", "ipsout0",
                              *keys, "--flows", str(work / "flows.jsonl"), "--log", str(work / "ips.jsonl"), *extra],
                             work / "ips.err", prefix=_exec(self.gateway))

    def curl(self, *args: str, timeout: float = 40) -> subprocess.CompletedProcess:
        return subprocess.run([*_exec(self.client), "curl", "-sk", "--max-time", str(timeout), *args],
                              capture_output=True, text=True, check=False,
                              env=dict(os.environ, SSLKEYLOGFILE=str(self.client_keylog)))

    def access(self) -> list[dict[str, str]]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [dict(zip(("msec", "connection", "uri", "status", "protocol"), line.split())) for line in lines]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _topology(tag: str) -> tuple[str, str, str]:
    client, gateway, server = (f"tlsb-ipsi-{n}-{tag}" for n in "cgv")
    for ns in (client, gateway, server):
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", client, "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", gateway)
    _ip("-n", server, "link", "add", "s0", "type", "veth", "peer", "name", "g1", "netns", gateway)
    _ip("-n", gateway, "link", "add", "ipsin0", "type", "veth", "peer", "name", "ipsin1")
    _ip("-n", gateway, "link", "add", "ipsout0", "type", "veth", "peer", "name", "ipsout1")
    for ns, link, address in ((client, "c0", f"{CLIENT}/24"), (gateway, "g0", "10.113.1.1/24"),
                              (gateway, "g1", "10.113.2.1/24"), (server, "s0", f"{SERVER}/24")):
        _ip("-n", ns, "addr", "add", address, "dev", link)
    for ns, link in ((client, "c0"), (gateway, "g0"), (gateway, "g1"), (server, "s0"), (gateway, "ipsin0"),
                     (gateway, "ipsin1"), (gateway, "ipsout0"), (gateway, "ipsout1")):
        _ip("-n", ns, "link", "set", link, "up")
    _ip("-n", client, "route", "add", "default", "via", "10.113.1.1")
    _ip("-n", server, "route", "add", "default", "via", "10.113.2.1")
    subprocess.run([*_exec(gateway), "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    for rule in (["-d", SERVER, "--dport", "443"], ["-s", SERVER, "--sport", "443"]):
        subprocess.run([*_exec(gateway), "iptables", "-A", "FORWARD", "-p", "tcp", *rule, "-j", "NFQUEUE",
                        "--queue-num", QUEUE], check=True)
    return client, gateway, server


def _nginx(server: str, tmp: Path, certs: tlslab.CertChain) -> tuple[subprocess.Popen, Path, Path]:
    prefix = tmp / "nginx"
    for directory in ("logs", "html/files", "tmp"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    html = prefix / "html"
    (html / "harmless").write_bytes(b"harmless\n" * 2000)
    (html / BLOCK.lstrip("/")).write_bytes(b"must never be served\n")
    access = prefix / "logs" / "access.log"
    conf = prefix / "nginx.conf"
    conf.write_text(f"""daemon off; master_process off; user root; pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log; events {{ worker_connections 1024; }}
http {{ log_format ipsi '$msec $connection $request_uri $status $server_protocol';
access_log {access} ipsi; client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
keepalive_requests 1000;
server {{ listen {SERVER}:443 ssl http2; ssl_certificate {certs.chain}; ssl_certificate_key {certs.key};
ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off; root {html}; }} }}
""")
    proc = subprocess.Popen([*_exec(server), "nginx", "-p", str(prefix), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, access, html


def _suricata(gateway: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    work = tmp / "suricata"
    work.mkdir()
    config = S.minimal_config(work)
    config.write_text(config.read_text() + f"include:\n  - {OVERLAY}\n")
    (work / "test.rules").write_text(TEST_RULES)
    rules = S.combine_rules([INLINE_RULES, work / "test.rules"], (), work / "combined.rules")
    with open(work / "suricata.out", "wb") as out:
        proc = subprocess.Popen([*_exec(gateway), S.require_suricata(), "-c", str(config), "--af-packet", "-v",
                                 "--init-errors-fatal", "-l", str(work), "-S", str(rules), "--runmode", "workers"],
                                stdout=out, stderr=subprocess.STDOUT)
    _wait(lambda: "Engine started" in (work / "suricata.out").read_text(errors="replace") or proc.poll() is not None,
          60, "Suricata")
    assert proc.poll() is None, (work / "suricata.out").read_text()
    return proc, work / "eve-tls-bridge-inline.json"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tls_certs):
    tlslab.require_root()
    tlslab.require_tools("nginx", "curl", "iptables", "suricata", "tcpdump", "tshark")
    tmp = tmp_path_factory.mktemp("ips-inline")
    tag = str(os.getpid() % 100000)
    client, gateway, server = _topology(tag)
    procs: list[subprocess.Popen] = []
    try:
        nginx, access, html = _nginx(server, tmp, tls_certs)
        procs.append(nginx)
        _wait(lambda: (tmp / "nginx" / "nginx.pid").exists(), 20, "nginx")
        pid = (tmp / "nginx" / "nginx.pid").read_text().strip()
        feed, harvested = f"ipc://{tmp}/feed", tmp / "harvested.keylog"
        harvester_log = tmp / "harvester.log"
        with open(harvester_log, "wb") as hlog:
            harvester = subprocess.Popen([*_exec(server), str(ROOT / ".venv" / "bin" / "python"), "-m", "bridge.cli",
                                          "harvest", "process", "--pid", pid, "--keylog", str(harvested), "--bind",
                                          feed, "--insecure"], stdout=hlog, stderr=hlog, cwd=ROOT)
        procs.append(harvester)
        _wait(lambda: "harvesting" in harvester_log.read_text(errors="replace") or harvester.poll() is not None, 60,
              "the harvester")
        assert harvester.poll() is None, harvester_log.read_text()
        suricata, eve = _suricata(gateway, tmp)
        procs.append(suricata)
        yield Lab(tmp, client, gateway, server, feed, harvested, tmp / "client.keylog", access, html, eve, suricata)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for ns in (client, gateway, server):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
            for pid in pids.split():
                subprocess.run(["kill", "-9", pid], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _capture(ns: str, interface: str, path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*_exec(ns), "tcpdump", "-i", interface, "-B", "32768", "-U", "-s", "0", "-w", str(path), "tcp port 443"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # tcpdump is listening
    return proc


def _stop_capture(proc: subprocess.Popen) -> None:
    time.sleep(1.2)  # libpcap hands over a block of packets at the latest after 1 s
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def _resets_to_client(pcap: Path) -> dict[int, int]:
    """Client port → RSTs it received from the server's address."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", f"tcp.flags.reset == 1 && ip.src == {SERVER}", "-T",
                          "fields", "-e", "tcp.dstport"], capture_output=True, text=True, check=True).stdout
    counts: dict[int, int] = {}
    for port in out.split():
        counts[int(port)] = counts.get(int(port), 0) + 1
    return counts


# --- a drop rule: the request never reaches the server, the connection ends with a reset ----------

CASES = [("http1.1", "1.3"), ("http2", "1.2"), ("http1.1", "1.2"), ("http2", "1.3")]


def _harmless_then_blocked(lab: Lab, http: str, tls: str, tag: str) -> subprocess.CompletedProcess:
    versions = ["--tlsv1.3"] if tls == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    return lab.curl(f"--{http}", *versions, "-w", "%{url_effective} %{http_code} %{size_download} %{num_connects}"
                    " %{local_port}\\n", "-o", "/dev/null", f"https://{SERVER}/harmless?{tag}", "-o", "/dev/null",
                    f"https://{SERVER}{BLOCK}?{tag}")


def _assert_blocked(lab: Lab, result: subprocess.CompletedProcess, tag: str, resets: dict[int, int],
                    ips_log: list[dict], flows: list[dict]) -> None:
    lines = result.stdout.splitlines()
    first = lines[0].split()
    assert first[1] == "200" and first[2] == str(len(b"harmless\n" * 2000)), (result.stdout, result.stderr)
    assert result.returncode in (16, 55, 56, 92), f"{tag}: not ended by a reset: {result.returncode} {result.stderr}"
    # The blocked request went on the harmless one's connection (below: that connection's
    # records passed, then one was dropped); curl retries a request whose reused connection
    # died once on a fresh connection, which is cut the same way.
    port = int(first[4])
    served = [a for a in lab.access() if a["uri"].endswith(tag)]
    assert [a["uri"] for a in served] == [f"/harmless?{tag}"], served  # the blocked request never reached nginx
    assert resets.get(port, 0) >= 1, f"{tag}: no RST reached the client's port {port}: {resets}"
    cut = [r for r in ips_log if r["event"] == "cut" and r["client"].endswith(f":{port}")]
    assert cut and cut[0]["resets_sent"] == 2 and "suricata dropped" in cut[0]["why"], ips_log
    flow = [f for f in flows if str(f.get("client", "")).endswith(f":{port}")]
    assert flow and flow[0]["ips"]["verdict"] == "dropped" and flow[0]["ips"]["records_passed"] >= 2, flows
    assert flow[0]["ips"]["reason"] == "suricata dropped the plaintext" and flow[0]["status"] == "decrypted", flow


def test_a_request_a_drop_rule_matches_never_reaches_the_server(lab):
    """HTTP/1.1 and HTTP/2 over TLS 1.3 and 1.2, one connection each: the harmless request
    is answered, the blocked one on the same connection is dropped before nginx and the
    client gets a reset.  Secrets from the key feed (the harvester on the server)."""
    pcap = lab.tmp / "client-drop.pcap"
    capture = _capture(lab.client, "c0", pcap)
    results = {}
    with lab.ips("drop-feed", "--hold-budget", "10") as ips:
        ips.wait_for("ips --inline: queue", 30)
        for http, tls in CASES:
            tag = f"{http}-tls{tls}"
            results[tag] = _harmless_then_blocked(lab, http, tls, tag)
        time.sleep(0.5)
        assert ips.stop() == 0, ips.text()
    _stop_capture(capture)
    resets = _resets_to_client(pcap)
    work = lab.tmp / "drop-feed"
    for tag, result in results.items():
        _assert_blocked(lab, result, tag, resets, _jsonl(work / "ips.jsonl"), _jsonl(work / "flows.jsonl"))
    eve = [json.loads(line) for line in lab.eve.read_text().splitlines()]
    drops = [e for e in eve if e.get("event_type") == "drop" or (e.get("event_type") == "alert" and
                                                                 e["alert"]["signature_id"] == 1915901)]
    assert drops, "Suricata logged no drop"
    flows = _jsonl(work / "flows.jsonl")
    assert {f["tls_version"] for f in flows if f.get("status") == "decrypted"} >= {"TLSv1.2", "TLSv1.3"}, flows


def test_the_key_log_the_harvester_writes_serves_as_well(lab):
    """The same block with secrets from a key log (the one the harvester appends to)."""
    pcap = lab.tmp / "client-keylog.pcap"
    capture = _capture(lab.client, "c0", pcap)
    with lab.ips("drop-keylog", "--hold-budget", "10", keys=("--keylog", str(lab.harvested_keylog))) as ips:
        ips.wait_for("ips --inline: queue", 30)
        result = _harmless_then_blocked(lab, "http1.1", "1.3", "keylog")
        time.sleep(0.5)
        assert ips.stop() == 0, ips.text()
    _stop_capture(capture)
    work = lab.tmp / "drop-keylog"
    _assert_blocked(lab, result, "keylog", _resets_to_client(pcap), _jsonl(work / "ips.jsonl"),
                    _jsonl(work / "flows.jsonl"))


# --- no secrets: fail-open and fail-closed ---------------------------------------------------------


@pytest.mark.parametrize("policy", ["pass-flow", "drop-flow"])
def test_without_secrets_the_policy_decides(lab, policy):
    """A key feed that publishes nothing (its harvester stopped): after the hold budget,
    pass-flow releases the connection uninspected, drop-flow cuts it."""
    dead = f"ipc://{lab.tmp}/dead-feed-{policy}"
    tag = f"nokeys-{policy}"
    with lab.ips(tag, "--hold-budget", "1", "--missing-keys-policy", policy,
                 keys=("--keys", dead, "--keys-insecure", "--keys-timeout", "0.5")) as ips:
        ips.wait_for("ips --inline: queue", 30)
        result = lab.curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{local_port}",
                          f"https://{SERVER}/harmless?{tag}", timeout=20)
        time.sleep(0.5)
        assert ips.stop() == 0, ips.text()
    work = lab.tmp / tag
    served = [a for a in lab.access() if a["uri"].endswith(tag)]
    ips_log, flows = _jsonl(work / "ips.jsonl"), _jsonl(work / "flows.jsonl")
    assert any(r["event"] == "policy" and r["policy"] == f"keys:{policy}" for r in ips_log), ips_log
    if policy == "pass-flow":
        assert result.returncode == 0 and result.stdout.split()[:2] == ["200", str(len(b"harmless\n" * 2000))]
        assert [a["uri"] for a in served] == [f"/harmless?{tag}"]
        assert [f["ips"]["verdict"] for f in flows if "ips" in f] == ["uninspected"], flows
    else:
        assert result.returncode in (16, 35, 55, 56, 92), (result.returncode, result.stderr)
        assert served == [], served
        assert [f["ips"]["verdict"] for f in flows if "ips" in f] == ["dropped"], flows
        assert any(r["event"] == "cut" and r["resets_sent"] == 2 for r in ips_log), ips_log


# --- many connections at once: nothing lost, nothing released before its verdict --------------------


def _eve_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def test_concurrent_connections_lose_nothing_and_wait_for_their_verdicts(lab):
    connections, per_connection = 60, 2
    rng = __import__("random").Random(13)
    files = {}
    for i in range(connections * per_connection):
        data = os.urandom(rng.randrange(2_000, 120_000))
        (lab.html / "files" / f"f{i}").write_bytes(data)
        files[f"f{i}"] = hashlib.sha256(data).hexdigest()
    downloads = lab.tmp / "downloads"
    downloads.mkdir()
    server_pcap = lab.tmp / "server-concurrent.pcap"
    capture = _capture(lab.server, "s0", server_pcap)
    marks = len(lab.eve.read_text().splitlines())

    def fetch(n: int) -> subprocess.CompletedProcess:
        args = ["--http1.1"]
        for k in range(per_connection):
            name = f"f{n * per_connection + k}"
            args += ["-o", str(downloads / name), f"https://{SERVER}/files/{name}"]
        return lab.curl(*args, timeout=120)

    with lab.ips("concurrent", "--hold-budget", "10", "--verdict-timeout", "5", "--log-releases") as ips:
        ips.wait_for("ips --inline: queue", 30)
        with ThreadPoolExecutor(connections) as pool:
            results = list(pool.map(fetch, range(connections)))
        time.sleep(1.0)
        assert ips.stop() == 0, ips.text()
    _stop_capture(capture)
    failed = [r for r in results if r.returncode != 0]
    assert not failed, [(r.returncode, r.stderr) for r in failed[:3]]
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in downloads.iterdir()}
    assert got == files  # every byte, in order
    work = lab.tmp / "concurrent"
    log, flows = _jsonl(work / "ips.jsonl"), _jsonl(work / "flows.jsonl")
    releases = [r for r in log if r["event"] == "release"]
    assert not [r for r in log if r["event"] in ("cut", "policy")], [r for r in log if r["event"] != "release"][:5]
    judged = [r for r in releases if any(v["kind"] == "verdict" for v in r["verdicts"])]
    assert len({r["client"] for r in judged}) == connections, "a connection's records were not judged"
    for release in releases:
        for verdict in release["verdicts"]:
            assert verdict["verdict"] == "passed" and verdict["at"] <= release["time"], release
    inline = [f for f in flows if "ips" in f]
    assert len(inline) == connections and all(f["ips"]["verdict"] == "passed" for f in inline), inline[:3]
    assert sum(f["ips"]["held_packets"] for f in inline) == sum(f["ips"]["released_packets"] for f in inline)
    # Independent of the bridge's own log: each request reached the server (its capture,
    # decrypted by tshark with curl's key log) after Suricata judged its plaintext (eve).
    judged_at = {}
    for line in lab.eve.read_text().splitlines()[marks:]:
        event = json.loads(line)
        if event.get("event_type") == "alert" and event["alert"]["signature_id"] == 9913002:
            judged_at[(event["src_port"], event["http"]["url"])] = _eve_time(event["timestamp"])
    # (Pure ACKs pass while a segment before them is held: tshark's sequence analysis would
    # call the held segment a retransmission and not dissect it, hence off.)
    out = subprocess.run(["tshark", "-r", str(server_pcap), "-o", f"tls.keylog_file:{lab.client_keylog}", "-o",
                          "tcp.analyze_sequence_numbers:FALSE", "-Y",
                          "http.request", "-T", "fields", "-e", "frame.time_epoch", "-e", "tcp.srcport", "-e",
                          "http.request.uri"], capture_output=True, text=True, check=True).stdout
    arrived = {}
    for line in out.splitlines():
        stamp, port, uri = line.split("\t")
        arrived.setdefault((int(port), uri), float(stamp))
    assert len(arrived) == connections * per_connection, len(arrived)
    assert set(arrived) <= set(judged_at), sorted(set(arrived) - set(judged_at))[:3]
    early = [(key, judged_at[key] - at) for key, at in arrived.items() if at < judged_at[key]]
    assert not early, f"requests that reached the server before Suricata judged them: {early[:3]}"
