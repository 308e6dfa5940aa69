"""The Suricata side: our rules, the deploy overlay, and what the REAL Suricata 7 sees.

The cleartext traffic here is built by hand with scapy (not by the bridge's
re-injector) exactly the way the re-injector must produce it: full handshake,
every data segment ACKed, FIN close, valid checksums, the marker MACs
02:00:00:00:00:01 (client side) / 02:00:00:00:00:02 (server side), and the
ORIGINAL port 443 -- Suricata must find HTTP on 443 by itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from tests.support import suricata as S
from tests.support import tlslab

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "suricata-rules" / "tls-bridge.rules"
RULES_README = ROOT / "suricata-rules" / "README.md"
OVERLAY = ROOT / "deploy" / "suricata" / "tls-bridge.yaml"

SID_BLOCK = range(1_915_000, 1_916_000)
SID_MARKER, SID_INFO, SID_CRED_URI, SID_BASIC_AUTH, SID_NESTED_TLS, SID_BLOCK_HOOK = (
    1915000, 1915001, 1915100, 1915101, 1915500, 1915900,
)  # fmt: skip

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLIENT, SERVER = "10.91.0.1", "10.91.0.2"
HOST = "app.example.test"


# ---------------------------------------------------------------------------
# cleartext TCP sessions, built by hand
# ---------------------------------------------------------------------------


class _Conn:
    """One synthetic TCP connection; append frames to ``out`` with increasing timestamps."""

    def __init__(self, out: list, sport: int, dport: int = 443, *, t0: float) -> None:
        self.out, self.sport, self.dport, self.t = out, sport, dport, t0
        self.cseq, self.sseq = 0x1000_0000 + sport, 0x7000_0000 + sport

    def _emit(self, from_client: bool, flags: str, payload: bytes = b"", **tcp) -> None:
        if from_client:
            eth = Ether(src=CLIENT_MAC, dst=SERVER_MAC) / IP(src=CLIENT, dst=SERVER, ttl=64)
            seg = TCP(
                sport=self.sport,
                dport=self.dport,
                seq=self.cseq,
                ack=self.sseq if "A" in flags else 0,
                flags=flags,
                window=64240,
                **tcp,
            )
        else:
            eth = Ether(src=SERVER_MAC, dst=CLIENT_MAC) / IP(src=SERVER, dst=CLIENT, ttl=64)
            seg = TCP(
                sport=self.dport, dport=self.sport, seq=self.sseq, ack=self.cseq, flags=flags, window=65160, **tcp
            )
        frame = Ether(bytes(eth / seg / payload))  # materialise lengths + checksums
        self.t += 0.001
        frame.time = self.t
        self.out.append(frame)
        advance = len(payload) + (1 if ("S" in flags or "F" in flags) else 0)
        if from_client:
            self.cseq = (self.cseq + advance) & 0xFFFFFFFF
        else:
            self.sseq = (self.sseq + advance) & 0xFFFFFFFF

    def handshake(self) -> None:
        self._emit(True, "S", options=[("MSS", 1460)])
        self._emit(False, "SA", options=[("MSS", 1460)])
        self._emit(True, "A")

    def exchange(self, request: bytes, response: bytes) -> None:
        self._emit(True, "PA", request)
        self._emit(False, "A")
        self._emit(False, "PA", response)
        self._emit(True, "A")

    def close(self) -> None:  # as bridge/reinject/synthetic.py closes: FIN|ACK, ACK, FIN|ACK, ACK
        self._emit(True, "FA")
        self._emit(False, "A")
        self._emit(False, "FA")
        self._emit(True, "A")


def _response(body: bytes = b"ok\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


MARKER_URL = "/tls-bridge-test-marker?password=x"


def build_http_pcap(path: Path) -> Path:
    """Two decrypted-looking HTTP/1.1 connections to port 443.

    A (40001): GET marker?password=x with Basic auth, then GET /index.html (keep-alive).
    B (40002): GET /tls-bridge-block-marker.
    """
    frames: list = []
    a = _Conn(frames, 40001, t0=1_763_800_000.0)
    a.handshake()
    a.exchange(
        f"GET {MARKER_URL} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: tls-bridge-test\r\n"
        "Authorization: Basic dXNlcjpwYXNz\r\nAccept: */*\r\n\r\n".encode(),
        _response(),
    )
    a.exchange(
        f"GET /index.html HTTP/1.1\r\nHost: {HOST}\r\nAccept: */*\r\n\r\n".encode(), _response(b"<html></html>\n")
    )
    a.close()
    b = _Conn(frames, 40002, t0=a.t + 0.01)
    b.handshake()
    b.exchange(f"GET /tls-bridge-block-marker HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), _response())
    b.close()
    wrpcap(str(path), frames, linktype=1)
    return path


def _assert_decrypted_http_facts(eve: S.EveLog) -> None:
    """What Suricata must have seen in build_http_pcap's traffic, offline or live."""
    info = eve.summary()
    reqs = eve.http_requests()
    flow_a = (CLIENT, 40001, SERVER, 443, "TCP")
    assert (HOST, MARKER_URL, "GET", flow_a) in [r[:4] for r in reqs], info
    assert {(r.url, r.status) for r in reqs} == {
        (MARKER_URL, 200),
        ("/index.html", 200),
        ("/tls-bridge-block-marker", 200),
    }, info

    assert len(eve.alerts(SID_MARKER)) == 1, info
    assert S.five_tuple(eve.alerts(SID_MARKER)[0]) == flow_a, info
    assert len(eve.alerts(SID_CRED_URI)) == 1, info
    assert len(eve.alerts(SID_BASIC_AUTH)) == 1, info
    assert len(eve.alerts(SID_BLOCK_HOOK)) == 1, info
    # once per flow, not once per request: 2 connections, 3 requests
    assert sorted(a["src_port"] for a in eve.alerts(SID_INFO)) == [40001, 40002], info
    assert eve.alerts(SID_NESTED_TLS) == [], info
    block = eve.alerts(SID_BLOCK_HOOK)[0]["alert"]
    assert block["action"] == "allowed" and block["metadata"]["tls_bridge_action"] == ["block"], block

    assert eve.stream_anomalies() == [], info
    assert [r for r in eve.anomalies()] == [], info
    assert eve.events("tls") == [], info
    protos = eve.app_protos()
    assert protos.get(flow_a) == "http" and protos.get((CLIENT, 40002, SERVER, 443, "TCP")) == "http", protos
    flows = {S.five_tuple(f): f for f in eve.flows()}
    assert flows[flow_a]["tcp"]["state"] == "closed", flows[flow_a]
    assert eve.stats(), "no eve stats record"
    assert eve.counter("tcp.invalid_checksum") == 0 and eve.counter("ipv4.invalid_checksum", 0) == 0


