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
import re
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.inline_lab import (
    BLOCK,
    SERVER,
    SERVER6,
    Lab,
    exec_in,
    inline_lab,
    jsonl,
)

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def lab(tmp_path_factory, tls_certs):
    with inline_lab(tmp_path_factory.mktemp("ips-inline"), tls_certs) as built:
        yield built


def _capture(ns: str, interface: str, path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*exec_in(ns), "tcpdump", "-i", interface, "-B", "32768", "-U", "-s", "0", "-w", str(path), "tcp port 443"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # tcpdump is listening
    return proc


def _stop_capture(proc: subprocess.Popen) -> None:
    time.sleep(1.2)  # libpcap hands over a block of packets at the latest after 1 s
    proc.send_signal(signal.SIGINT)
    proc.wait(10)


def _resets_to_client(pcap: Path) -> dict[int, int]:
    """Client port → RSTs it received from the server's address (IPv4 or IPv6)."""
    server = f"(ip.src == {SERVER} || ipv6.src == {SERVER6})"
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", f"tcp.flags.reset == 1 && {server}", "-T",
                          "fields", "-e", "tcp.dstport"], capture_output=True, text=True, check=True).stdout
    counts: dict[int, int] = {}
    for port in out.split():
        counts[int(port)] = counts.get(int(port), 0) + 1
    return counts


# --- a drop rule: the request never reaches the server, the connection ends with a reset ----------

CASES = [("http1.1", "1.3", SERVER), ("http2", "1.2", SERVER), ("http1.1", "1.2", SERVER), ("http2", "1.3", SERVER),
         ("http1.1", "1.3", SERVER6)]


def _harmless_then_blocked(lab: Lab, http: str, tls: str, tag: str, *, server: str = SERVER
                           ) -> subprocess.CompletedProcess:
    versions = ["--tlsv1.3"] if tls == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    host = f"[{server}]" if ":" in server else server
    return lab.curl("-g", f"--{http}", *versions, "-w", "%{url_effective} %{http_code} %{size_download} "
                    "%{num_connects} %{local_port}\\n", "-o", "/dev/null", f"https://{host}/harmless?{tag}", "-o",
                    "/dev/null", f"https://{host}{BLOCK}?{tag}")


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
    """HTTP/1.1 and HTTP/2 over TLS 1.3 and 1.2 (and HTTP/1.1 over TLS 1.3 on IPv6), one
    connection each: the harmless request is answered, the blocked one on the same
    connection is dropped before nginx and the client gets a reset.  Secrets from the key
    feed (the harvester on the server)."""
    pcap = lab.tmp / "client-drop.pcap"
    capture = _capture(lab.client, "c0", pcap)
    results = {}
    with lab.ips("drop-feed", "--hold-budget", "10") as ips:
        ips.wait_for("ips --inline: queue", 30)
        for http, tls, server in CASES:
            tag = f"{http}-tls{tls}-ipv{6 if ':' in server else 4}"
            results[tag] = _harmless_then_blocked(lab, http, tls, tag, server=server)
        time.sleep(0.5)
        assert ips.stop() == 0, ips.text()
    _stop_capture(capture)
    # what the drop rule matched was sent again (--verdict-retries, 2) and Suricata dropped
    # it again, as it drops the flow: a resend never lets a dropped request through
    resent = re.search(r"\((\d+) plaintext segments sent again\)", ips.text())
    assert resent and int(resent.group(1)) >= 2 * len(results), ips.text()
    resets = _resets_to_client(pcap)
    work = lab.tmp / "drop-feed"
    for tag, result in results.items():
        _assert_blocked(lab, result, tag, resets, jsonl(work / "ips.jsonl"), jsonl(work / "flows.jsonl"))
    eve = [json.loads(line) for line in lab.eve.read_text().splitlines()]
    drops = [e for e in eve if e.get("event_type") == "drop" or (e.get("event_type") == "alert" and
                                                                 e["alert"]["signature_id"] == 1915901)]
    assert drops, "Suricata logged no drop"
    flows = jsonl(work / "flows.jsonl")
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
    _assert_blocked(lab, result, "keylog", _resets_to_client(pcap), jsonl(work / "ips.jsonl"),
                    jsonl(work / "flows.jsonl"))


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
    ips_log, flows = jsonl(work / "ips.jsonl"), jsonl(work / "flows.jsonl")
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


