"""Re-injection proven with real, unmodified Suricata 7 and tshark: real nginx/curl
TLS captures → ``tls-bridge decrypt -w`` (offline) or ``--inject`` (live, veth)
→ Suricata sees the exact HTTP requests that were sent inside TLS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.capture.frames import LINKTYPE_ETHERNET
from bridge.capture.pcapfile import read_capture
from bridge.capture.pcapwriter import PcapWriter
from bridge.engine.packets import decode_tcp
from tests.support import suricata as S
from tests.support import tlslab
from tests.support.decrypt import decrypt_cli as _decrypt

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "suricata-rules" / "tls-bridge.rules"
SID_MARKER, SID_CREDENTIALS = 1915000, 1915100
URLS = ("/index.html", "/tls-bridge-test-marker?password=hunter2")
FILES = {"/index.html": b"<html>shop</html>\n", "/tls-bridge-test-marker": b"marker\n"}


def _tshark(pcap: Path, *args: str) -> list[str]:
    result = subprocess.run(["tshark", "-r", str(pcap), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def _assert_suricata_saw(eve: S.EveLog, records: list[dict]) -> None:
    requests = [r for r in eve.http_requests() if r.method]
    assert sorted(r.url for r in requests) == sorted(URLS), eve.summary()
    assert {r.hostname for r in requests} == {"server.test"}, eve.summary()
    assert all(r.status == 200 for r in requests), eve.summary()
    assert len(eve.alerts(SID_MARKER)) == 1 and len(eve.alerts(SID_CREDENTIALS)) == 1, eve.summary()
    assert eve.events("tls") == [], "ClientHello bytes leaked into a synthetic flow"
    assert eve.stream_anomalies() == [], eve.summary()
    # Each alert maps back to the original encrypted connection through the flow log.
    synthetic = {(r["synthetic"]["client"], r["synthetic"]["server"]): r for r in records}
    for alert in eve.alerts(SID_MARKER):
        key = (f"{alert['src_ip']}:{alert['src_port']}", f"{alert['dest_ip']}:{alert['dest_port']}")
        original = synthetic[key]
        assert original["status"] == "decrypted" and original["sni"] == "server.test"


@pytest.mark.parametrize(
    "tls,http2", [("1.3", False), ("1.3", True), ("1.2", False), ("1.2", True)], ids=["1.3-h1", "1.3-h2", "1.2-h1", "1.2-h2"]
)
def test_offline_suricata_sees_inside_tls(tmp_path, nginx_curl_tools, tls_certs, tls, http2):
    run = tlslab.run_curl_nginx(tmp_path, certs=tls_certs, tls=tls, http2=http2, urls=URLS, files=FILES)
    out = tmp_path / "synthetic.pcap"
    records = _decrypt(run.pcap, run.keylog, tmp_path, "-w", str(out))
    assert [r["status"] for r in records] == ["decrypted"]
    assert records[0]["synthetic"]["server"] == f"127.0.0.1:{run.port}"
    eve = S.run_offline(out, rules=[RULES], workdir=tmp_path / "suricata")
    _assert_suricata_saw(eve, records)
    assert set(eve.app_protos().values()) == {"http2" if http2 else "http"}
    assert eve.counter("decoder.invalid") == 0 and eve.counter("tcp.invalid_checksum") == 0
    # tshark, independently: the same requests, and nothing its TCP analysis objects to.
    decode = ["-d", f"tcp.port=={run.port},{'http2' if http2 else 'http'}"]
    field = "http2.request.full_uri" if http2 else "http.request.uri"
    uris = _tshark(out, *decode, "-Y", "http.request || http2.type == 1", "-T", "fields", "-e", field)
    assert sorted(u.removeprefix(f"https://server.test:{run.port}") for u in uris) == sorted(URLS)
    assert _tshark(out, "-o", "tcp.check_checksum:TRUE", "-Y", "tcp.analysis.flags || tcp.checksum.status == 0") == []
    # Only application data: no TLS record header or ClientHello byte pattern in any payload.
    payloads = b"".join(s.payload for f in read_capture(out) if (s := decode_tcp(f.linktype, f.data, 0)))
    assert b"\x16\x03\x01" not in payloads and b"\x17\x03\x03" not in payloads


def test_live_injection_into_suricata_on_a_veth(tmp_path, nginx_curl_tools, tls_certs):
    run = tlslab.run_curl_nginx(tmp_path, certs=tls_certs, tls="1.3", urls=URLS, files=FILES)
    with tlslab.Netns() as ns:
        ip = tlslab.tool("ip")
        for cmd in (
            [ip, "-n", ns.name, "link", "add", "tls0", "type", "veth", "peer", "name", "tls0-peer"],
            [ip, "-n", ns.name, "link", "set", "tls0", "up"],
            [ip, "-n", ns.name, "link", "set", "tls0-peer", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        live = S.LiveSuricata("tls0", netns=ns.name, rules=[RULES], workdir=tmp_path / "live")
        with live:
            flows = tmp_path / "flows.jsonl"
            bridge = ns.run(
                [sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(run.pcap), "--keylog", str(run.keylog),
                 "--flows", str(flows), "--inject", "tls0-peer"],
                capture_output=True, text=True, timeout=120, check=False,
            )
            assert bridge.returncode == 0, bridge.stderr
            assert "frames written" in bridge.stderr and "dropped" not in bridge.stderr
            live.wait_for(lambda e: len([r for r in e.http_requests() if r.method]) >= 2, timeout=20)
        eve = live.eve
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    assert eve is not None
    _assert_suricata_saw(eve, records)
    assert all(f.get("in_iface") == "tls0" for f in eve.flows())


def _rewrite(source: Path, dest: Path, keep) -> None:
    """Copy a capture, letting ``keep(index, segment)`` drop or alter segments."""
    with PcapWriter(dest, LINKTYPE_ETHERNET) as writer:
        for index, frame in enumerate(read_capture(source)):
            segment = decode_tcp(frame.linktype, frame.data, frame.timestamp_ns)
            if segment is None or keep(index, segment):
                writer.write(frame.timestamp_ns, frame.data)


def _server_data_segments(run: tlslab.TlsRun) -> dict[int, bytes]:
    """Frame index → payload of the server's data segments."""
    out = {}
    for index, frame in enumerate(read_capture(run.pcap)):
        segment = decode_tcp(frame.linktype, frame.data, 0)
        if segment is not None and segment.payload and segment.sport == run.port:
            out[index] = segment.payload
    return out