# ---------------------------------------------------------------------------
# the rules file
# ---------------------------------------------------------------------------

_RULE_RE = re.compile(r"^(alert|drop|reject|pass)\s+(\S+)\s[^(]*\((.*)\)\s*$")


def _parse_rules() -> list[dict]:
    rules = []
    for ln in RULES.read_text().splitlines():
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        m = _RULE_RE.match(ln)
        assert m, f"not a one-line rule: {ln!r}"
        opts: dict[str, list[str]] = {}
        for part in re.split(r';\s*(?=(?:[^"]*"[^"]*")*[^"]*$)', m.group(3)):
            if part.strip():
                k, _, v = part.strip().partition(":")
                opts.setdefault(k.strip(), []).append(v.strip())
        rules.append({"action": m.group(1), "proto": m.group(2), "opts": opts, "line": ln})
    return rules


def test_rules_file_conventions():
    rules = _parse_rules()
    assert len(rules) >= 6
    sids = [int(r["opts"]["sid"][0]) for r in rules]
    assert len(sids) == len(set(sids)), sids
    assert all(s in SID_BLOCK for s in sids), sids
    assert {SID_MARKER, SID_INFO, SID_CRED_URI, SID_BASIC_AUTH, SID_BLOCK_HOOK} <= set(sids)
    classtypes = (
        {
            ln.split(":", 1)[1].split(",", 1)[0].strip()
            for ln in Path("/etc/suricata/classification.config").read_text().splitlines()
            if ln.startswith("config classification:")
        }
        if Path("/etc/suricata/classification.config").exists()
        else None
    )
    for r in rules:
        o = r["opts"]
        assert r["action"] == "alert", r["line"]  # no drop/reject until the IPS mode exists
        assert re.fullmatch(r'"TLS-BRIDGE [A-Z]+ [^"]+"', o["msg"][0]), o["msg"]
        assert o["rev"] and int(o["rev"][0]) >= 1
        assert "classtype" in o and (classtypes is None or o["classtype"][0] in classtypes), o.get("classtype")
        meta = dict(kv.split(" ", 1) for kv in (x.strip() for x in o["metadata"][0].split(",")))
        for key in ("created_at", "updated_at", "signature_severity", "tls_bridge_action"):
            assert key in meta, (key, r["line"])
        assert re.fullmatch(r"\d{4}_\d{2}_\d{2}", meta["created_at"]) and meta["updated_at"] >= meta["created_at"]
        assert list(meta) == sorted(meta), f"metadata keys not alphabetical: {list(meta)}"
    # the documented "next sid" points past every sid used in its area
    m = re.search(r"# next sid: (.*)", RULES.read_text())
    assert m, "missing '# next sid:' header"
    nexts = [int(x) for x in re.findall(r"\d{7}", m.group(1))]
    areas = [range(1915000, 1915100), range(1915100, 1915500), range(1915500, 1915900), range(1915900, 1916000)]
    assert len(nexts) == len(areas), m.group(0)
    for area, nxt in zip(areas, nexts):
        used = [s for s in sids if s in area]
        assert nxt in area and nxt == (max(used) + 1 if used else area.start), (nxt, used)
    # the README documents every sid
    readme = RULES_README.read_text()
    for s in sids:
        assert str(s) in readme, f"sid {s} not documented in {RULES_README}"
    # block rule is the IPS hook
    block = next(r for r in rules if int(r["opts"]["sid"][0]) == SID_BLOCK_HOOK)
    assert "tls_bridge_action block" in block["line"]