# --- secrets present but wrong: the decrypt-error policy ----------------------------------------------


class _CorruptedKeyLog(threading.Thread):
    """Copies what the harvester appends to its key log into another key log, with the
    application traffic secrets corrupted (one bit flipped): the handshake decrypts, the
    application data does not (wrong_key)."""

    LABELS = ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")

    def __init__(self, source: Path, target: Path) -> None:
        super().__init__(daemon=True)
        self.source, self.target, self.stop = source, target, threading.Event()
        self.offset = source.stat().st_size if source.exists() else 0
        self.corrupted = 0
        target.write_text("")

    def run(self) -> None:
        pending = b""
        while not self.stop.is_set():
            if self.source.exists():
                with open(self.source, "rb") as handle:
                    handle.seek(self.offset)
                    data = handle.read()
                self.offset += len(data)
                pending += data
                *lines, pending = pending.split(b"\n")
                out = []
                for line in lines:
                    parts = line.decode().split()
                    if len(parts) == 3 and parts[0] in self.LABELS:
                        parts[2] = parts[2][:-1] + format(int(parts[2][-1], 16) ^ 1, "x")
                        self.corrupted += 1
                    out.append(" ".join(parts) + "\n")
                if out:
                    with open(self.target, "a") as handle:
                        handle.write("".join(out))
            time.sleep(0.02)


@pytest.mark.parametrize("policy", ["pass-flow", "drop-flow"])
def test_secrets_that_do_not_decrypt_follow_the_decrypt_error_policy(lab, policy):
    """A key log whose application secrets are wrong (the harvester's, one bit flipped):
    the records cannot be judged; pass-flow serves the request and marks the connection
    uninspected (wrong_key), drop-flow keeps it from nginx and resets; both logged and
    counted in Prometheus."""
    tag = f"wrongkey-{policy}"
    keylog = lab.tmp / f"{tag}.keylog"
    copier = _CorruptedKeyLog(lab.harvested_keylog, keylog)
    copier.start()
    port = 9814 if policy == "pass-flow" else 9815
    try:
        with lab.ips(tag, "--hold-budget", "10", "--decrypt-error-policy", policy, "--metrics", f"127.0.0.1:{port}",
                     keys=("--keylog", str(keylog))) as ips:
            ips.wait_for("ips --inline: queue", 30)
            result = lab.curl("--http1.1", "--tlsv1.3", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                              f"https://{SERVER}/harmless?{tag}", timeout=20)
            time.sleep(0.5)
            metrics = subprocess.run([*exec_in(lab.gateway), "curl", "-s", f"http://127.0.0.1:{port}/metrics"],
                                     capture_output=True, text=True, check=False).stdout
            assert ips.stop() == 0, ips.text()
    finally:
        copier.stop.set()
        copier.join(5)
    assert copier.corrupted >= 2, copier.corrupted
    work = lab.tmp / tag
    served = [a for a in lab.access() if a["uri"].endswith(tag)]
    ips_log, flows = jsonl(work / "ips.jsonl"), jsonl(work / "flows.jsonl")
    (line,) = [r for r in ips_log if r["event"] == "policy"]
    assert line["policy"] == f"decrypt:{policy}" and "wrong_key" in line["why"], line
    (flow,) = [f for f in flows if "ips" in f]
    assert flow["status"] == "wrong_key" and "wrong_key" in flow["ips"]["reason"], flow
    assert flow["ips"]["policies"][0].startswith(f"decrypt:{policy}"), flow
    assert f'tls_bridge_ips_inline_decrypt_failures_total 1.0' in metrics, metrics
    assert f'tls_bridge_ips_inline_policy_total{{policy="{policy}",what="decrypt"}} 1.0' in metrics, metrics
    if policy == "pass-flow":
        assert result.returncode == 0 and result.stdout.split() == ["200", str(len(b"harmless\n" * 2000))]
        assert [a["uri"] for a in served] == [f"/harmless?{tag}"]
        assert flow["ips"]["verdict"] == "uninspected" and "tls_bridge_ips_inline_fail_open_total 1.0" in metrics
    else:
        assert result.returncode in (16, 35, 55, 56, 92), (result.returncode, result.stderr)
        assert served == [], served
        assert flow["ips"]["verdict"] == "dropped" and "tls_bridge_ips_inline_fail_closed_total 1.0" in metrics
        assert any(r["event"] == "cut" and r["resets_sent"] == 2 for r in ips_log), ips_log


