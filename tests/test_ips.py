"""The IPS end to end, in network namespaces: a client, a gateway that forwards
with nftables and mirrors with ``tc ... mirred`` to a sensor, a TLS server.  The
sensor decrypts the mirror and injects cleartext for a real Suricata; a request
whose URL matches a block rule gets the original encrypted connection cut — the
client sees a reset — while a harmless connection through the same gateway is
untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bridge.ips.connections import ConnectionTable
from bridge.ips.eve import block_request
from bridge.ips.reset import reset_answering, reset_packets
from bridge.engine.packets import ACK, PSH, RST, SYN, TcpSegment
from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess
from tests.support.suricata import LiveSuricata

RULES = Path(__file__).resolve().parents[1] / "suricata-rules" / "tls-bridge.rules"


# --- pure parts -------------------------------------------------------------------------------------


def _eve(**alert) -> str:
    return json.dumps({"timestamp": "2026-11-23T10:00:00.250000+0000", "event_type": "alert", "proto": "TCP",
                       "src_ip": "10.0.0.2", "src_port": 51000, "dest_ip": "10.0.1.2", "dest_port": 443,
                       "alert": {"signature_id": 1915900, "signature": "block me", **alert}})


def test_which_alerts_block():
    tagged = block_request(_eve(metadata={"tls_bridge_action": ["block"]}))
    assert tagged and tagged.key == ("10.0.0.2", 51000, "10.0.1.2", 443) and tagged.alerted_at > 1.7e9
    assert block_request(_eve(action="blocked")) is not None
    assert block_request(_eve(metadata={"tls_bridge_action": ["alert"]})) is None
    assert block_request(_eve(action="allowed")) is None
    assert block_request("not json") is None and block_request('{"event_type": "http"}') is None
    mapped = block_request(_eve(action="blocked"), port_map={443: 8443})
    assert mapped.dport == 8443


def test_resets_carry_the_sequence_numbers_each_side_expects():
    table = ConnectionTable()
    client, server = bytes([10, 0, 0, 2]), bytes([10, 0, 1, 2])

    def seg(src, sport, dst, dport, seq, flags, payload=b""):  # type: ignore[no-untyped-def]
        return TcpSegment(0, 4, src, dst, sport, dport, seq, 0, flags, 0, payload)

    table.observe(seg(client, 51000, server, 443, 1000, SYN))
    table.observe(seg(server, 443, client, 51000, 5000, SYN | ACK))
    table.observe(seg(client, 51000, server, 443, 1001, ACK | PSH, b"x" * 100))
    table.observe(seg(server, 443, client, 51000, 5001, ACK | PSH, b"y" * 300))
    table.observe(seg(client, 51000, server, 443, 1001, ACK | PSH, b"x" * 100))  # a retransmission: no step back
    packets = dict(reset_packets(table.get(("10.0.0.2", 51000), ("10.0.1.2", 443))))
    to_client, to_server = packets["10.0.0.2"], packets["10.0.1.2"]
    assert int.from_bytes(to_client[24:28], "big") == 5301  # the server's next byte: what the client expects
    assert int.from_bytes(to_server[24:28], "big") == 1101
    assert to_client[33] & 0x04 and to_server[33] & 0x04  # RST
    from bridge.reinject.synthetic import internet_checksum

    assert internet_checksum(to_client[:20]) == 0  # the IPv4 header checksum verifies


def test_a_segment_of_a_cut_connection_is_answered_with_the_reset_its_sender_expects():
    client, server = bytes([10, 0, 0, 2]), bytes([10, 0, 1, 2])
    challenge = TcpSegment(0, 4, client, server, 51000, 443, 1101, 5301, ACK, 500, b"")
    destination, packet = reset_answering(challenge)
    assert destination == "10.0.0.2" and packet[12:16] == server and packet[16:20] == client
    assert packet[20:24] == bytes.fromhex("01bbc738")  # from 443 to 51000
    assert int.from_bytes(packet[24:28], "big") == 5301  # what the client acknowledged: what it expects
    assert int.from_bytes(packet[28:32], "big") == 1101 and packet[33] & RST
    assert reset_answering(TcpSegment(0, 4, client, server, 51000, 443, 1101, 5301, ACK, 500, b"ab"))[1][28:32] == \
        (1103).to_bytes(4, "big")
    for flags in (RST | ACK, SYN | ACK, PSH):  # a RST is never answered; a SYN or no ACK names nothing
        assert reset_answering(TcpSegment(0, 4, client, server, 51000, 443, 1101, 5301, flags, 500, b"")) is None


def test_a_cut_waits_for_the_watch_to_have_seen_what_passed_before_the_block():
    """The second RSTs are computed once every sniffer saw the frames the kernel took
    before the block (a frame stamped later, or idle since); a sniffer that never
    catches up is given up on (the cut line says so), not waited for forever."""
    import io
    import types

    from bridge.ips.service import CATCH_UP_SECONDS, Blocker

    behind = types.SimpleNamespace(seen_until_ns=0)
    blocker = Blocker(ConnectionTable(), threading.Lock(), None, resets=False, log=io.StringIO(),
                      sniffers=[types.SimpleNamespace(seen_until_ns=time.time_ns() + 10**9), behind])
    since = time.time_ns()
    threading.Timer(0.05, lambda: setattr(behind, "seen_until_ns", since + 1)).start()
    assert blocker._catch_up(since) is True and behind.seen_until_ns == since + 1
    started = time.monotonic()
    assert blocker._catch_up(time.time_ns()) is False
    assert time.monotonic() - started >= CATCH_UP_SECONDS


@pytest.mark.real
def test_a_reset_that_missed_is_corrected_by_the_challenge_ack_it_draws():
    """The kernel as the oracle (loopback): a RST inside the client's window but not at
    its next sequence number does not reset it (RFC 5961 3.2) and draws a challenge ACK;
    the chase answers that ACK with the exact RST, and the client's socket is reset."""
    import socket

    from bridge.capture.afpacket import AfPacketCapture
    from bridge.engine.packets import classify
    from bridge.ips.reset import _tcp_reset
    from bridge.ips.service import Chase, ResetSender

    stop = threading.Event()
    capture = AfPacketCapture("lo", stop_event=stop, idle_marker=True, poll_interval=0.02)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server, _ = listener.accept()
    client_port = client.getsockname()[1]
    server.sendall(b"y" * 300)
    assert client.recv(300, socket.MSG_WAITALL) == b"y" * 300
    table, segments = ConnectionTable(), []
    deadline = time.monotonic() + 10

    def sniff(until) -> None:  # type: ignore[no-untyped-def]
        for frame in capture:
            if frame is not None:
                segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
                if isinstance(segment, TcpSegment) and port in (segment.sport, segment.dport) and \
                        client_port in (segment.sport, segment.dport):
                    table.observe(segment)
                    segments.append(segment)
            if until() or time.monotonic() > deadline:
                return

    def sides():  # type: ignore[no-untyped-def]
        connection = table.get(("127.0.0.1", client_port), ("127.0.0.1", port))
        return {} if connection is None else connection.sides

    def acked() -> bool:  # the client acknowledged all 300 bytes (lo shows each packet twice)
        server_next = sides().get(("127.0.0.1", port))
        return server_next is not None and any(
            s.sport == client_port and s.ack == server_next.next_seq for s in segments) and any(
            s.payload for s in segments)

    sniff(acked)
    exact = sides()[("127.0.0.1", port)].next_seq
    raw = ResetSender()
    seen = len(segments)
    missed, _ = _tcp_reset(("127.0.0.1", port), ("127.0.0.1", client_port), (exact + 100) & 0xFFFFFFFF, 0)
    raw.send("127.0.0.1", missed)
    sniff(lambda: any(s.sport == client_port and s.flags & ACK and not s.flags & RST for s in segments[seen:]))
    challenge = next(s for s in segments[seen:] if s.sport == client_port and not s.flags & RST)
    assert challenge.ack == exact  # the client names what it expects
    client.setblocking(False)
    with pytest.raises(BlockingIOError):  # the RST that missed did not reset it
        client.recv(1)
    chase = Chase(raw)
    chase.add(ConnectionTable.key(("127.0.0.1", client_port), ("127.0.0.1", port)))
    chase.answer(challenge)
    assert chase.answered == 1
    client.setblocking(True)
    client.settimeout(5)
    with pytest.raises(ConnectionResetError):
        client.recv(1)
    stop.set()
    for sock in (client, server, listener):
        sock.close()