@pytest.mark.real
def test_rules_load_in_suricata(tmp_path):
    out = S.check_rules([RULES], workdir=tmp_path)
    m = re.search(r"(\d+) rules successfully loaded, (\d+) rules failed", out)
    assert m and int(m.group(2)) == 0 and int(m.group(1)) == len(_parse_rules()), out
    assert not re.search(r"^(Error|E):", out, re.MULTILINE), out
    assert not re.search(r"^Warning:.*(rule|sig|detect)", out, re.MULTILINE | re.IGNORECASE), out


# ---------------------------------------------------------------------------
# offline: pcap -> suricata -r -k all
# ---------------------------------------------------------------------------


@pytest.mark.real
def test_offline_decrypted_http_is_inspected(tmp_path):
    pcap = build_http_pcap(tmp_path / "cleartext.pcap")
    eve = S.run_offline(pcap, rules=[RULES], workdir=tmp_path / "suricata")
    _assert_decrypted_http_facts(eve)


@pytest.mark.real
def test_offline_bad_checksum_is_noticed(tmp_path):
    """Guard for the checksum assertion above: -k all really drops a bad segment."""
    pcap = build_http_pcap(tmp_path / "good.pcap")
    from scapy.utils import rdpcap

    frames = rdpcap(str(pcap))
    req = next(i for i, f in enumerate(frames) if bytes(f[TCP].payload).startswith(b"GET /tls-bridge-test-marker"))
    frames[req][TCP].chksum ^= 0x5A5A
    wrpcap(str(tmp_path / "bad.pcap"), frames, linktype=1)
    eve = S.run_offline(tmp_path / "bad.pcap", rules=[RULES], workdir=tmp_path / "suricata")
    assert eve.counter("tcp.invalid_checksum") >= 1, eve.stats().get("tcp")
    assert eve.alerts(SID_MARKER) == [], eve.summary()