# --- overloaded: the kernel's queue full ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ["pass-flow", "drop-flow"])
def test_a_full_queue_follows_the_memcap_policy(lab, policy):
    """The bridge overloaded — here frozen (SIGSTOP) with the kernel's queue limited to 4
    packets, which other connections' SYNs fill: under pass-flow the kernel forwards what
    does not fit uninspected (the request is served while the bridge is frozen), under
    drop-flow it drops it (the request never reaches nginx; the kernel counts the drops,
    shown in Prometheus).  Once it runs again, the bridge goes on with what waited."""
    tag = f"full-{policy}"
    port = 9816 if policy == "pass-flow" else 9817
    fillers: list[subprocess.Popen] = []
    with lab.ips(tag, "--queue-maxlen", "4", "--memcap-policy", policy, "--hold-budget", "10", "--metrics",
                 f"127.0.0.1:{port}") as ips:
        ips.wait_for("ips --inline: queue", 30)
        os.kill(ips.proc.pid, signal.SIGSTOP)
        try:
            for i in range(4):
                fillers.append(subprocess.Popen([*exec_in(lab.client), "curl", "-sk", "--max-time", "8", "-o",
                                                 "/dev/null", f"https://{SERVER}/harmless?{tag}-fill{i}"],
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)  # their SYNs wait in the queue
            waiting = subprocess.run([*exec_in(lab.gateway), "cat", "/proc/net/netfilter/nfnetlink_queue"],
                                     capture_output=True, text=True, check=True).stdout
            result = lab.curl("--http1.1", "-o", "/dev/null", "-w", "%{http_code}", f"https://{SERVER}/harmless?{tag}",
                              timeout=4)
            served_while_frozen = [a["uri"] for a in lab.access() if a["uri"].endswith(f"?{tag}")]
        finally:
            os.kill(ips.proc.pid, signal.SIGCONT)
        for filler in fillers:
            filler.wait(30)  # (their own fate is not the point)
        time.sleep(0.5)
        metrics = subprocess.run([*exec_in(lab.gateway), "curl", "-s", f"http://127.0.0.1:{port}/metrics"],
                                 capture_output=True, text=True, check=False).stdout
        assert ips.stop() == 0, ips.text()
    (line,) = [line.split() for line in waiting.splitlines() if line.split()[0] == "13"]
    assert int(line[2]) == 4, waiting  # the queue was full
    dropped = float(re.search(r"^tls_bridge_ips_inline_queue_full_dropped_total (\S+)$", metrics, re.M).group(1))
    if policy == "pass-flow":
        assert result.returncode == 0 and result.stdout == "200", (result.returncode, result.stderr)
        assert served_while_frozen == [f"/harmless?{tag}"]
        assert dropped == 0, metrics
    else:
        assert result.returncode == 28, (result.returncode, result.stdout, result.stderr)  # no answer at all
        assert served_while_frozen == [] and [a for a in lab.access() if a["uri"].endswith(f"?{tag}")] == []
        assert dropped >= 1, metrics


# --- many connections at once: nothing lost, nothing released before its verdict --------------------


def _eve_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def _tshark_fields(pcap: Path, keylog: Path, display: str, *fields: str) -> list[list[str]]:
    # (Pure ACKs pass while a segment before them is held: tshark's sequence analysis would
    # call the held segment a retransmission and not dissect it, hence off.)
    out = subprocess.run(["tshark", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}", "-o",
                          "tcp.analyze_sequence_numbers:FALSE", "-Y", display, "-T", "fields",
                          *[x for f in fields for x in ("-e", f)]], capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines()]