# --- the lab ----------------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


class Topology:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.client, self.gateway, self.server, self.sensor = (f"tlsb-ips-{n}-{tag}" for n in "cgvs")
        self.names = [self.client, self.gateway, self.server, self.sensor]

    def __enter__(self) -> Topology:
        for ns in self.names:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.client, "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", self.gateway)
        _ip("-n", self.server, "link", "add", "s0", "type", "veth", "peer", "name", "g1", "netns", self.gateway)
        _ip("-n", self.gateway, "link", "add", "m0", "type", "veth", "peer", "name", "m1", "netns", self.sensor)
        _ip("-n", self.sensor, "link", "add", "tls0", "type", "veth", "peer", "name", "tls0peer")
        for ns, link, address in ((self.client, "c0", "10.77.1.2/24"), (self.gateway, "g0", "10.77.1.1/24"),
                                  (self.gateway, "g1", "10.77.2.1/24"), (self.server, "s0", "10.77.2.2/24")):
            _ip("-n", ns, "addr", "add", address, "dev", link)
        for ns, link in ((self.client, "c0"), (self.gateway, "g0"), (self.gateway, "g1"), (self.gateway, "m0"),
                         (self.server, "s0"), (self.sensor, "m1"), (self.sensor, "tls0"), (self.sensor, "tls0peer")):
            _ip("-n", ns, "link", "set", link, "up")
        _ip("-n", self.client, "route", "add", "default", "via", "10.77.1.1")
        _ip("-n", self.server, "route", "add", "default", "via", "10.77.2.1")
        subprocess.run(["ip", "netns", "exec", self.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        # mirror everything crossing g0, both ways, to the sensor (a u32 match-all: this
        # kernel has no cls_matchall)
        match_all = ["protocol", "all", "u32", "match", "u32", "0", "0"]
        for command in (["qdisc", "add", "dev", "g0", "clsact"],
                        ["filter", "add", "dev", "g0", "ingress", *match_all, "action", "mirred", "egress", "mirror",
                         "dev", "m0"],
                        ["filter", "add", "dev", "g0", "egress", *match_all, "action", "mirred", "egress", "mirror",
                         "dev", "m0"]):
            subprocess.run(["ip", "netns", "exec", self.gateway, "tc", *command], check=True)
        return self

    def exec(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def __exit__(self, *exc: object) -> None:
        for ns in self.names:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _nginx(topology: Topology, tmp: Path, certs: tlslab.CertChain) -> subprocess.Popen:
    prefix = tmp / "nginx"
    for directory in ("logs", "html", "tmp"):
        (prefix / directory).mkdir(parents=True, exist_ok=True)
    big = os.urandom(3 << 20)
    (prefix / "html" / "tls-bridge-block-marker").write_bytes(big)
    (prefix / "html" / "harmless").write_bytes(big)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""daemon off; master_process off; user root; pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log; events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
server {{ listen 10.77.2.2:443 ssl; ssl_certificate {certs.chain}; ssl_certificate_key {certs.key};
ssl_protocols TLSv1.2 TLSv1.3; root {prefix}/html; limit_rate 300k; }} }}
""")
    server = subprocess.Popen([*topology.exec(topology.server), "nginx", "-p", str(prefix), "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60  # listening, however loaded the host (not a fixed second)
    while time.monotonic() < deadline and server.poll() is None and "10.77.2.2:443" not in subprocess.run(
            [*topology.exec(topology.server), "ss", "-Htln"], capture_output=True, text=True).stdout:
        time.sleep(0.1)
    return server


def _wait_for_line(path: Path, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (path.exists() and needle in path.read_text()):
        time.sleep(0.1)


def _curl(topology: Topology, path: str, keylog: Path, results: dict, name: str) -> None:
    started = time.monotonic()
    result = subprocess.run([*topology.exec(topology.client), "curl", "-sk", "-o", "/dev/null", "--max-time", "40",
                             "-w", "%{size_download}", f"https://10.77.2.2{path}"],
                            capture_output=True, text=True, env=dict(os.environ, SSLKEYLOGFILE=str(keylog)))
    results[name] = (result.returncode, result.stdout, result.stderr, time.monotonic() - started)


@pytest.mark.real
def test_a_blocked_request_cuts_its_encrypted_connection_and_spares_the_others(tmp_path, tlslab_tools, tls_certs):
    tlslab.require_tools("nginx", "curl", "tc", "nft", "suricata")
    keylog, flows, eve_dir = tmp_path / "client.keylog", tmp_path / "flows.jsonl", tmp_path / "suricata"
    blocked_log = tmp_path / "blocked.jsonl"
    with Topology() as topology:
        server = _nginx(topology, tmp_path, tls_certs)
        with LiveSuricata("tls0peer", netns=topology.sensor, rules=[RULES], workdir=eve_dir) as suricata, \
                BridgeProcess(["decrypt", "-i", "m1", "--keylog", str(keylog), "--inject", "tls0", "--flows", str(flows)],
                              tmp_path / "decrypt.err", prefix=topology.exec(topology.sensor)) as decrypt, \
                BridgeProcess(["ips", "--eve", str(suricata.eve_path), "--interface", "g0", "--flows", str(flows),
                               "--log", str(blocked_log)], tmp_path / "ips.err",
                              prefix=topology.exec(topology.gateway)) as ips:
            decrypt.wait_for("capturing on m1")
            ips.wait_for("ips: following")
            results: dict = {}
            harmless = threading.Thread(target=_curl, args=(topology, "/harmless", keylog, results, "harmless"))
            harmless.start()
            time.sleep(0.5)
            _curl(topology, "/tls-bridge-block-marker", keylog, results, "blocked")
            harmless.join(60)
            # the cut connection's flow line (written when the mirror shows its end) read by the IPS
            _wait_for_line(blocked_log, '"cut_connection_logged"')
            nft_rules = subprocess.run([*topology.exec(topology.gateway), "nft", "list", "table", "inet", "tls_bridge"],
                                       capture_output=True, text=True).stdout
            ips.stop()
            decrypt.stop()
            eve = suricata.stop()
        server.kill()
    code, size, error, seconds = results["blocked"]
    assert code in (56, 35, 16, 92, 7, 28) and int(size or 0) < 3 << 20, results  # reset, not completed
    assert code != 28, f"the connection was not cut; the client timed out: {results}"
    assert results["harmless"][0] == 0 and int(results["harmless"][1]) == 3 << 20, results  # untouched
    assert any(a["alert"]["signature_id"] == 1915900 for a in eve.alerts()), eve.summary()
    cuts = [json.loads(line) for line in blocked_log.read_text().splitlines()]
    cut = next(c for c in cuts if c["event"] == "cut")
    assert cut["resets_sent"] == 2 and cut["nft"] and cut["alert_to_cut_ms"] is not None, cuts
    assert "@blocked4" in nft_rules and "10.77.2.2 . 443" in nft_rules, nft_rules
    logged = [c for c in cuts if c["event"] == "cut_connection_logged"]
    assert logged and logged[0]["tls_version"] in ("TLSv1.2", "TLSv1.3"), cuts
    print(f"alert to cut: {cut['alert_to_cut_ms']} ms; the blocked transfer ended after {seconds:.2f} s", file=sys.stderr)


# --- eve sources: the file Suricata appends to, the unix socket it writes to ---------------------------


def test_eve_lines_are_bounded_and_count_an_oversized_record():
    from bridge.ips.eve_source import EveLines

    lines = EveLines(max_line=64)
    assert lines.feed(b'{"a": 1}\n{"b"') == ['{"a": 1}'] and lines.feed(b": 2}\n") == ['{"b": 2}']
    assert lines.feed(b"x" * 100) == [] and lines.oversized == 1  # dropped, not buffered
    assert lines.feed(b"y" * 100) == [] and lines.oversized == 2
    assert lines.feed(b'tail of it\n{"c": 3}\n') == ['{"c": 3}']  # the rest of the long record is skipped too


def test_the_eve_file_is_followed_across_rotation(tmp_path):
    from bridge.ips.eve_source import follow_file

    eve, stop, seen = tmp_path / "eve.json", threading.Event(), []
    eve.write_text('{"old": 1}\n')

    def collect() -> None:
        for line in follow_file(str(eve), stop, from_start=False, poll_interval=0.005):
            seen.append(json.loads(line))

    reader = threading.Thread(target=collect)
    reader.start()
    try:
        time.sleep(0.2)
        with open(eve, "a") as handle:
            handle.write('{"n": 1}\n{"n"')
        time.sleep(0.1)
        with open(eve, "a") as handle:
            handle.write(': 2}\n')
        time.sleep(0.1)
        eve.rename(tmp_path / "eve.json.1")  # logrotate, then Suricata reopens (SIGHUP) a new file
        eve.write_text('{"n": 3}\n')
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        reader.join(5)
    assert seen == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_an_existing_file_is_never_replaced_by_the_eve_socket(tmp_path):
    from bridge.ips.eve_source import EveSourceError, listen_unix

    precious = tmp_path / "eve.json"
    precious.write_text("keep me\n")
    with pytest.raises(EveSourceError, match="not a socket"):
        next(listen_unix(str(precious), threading.Event()))
    assert precious.read_text() == "keep me\n"


@pytest.mark.parametrize("kind", ["stream", "dgram"])
def test_real_suricata_alerts_over_an_eve_unix_socket_cut_the_connection(tmp_path, kind):
    """Suricata 7 with ``filetype: unix_<kind>`` writes to the socket ``tls-bridge ips``
    listens on; the block rule's alert becomes a cut (resets and nftables off: the
    alert-to-verdict path only, the lab test above covers the cut itself)."""
    from tests.support import suricata as S
    from tests.test_suricata_side import CLIENT, SERVER, build_http_pcap

    workdir = tmp_path / "suricata"
    workdir.mkdir()
    pcap = build_http_pcap(tmp_path / "decrypted.pcap")
    sock, log = tmp_path / "eve.sock", tmp_path / "cuts.jsonl"
    config = S.minimal_config(workdir)
    text = config.read_text().replace("filetype: regular", f"filetype: unix_{kind}")
    config.write_text(text.replace("filename: eve.json", f"filename: {sock}"))
    rules = S.combine_rules([RULES], S.DEFAULT_EVENT_RULES, workdir / "combined.rules")
    with BridgeProcess(["ips", "--eve-socket", str(sock), "--eve-socket-type", kind, "--no-nft", "--no-reset",
                        "--log", str(log)], tmp_path / "ips.log") as ips:
        ips.wait_for("following the eve socket")
        subprocess.run([S.require_suricata(), "-r", str(pcap), "-k", "all", "--runmode", "single",
                        "--init-errors-fatal", "-l", str(workdir), "-S", str(rules), "-c", str(config)],
                       check=True, capture_output=True, timeout=120)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.05)
        assert ips.stop() == 0, ips.text()
    cuts = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["event"], c["signature_id"], c["src"], c["dst"]) for c in cuts] == [
        ("cut", 1915900, f"{CLIENT}:40002", f"{SERVER}:443")], ips.text()
    assert "1 blocking alerts, 1 connections cut" in ips.text()
    assert not sock.exists()  # removed on exit


# --- which rules block: drop and reject rules too, as real Suricata logs them in IDS mode ----------

_ACTION_RULES = (
    'drop http any any -> any any (msg:"drop it"; http.uri; content:"/tls-bridge-block-marker"; sid:9000001; rev:1;)\n'
    'reject http any any -> any any (msg:"reject it"; http.uri; content:"/tls-bridge-block-marker"; sid:9000002; rev:1;)\n'
    'alert http any any -> any any (msg:"only alert"; http.uri; content:"/tls-bridge-block-marker"; sid:9000003; rev:1;)\n'
    '# drop http any any -> any any (msg:"disabled"; sid:9000004; rev:1;)\n'
)


def _suricata_alerts(tmp_path: Path, *, rule_text: bool) -> list[str]:
    from tests.support import suricata as S
    from tests.test_suricata_side import build_http_pcap

    workdir = tmp_path / ("with-rule" if rule_text else "plain")
    workdir.mkdir()
    rules = workdir / "actions.rules"
    rules.write_text(_ACTION_RULES)
    config = S.minimal_config(workdir)
    if rule_text:
        text = config.read_text().replace(
            "        - alert:\n            metadata: yes\n",
            "        - alert:\n            metadata:\n              rule:\n                raw: yes\n"
            "                metadata: yes\n")
        assert "raw: yes" in text
        config.write_text(text)
    subprocess.run([S.require_suricata(), "-r", str(build_http_pcap(workdir / "decrypted.pcap")), "-k", "all",
                    "--runmode", "single", "--init-errors-fatal", "-l", str(workdir), "-S", str(rules),
                    "-c", str(config)], check=True, capture_output=True, timeout=120)
    return [line for line in (workdir / "eve.json").read_text().splitlines() if '"event_type":"alert"' in line]


def test_drop_and_reject_rules_block_in_ids_mode_from_the_rule_text(tmp_path):
    lines = _suricata_alerts(tmp_path, rule_text=True)
    actions = {json.loads(line)["alert"]["signature_id"]: json.loads(line)["alert"]["action"] for line in lines}
    assert actions == {9000001: "allowed", 9000002: "blocked", 9000003: "allowed"}  # why the rule text is needed
    blocked = {r.signature_id: r.reasons for line in lines if (r := block_request(line)) is not None}
    assert set(blocked) == {9000001, 9000002}
    assert "drop rule" in blocked[9000001] and "reject rule" in blocked[9000002]


def test_drop_and_reject_rules_block_from_the_rule_files(tmp_path):
    from bridge.ips.eve import blocking_rules

    lines = _suricata_alerts(tmp_path, rule_text=False)
    assert not any('"rule"' in line for line in lines)
    assert blocking_rules(_ACTION_RULES) == {(1, 9000001), (1, 9000002)}
    unaided = {r.signature_id for line in lines if (r := block_request(line)) is not None}
    assert unaided == {9000002}  # reject shows as blocked; drop does not
    informed = {r.signature_id for line in lines
                if (r := block_request(line, blocking=blocking_rules(_ACTION_RULES))) is not None}
    assert informed == {9000001, 9000002}


def test_garbage_eve_lines_are_ignored():
    for line in ['{"event_type": "alert", "proto": "TCP", "alert": "x"}',
                 '{"event_type": "alert", "proto": "TCP", "alert": {"metadata": [1], "signature_id": "abc"}}',
                 '{"event_type": "alert", "proto": "TCP", "src_ip": "nope", "alert": {"action": "blocked"}}',
                 "[1, 2]", "\x00\xff", ""]:
        assert block_request(line) is None