@pytest.mark.real
def test_offline_broken_ack_is_a_stream_anomaly(tmp_path):
    """Guard for `no stream anomalies`: an ACK of unsent data is reported by the helper."""
    from scapy.utils import rdpcap

    frames = list(rdpcap(str(build_http_pcap(tmp_path / "good.pcap"))))
    i = next(i for i, f in enumerate(frames) if bytes(f[TCP].payload).startswith(b"GET /index.html"))
    bad = frames[i].copy()
    bad[TCP].ack = (bad[TCP].ack + 100_000) & 0xFFFFFFFF
    del bad[TCP].chksum  # the checksum stays right: only the TCP state is wrong
    fixed = Ether(bytes(bad))
    fixed.time = frames[i].time
    frames[i] = fixed
    wrpcap(str(tmp_path / "bad.pcap"), frames, linktype=1)
    eve = S.run_offline(tmp_path / "bad.pcap", rules=[RULES], workdir=tmp_path / "suricata")
    sigs = {a["alert"]["signature"] for a in eve.stream_anomalies() if a["event_type"] == "alert"}
    assert "SURICATA STREAM ESTABLISHED invalid ack" in sigs, eve.summary()
    assert any(a["event_type"] == "anomaly" for a in eve.stream_anomalies()), eve.summary()
    assert eve.counter("tcp.invalid_checksum") == 0


# ---------------------------------------------------------------------------
# the deploy overlay, included in a copy of the stock suricata.yaml
# ---------------------------------------------------------------------------


def _overlay_config(tmp_path: Path) -> tuple[Path, list[str], Path]:
    """Copy of /etc/suricata/suricata.yaml + `include:` of the overlay at the end.

    Returns (config, --set options, rule dir): the rule dir stands in for
    default-rule-path (suricata.rules = Suricata's event rules, as suricata-update
    would bundle them, plus tls-bridge.rules installed next to it).
    """
    stock = Path("/etc/suricata/suricata.yaml")
    assert stock.exists(), f"{stock} missing. {S.INSTALL_HINT}"
    cfg = tmp_path / "suricata.yaml"
    text = stock.read_text()
    assert not re.search(r"^include\s*:", text, re.MULTILINE), "stock config already has an include: key"
    cfg.write_text(text.rstrip("\n") + f"\n\n# tls-ids-bridge overlay (must stay last)\ninclude:\n  - {OVERLAY}\n")
    rule_dir = tmp_path / "rules"
    rule_dir.mkdir()
    S.combine_rules([], S.DEFAULT_EVENT_RULES, rule_dir / "suricata.rules")
    shutil.copy(RULES, rule_dir / "tls-bridge.rules")
    sets = [f"default-rule-path={rule_dir}", "unix-command.enabled=no"]
    return cfg, sets, rule_dir