CONNECTIONS, PER_CONNECTION = 200, 2


def test_concurrent_connections_lose_nothing_and_wait_for_their_verdicts(lab):
    """200 connections open at once (TLS 1.3 and 1.2, every handshake done before the
    first request; two requests each, in lockstep rounds, so all 200 are in flight
    together): every byte of every file arrives in order, nothing is cut or fails open,
    and no request reaches the server before Suricata judged it.

    Oracles independent of the bridge: the files on the server (SHA-256), nginx's access
    log (each request once, with the number of connections open when it was served), a
    capture on the server decrypted by tshark with the client's key log (every connection
    opened before the first request arrived, each request's arrival time), Suricata's
    eve (when it judged each request).  And the bridge's own release log: each release
    after the verdicts it depended on."""
    rng = __import__("random").Random(13)
    files = {}
    for i in range(CONNECTIONS * PER_CONNECTION):
        data = os.urandom(rng.randrange(1_000, 64_000))
        (lab.html / "files" / f"c{i}").write_bytes(data)
        files[f"c{i}"] = hashlib.sha256(data).hexdigest()
    downloads = lab.tmp / "downloads"
    downloads.mkdir()
    keylog = lab.tmp / "concurrent-client.keylog"
    server_pcap = lab.tmp / "server-concurrent.pcap"
    capture = _capture(lab.server, "s0", server_pcap)
    marks = len(lab.eve.read_text().splitlines())
    served_before = len(lab.access())
    with lab.ips("concurrent", "--hold-budget", "10", "--verdict-timeout", "5", "--log-releases", "--metrics",
                 "127.0.0.1:9813") as ips:
        ips.wait_for("ips --inline: queue", 30)
        status, clients = lab.concurrent_client(downloads, keylog, connections=CONNECTIONS,
                                                 per_connection=PER_CONNECTION, prefix="c")
        time.sleep(1.0)
        metrics = subprocess.run([*exec_in(lab.gateway), "curl", "-s", "http://127.0.0.1:9813/metrics"],
                                 capture_output=True, text=True, check=False).stdout
        assert ips.stop() == 0, ips.text()
    _stop_capture(capture)
    failed = [c for c in clients if c["error"]]
    # the first failure's own error first: the others only say that it broke the lockstep (BrokenBarrierError)
    failed.sort(key=lambda c: str(c["error"]).startswith("BrokenBarrierError"))
    # on failure, the IPS's own account of what it cut and why (its cut and policy lines)
    assert status == 0 and len(clients) == CONNECTIONS and not failed, (
        status, len(failed), failed[:3],
        [line for line in (lab.tmp / "concurrent" / "ips.jsonl").read_text().splitlines()
         if '"event": "cut"' in line or '"event": "policy"' in line][:12])
    assert {c["negotiated"] for c in clients} == {"TLSv1.3", "TLSv1.2"}
    # nothing lost, nothing reordered: the client's bytes are the server's files
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in downloads.iterdir()}
    assert got == files
    # the server saw each request once, while all the connections were open
    served = lab.access()[served_before:]
    assert sorted(a["uri"] for a in served) == sorted(f"/files/{name}" for name in files)
    assert min(int(a["active"]) for a in served) >= CONNECTIONS, sorted(int(a["active"]) for a in served)[:5]
    # the bridge: nothing cut, nothing failed open, counters that agree
    values = {name: float(value) for name, value in
              re.findall(r"^(tls_bridge_ips_inline_[a-z_]+(?:_total|_count)) ([0-9.e+]+)$", metrics, re.MULTILINE)}
    assert values["tls_bridge_ips_inline_held_total"] == values["tls_bridge_ips_inline_released_total"] > 0, values
    assert values["tls_bridge_ips_inline_hold_seconds_count"] == values["tls_bridge_ips_inline_held_total"]
    assert values["tls_bridge_ips_inline_dropped_total"] == values["tls_bridge_ips_inline_fail_open_total"] == 0
    assert values["tls_bridge_ips_inline_decrypt_failures_total"] == 0
    work = lab.tmp / "concurrent"
    log, flows = jsonl(work / "ips.jsonl"), jsonl(work / "flows.jsonl")
    assert not [r for r in log if r["event"] in ("cut", "policy")], [r for r in log if r["event"] != "release"][:5]
    releases = [r for r in log if r["event"] == "release"]
    judged = [r for r in releases if any(v["kind"] == "verdict" for v in r["verdicts"])]
    ports = {int(c["port"]) for c in clients}
    assert {int(r["client"].rsplit(":", 1)[1]) for r in judged} == ports, "a connection's records were not judged"
    for release in releases:  # each release after the verdicts that allowed it
        for verdict in release["verdicts"]:
            assert verdict["verdict"] == "passed" and verdict["at"] <= release["time"], release
    inline = [f for f in flows if "ips" in f and int(f["client"].rsplit(":", 1)[1]) in ports]
    assert len(inline) == CONNECTIONS and all(f["ips"]["verdict"] == "passed" for f in inline), inline[:3]
    assert all(f["status"] == "decrypted" for f in inline), [f for f in inline if f["status"] != "decrypted"][:3]
    assert sum(f["ips"]["held_packets"] for f in inline) == sum(f["ips"]["released_packets"] for f in inline)
    # the server's capture: all 200 opened before the first request arrived, each request
    # arrived after Suricata judged it (eve)
    syns = _tshark_fields(server_pcap, keylog, "tcp.flags.syn == 1 && tcp.flags.ack == 0", "frame.time_epoch",
                          "tcp.srcport")
    opened = {int(port): float(stamp) for stamp, port in syns if int(port) in ports}
    requests = _tshark_fields(server_pcap, keylog, "http.request", "frame.time_epoch", "tcp.srcport",
                              "http.request.uri")
    arrived: dict[tuple[int, str], float] = {}
    for stamp, port, uri in requests:
        arrived.setdefault((int(port), uri), float(stamp))
    assert len(opened) == CONNECTIONS and len(arrived) == CONNECTIONS * PER_CONNECTION, (len(opened), len(arrived))
    assert max(opened.values()) < min(arrived.values())  # truly concurrent
    judged_at = {}
    for line in lab.eve.read_text().splitlines()[marks:]:
        event = json.loads(line)
        if event.get("event_type") == "alert" and event["alert"]["signature_id"] == 9913002:
            judged_at[(event["src_port"], event["http"]["url"])] = _eve_time(event["timestamp"])
    assert set(arrived) <= set(judged_at), sorted(set(arrived) - set(judged_at))[:3]
    early = [(key, judged_at[key] - at) for key, at in arrived.items() if at < judged_at[key]]
    assert not early, f"requests that reached the server before Suricata judged them: {early[:3]}"


def test_what_is_not_tls_passes_untouched(lab):
    """Plain HTTP to the queued port (nginx answers it with a 400): nothing is held, the
    flow log says unmonitored, not TLS."""
    with lab.ips("not-tls") as ips:
        ips.wait_for("ips --inline: queue", 30)
        result = lab.curl("-o", "/dev/null", "-w", "%{http_code} %{local_port}", f"http://{SERVER}:443/plain",
                          timeout=20)
        time.sleep(0.5)
        assert ips.stop() == 0, ips.text()
    assert result.returncode == 0 and result.stdout.split()[0] == "400", (result.stdout, result.stderr)
    work = lab.tmp / "not-tls"
    flows = [f for f in jsonl(work / "flows.jsonl") if f["client"].endswith(":" + result.stdout.split()[1])]
    assert [(f["ips"]["verdict"], f["ips"]["reason"], f["ips"]["held_packets"]) for f in flows] == [
        ("unmonitored", "not TLS", 0)], flows
    assert "0 held" in ips.text(), ips.text()