def test_bad_connections_keep_the_output_valid(tmp_path, nginx_curl_tools, tls_certs):
    files = {"/index.html": b"<html>ok</html>\n", "/big.bin": bytes(range(256)) * 400}
    runs = [
        tlslab.run_curl_nginx(tmp_path / name, certs=tls_certs, tls="1.3", files=files, urls=("/big.bin",), name=name)
        for name in ("gap", "cut", "wrong", "good")
    ]
    gap_run, cut_run, wrong_run, good_run = runs
    gap_idx, cut_idx = _server_data_segments(gap_run), _server_data_segments(cut_run)
    merged = tmp_path / "merged.pcap"
    middle = list(gap_idx)[len(gap_idx) // 2]
    # cut the capture before a server segment that does not start a record: mid-record
    cut_at = next(i for i in list(cut_idx)[len(cut_idx) // 2:] if not cut_idx[i].startswith(b"\x17\x03\x03"))
    parts = [
        (gap_run.pcap, lambda i, s: i != middle),
        (cut_run.pcap, lambda i, s: i < cut_at),
        (wrong_run.pcap, lambda i, s: True),
        (good_run.pcap, lambda i, s: True),
    ]
    with PcapWriter(merged, LINKTYPE_ETHERNET) as writer:
        for source, keep in parts:
            single = tmp_path / f"{source.stem}.part.pcap"
            _rewrite(source, single, keep)
            for frame in read_capture(single):
                writer.write(frame.timestamp_ns, frame.data)
    keylog = tmp_path / "keys.log"
    wrong_lines = []
    for line in wrong_run.keylog.read_text().splitlines():
        label, random_hex, secret = line.split()
        wrong_lines.append(f"{label} {random_hex} {'00' * (len(secret) // 2)}")
    keylog.write_text("".join(r.keylog.read_text() for r in (gap_run, cut_run, good_run)) + "\n".join(wrong_lines) + "\n")
    out = tmp_path / "synthetic.pcap"
    records = _decrypt(merged, keylog, tmp_path, "-w", str(out))
    statuses = sorted(r["status"] for r in records)
    assert statuses == ["decrypted", "gap", "partial", "wrong_key"], [(r["status"], r["reason"]) for r in records]
    wrong = next(r for r in records if r["status"] == "wrong_key")
    assert wrong["synthetic"] is None and "wrong key" in wrong["reason"]
    assert "missing" in next(r for r in records if r["status"] == "gap")["reason"]
    assert "inside a record" in next(r for r in records if r["status"] == "partial")["reason"]
    # Every emitted synthetic connection is well formed: tshark finds nothing to flag,
    # Suricata reports no stream anomaly, and no frame of the wrong-key flow exists.
    assert _tshark(out, "-o", "tcp.check_checksum:TRUE", "-Y", "tcp.analysis.flags || tcp.checksum.status == 0") == []
    eve = S.run_offline(out, rules=[RULES], workdir=tmp_path / "suricata")
    assert eve.stream_anomalies() == [], eve.summary()
    emitted = {r["synthetic"]["client"] for r in records if r["synthetic"]}
    assert len(emitted) == 3
    seen_clients = {f"{f['src_ip']}:{f['src_port']}" for f in eve.flows()}
    assert seen_clients == emitted


@pytest.mark.parametrize("tls", ["1.3", "1.2"])
def test_large_bodies_acknowledged_once_per_record(tmp_path, nginx_curl_tools, tls_certs, zeek, tls):
    """The synthetic peer acknowledges each plaintext event once (a delayed ACK over up to
    16 KiB of segments), not every segment: Suricata and Zeek still reassemble the whole
    body (eve http length, Zeek's response_body_len), with no stream event or weird."""
    from tests.support import zeek as Z

    body = bytes(range(256)) * 1600  # 409,600 bytes: 25 records, about 280 segments
    run = tlslab.run_curl_nginx(tmp_path, certs=tls_certs, tls=tls, urls=("/big.bin",), files={"/big.bin": body})
    out = tmp_path / "synthetic.pcap"
    records = _decrypt(run.pcap, run.keylog, tmp_path, "-w", str(out))
    assert [r["status"] for r in records] == ["decrypted"]
    frames = [decode_tcp(f.linktype, f.data, 0) for f in read_capture(out)]
    data = [s for s in frames if s and s.payload]
    acks = [s for s in frames if s and not s.payload and s.flags == 0x10]
    assert len(data) > 250 and len(acks) < len(data) / 4, (len(acks), len(data))  # far fewer ACKs than segments
    eve = S.run_offline(out, rules=[RULES], workdir=tmp_path / "suricata")
    [request] = eve.events("http")
    assert request["http"]["url"] == "/big.bin" and request["http"]["status"] == 200, eve.summary()
    assert request["http"]["length"] == len(body), request
    assert eve.stream_anomalies() == [] and eve.counter("tcp.reassembly_gap") == 0, eve.summary()
    Z.run(zeek, ["-C", "-r", str(out)], cwd=tmp_path)
    [http] = Z.read_log(tmp_path / "http.log")
    assert (http["uri"], http["status_code"], int(http["response_body_len"])) == ("/big.bin", "200", len(body)), http
    weird = tmp_path / "weird.log"
    assert not weird.exists() or "TCP" not in weird.read_text(), weird.read_text()