@pytest.mark.real
def test_overlay_included_in_stock_config(tmp_path):
    suricata = S.require_suricata()
    cfg, sets, _ = _overlay_config(tmp_path)
    setargs = [a for s in sets for a in ("--set", s)]
    log = tmp_path / "log"
    log.mkdir()
    r = subprocess.run(
        [suricata, "-T", "-v", "--init-errors-fatal", "-c", str(cfg), "-l", str(log), *setargs],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "eve-tls-bridge.json" in out, out
    m = re.search(r"(\d+) rule files processed\. (\d+) rules successfully loaded, (\d+) rules failed", out)
    assert m and m.group(1) == "2" and m.group(3) == "0", out
    assert int(m.group(2)) > len(_parse_rules()), out

    d = subprocess.run(
        [suricata, "--dump-config", "-c", str(cfg), *setargs], capture_output=True, text=True, timeout=60, check=False
    )
    assert d.returncode == 0, d.stderr
    conf = dict(ln.split(" = ", 1) for ln in d.stdout.splitlines() if " = " in ln)
    # the overlay REPLACES af-packet / outputs / rule-files (documented in the overlay)
    afp = sorted({k.split(".")[1] for k in conf if k.startswith("af-packet.")})
    assert afp == ["0"], afp
    assert conf["af-packet.0.interface"] == "tls0"
    assert conf["af-packet.0.cluster-id"] == "98"
    assert conf["af-packet.0.cluster-type"] == "cluster_flow"
    assert conf["af-packet.0.checksum-checks"] == "yes"
    assert conf["outputs.0.eve-log.enabled"] == "yes"
    assert conf["outputs.0.eve-log.filename"] == "eve-tls-bridge.json"
    types = {v for k, v in conf.items() if re.fullmatch(r"outputs\.0\.eve-log\.types\.\d+", k)}
    assert {"alert", "http", "tls", "flow", "anomaly"} <= types, types
    assert [conf[k] for k in sorted(k for k in conf if re.fullmatch(r"rule-files\.\d+", k))] == [
        "suricata.rules",
        "tls-bridge.rules",
    ]
    # ... and keeps the rest of the site's config
    assert conf["vars.address-groups.HOME_NET"], conf.get("vars.address-groups.HOME_NET")
    assert conf["app-layer.protocols.http.enabled"] == "yes"


# ---------------------------------------------------------------------------
# live: veth pair inside a namespace, Suricata on one end (overlay config)
# ---------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.parametrize("config", ["overlay", "minimal"])
def test_live_af_packet(tmp_path, config):
    """Frames sent from inside a namespace over a veth pair; Suricata (af-packet) on the other end.

    overlay: the stock suricata.yaml + deploy overlay (rules from its rule-files,
    eve-tls-bridge.json); minimal: the helper's generated config with -S rules.
    """
    tlslab.require_root()
    S.require_suricata()
    pcap = build_http_pcap(tmp_path / "cleartext.pcap")
    frames = len(list(_frames(pcap)))
    if config == "overlay":
        cfg, sets, _ = _overlay_config(tmp_path)
        kw = {"rules": None, "config": cfg, "eve_name": "eve-tls-bridge.json", "set_options": sets}
    else:
        kw = {"rules": [RULES]}
    with tlslab.Netns() as ns:
        ip = tlslab.tool("ip")
        # the Suricata end is called tls0 (the overlay's interface) -- names are per namespace
        for cmd in (
            [ip, "-n", ns.name, "link", "add", "tls0", "type", "veth", "peer", "name", "tls0-peer"],
            [ip, "-n", ns.name, "link", "set", "tls0", "up"],
            [ip, "-n", ns.name, "link", "set", "tls0-peer", "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        ns.run(["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        ns.run(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
        live = S.LiveSuricata("tls0", netns=ns.name, workdir=tmp_path / "live", **kw)
        with live:
            assert S.inject_pcap(pcap, netns=ns.name, iface="tls0-peer") == frames
            live.wait_for(lambda e: len(e.http_requests()) >= 3 and len(e.alerts(SID_BLOCK_HOOK)) >= 1, timeout=20)
        eve = live.eve
    assert eve is not None and eve.path.name == kw.get("eve_name", "eve.json")
    assert re.search(r"device: tls0: packets: \d+, drops: 0 .*invalid chksum: 0", live.output()), live.output()
    _assert_decrypted_http_facts(eve)
    assert all(f.get("in_iface") == "tls0" for f in eve.flows()), eve.summary()
    if config == "overlay":  # the overlay's eve has `ethernet: yes`: the marker MACs are visible
        marker = eve.alerts(SID_MARKER)[0]
        assert marker["ether"]["src_mac"] == CLIENT_MAC and marker["ether"]["dest_mac"] == SERVER_MAC, marker
        # ... and the rule text, from which tls-bridge ips learns a drop rule's action
        block = eve.alerts(SID_BLOCK_HOOK)[0]
        assert block["alert"]["rule"].startswith("alert http ") and "sid:1915900;" in block["alert"]["rule"], block
        assert block["alert"]["metadata"]["tls_bridge_action"] == ["block"], block
    assert eve.counter("capture.kernel_packets") == frames and eve.counter("capture.kernel_drops") == 0, (
        eve.stats().get("capture")
    )


def _frames(pcap: Path):
    from scapy.utils import PcapReader

    with PcapReader(str(pcap)) as r:
        yield from r
