"""``tls-bridge demo``: the whole product path on one machine, for real.

In a network namespace of its own: nginx serves HTTPS (a master and a forked
worker); the process harvester hooks nginx's OpenSSL with uprobes and publishes
each connection's secrets on the key feed (CurveZMQ, certificates made for the
demo); ``tls-bridge decrypt -i lo --keys ...`` captures the encrypted traffic
live, takes the secrets from the feed, decrypts, and injects the synthetic
cleartext connections into an injection interface (``tls0``; a veth pair here,
a ``dummy`` interface in deployment); Suricata 7 inspects ``tls0`` live with the
project's rules.  curl fetches a few URLs over TLS 1.3 and TLS 1.2 (HTTP/1.1 and
HTTP/2); the demo prints what Suricata saw inside the TLS and, where Zeek is
installed, what Zeek with ``zeek-scripts/`` saw on the same synthetic cleartext
(:mod:`bridge.demo_zeek`).  Nothing writes a key log: the keys come out of
nginx's memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.demo_zeek import zeek_report
from bridge.errors import BridgeError

REPO = Path(__file__).resolve().parent.parent
HOST = "shop.example.test"
PORT = 443
TOOLS = ("ip", "nginx", "curl", "suricata")


class DemoError(BridgeError):
    """The demo could not run (a tool missing, a step failed)."""


def _say(text: str) -> None:
    print(text, flush=True)


def _require_tools() -> dict[str, str]:
    found = {name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") for name in TOOLS}
    missing = [name for name, path in found.items() if not path]
    if missing:
        raise DemoError(f"missing tools: {', '.join(missing)} (run scripts/demo.sh, which installs them)")
    if os.geteuid() != 0:
        raise DemoError("the demo creates a network namespace and captures packets: run it as root")
    return {name: str(path) for name, path in found.items()}


def _certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _nginx_config(work: Path, cert: Path, key: Path) -> Path:
    root = work / "www"
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text("<html><body>welcome to the shop</body></html>\n")
    (root / "tls-bridge-test-marker").write_text("marker\n")
    (root / "login").write_text("logged in\n")
    prefix = work / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{PORT} ssl http2;
        server_name {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {root};
    }}
}}
""")
    return conf


class _Namespace:
    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.name = f"tlsb-demo-{os.getpid()}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "_Namespace":
        subprocess.run([self.ip, "netns", "add", self.name], check=True)
        # MTU 1500 without GSO: segments look like a mirror port's.
        subprocess.run([self.ip, "-n", self.name, "link", "set", "lo", "mtu", "1500", "gso_max_size", "1500",
                        "gso_max_segs", "1", "up"], check=True)
        return self

    def add_injection_pair(self, name: str, peer: str) -> None:
        """The injection interface: a veth pair here (a dummy interface in deployment);
        the bridge writes to ``name``, Suricata reads ``peer``."""
        for command in (["link", "add", name, "type", "veth", "peer", "name", peer],
                        ["link", "set", name, "up"], ["link", "set", peer, "up"]):
            subprocess.run([self.ip, "-n", self.name, *command], check=True)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([self.ip, "netns", "exec", self.name, *argv], **kwargs)

    def start(self, argv: list[str], **kwargs) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([self.ip, "netns", "exec", self.name, *argv], **kwargs)
        self.procs.append(proc)
        return proc

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        subprocess.run([self.ip, "netns", "del", self.name], check=False)


def _wait_for_text(path: Path, needle: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise DemoError(f"{what} did not start: {path.read_text(errors='replace')[-2000:] if path.exists() else ''}")


def _wait_for_port(ns: _Namespace, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = ns.run(["ss", "-ltn", f"sport = :{port}"], capture_output=True, text=True).stdout
        if f":{port}" in listening:
            return
        time.sleep(0.05)
    raise DemoError(f"nginx is not listening on port {port}")


def _client_requests(ns: _Namespace, curl: str) -> list[str]:
    base = [curl, "-sS", "-k", "--resolve", f"{HOST}:{PORT}:127.0.0.1", "-o", "/dev/null", "-w", "%{http_code} "]
    runs = [
        (["--tlsv1.3", "--http1.1"], ["/", "/tls-bridge-test-marker?password=hunter2"]),
        (["--tlsv1.2", "--tls-max", "1.2", "--http2", "-u", "admin:s3cret"], ["/login"]),
    ]
    done = []
    for options, paths in runs:
        urls = [f"https://{HOST}:{PORT}{path}" for path in paths]
        result = ns.run(base + options + urls, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise DemoError(f"curl failed: {result.stderr.strip()}")
        done += [f"{'HTTP/2' if '--http2' in options else 'HTTP/1.1'} over {options[0][2:].replace('v', 'v')} GET {p}"
                 for p in paths]
    return done


_SURICATA_CONFIG = """%YAML 1.1
---
# written by tls-bridge demo: a Suricata of its own on the injection interface
default-log-dir: {logdir}
classification-file: /etc/suricata/classification.config
reference-config-file: /etc/suricata/reference.config
logging:
  default-log-level: notice
  outputs:
    - console:
        enabled: yes
app-layer:
  protocols:
    http:
      enabled: yes
    http2:
      enabled: yes
    tls:
      enabled: yes
af-packet:
  - interface: {interface}
    cluster-id: 98
    cluster-type: cluster_flow
    defrag: yes
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: eve.json
      types:
        - alert:
            metadata: yes
        - http:
            extended: yes
        - http2
        - tls
        - flow
"""


def _rules(work: Path) -> Path:
    rules = work / "demo.rules"
    parts = [(REPO / "suricata-rules" / "tls-bridge.rules").read_text()]
    for extra in ("stream-events.rules", "tls-events.rules"):
        path = Path("/etc/suricata/rules") / extra
        if path.exists():
            parts.append(path.read_text())
    rules.write_text("\n".join(parts))
    return rules


def _start_suricata(ns: "_Namespace", suricata: str, work: Path, interface: str) -> tuple[subprocess.Popen[bytes], Path]:
    logdir = work / "suricata"
    logdir.mkdir(exist_ok=True)
    config = logdir / "suricata.yaml"
    config.write_text(_SURICATA_CONFIG.format(logdir=logdir, interface=interface))
    output = logdir / "suricata.out"
    with open(output, "wb") as handle:
        proc = ns.start([suricata, "-c", str(config), f"--af-packet={interface}", "-S", str(_rules(work)), "-l",
                         str(logdir), "-k", "none"], stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = output.read_text(errors="replace")
        if "Engine started" in text or re.search(r"all \d+ packet processing threads", text):
            return proc, logdir / "eve.json"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise DemoError(f"suricata did not start: {output.read_text(errors='replace')[-2000:]}")


def _wait_for_eve(eve: Path, timeout: float = 20.0) -> None:
    """Until Suricata logged the three HTTP requests (it logs a flow's request at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if eve.exists():
            events = [json.loads(line) for line in eve.read_text().splitlines() if line.strip()]
            if sum(e.get("event_type") == "http" for e in events) >= 3 and any(e.get("event_type") == "alert"
                                                                              for e in events):
                return
        time.sleep(0.25)


def _stop_chain(bridge: subprocess.Popen, harvester: subprocess.Popen, suricata: subprocess.Popen, eve: Path,
                bridge_log: Path) -> None:
    """The end of a demo run, in order: the decryptor (a second after the last request:
    its last flows written), Suricata's eve records of the requests, the harvester, Suricata."""
    time.sleep(1.0)
    bridge.send_signal(signal.SIGTERM)
    if bridge.wait(timeout=30) != 0:
        raise DemoError(f"tls-bridge failed: {bridge_log.read_text()[-2000:]}")
    _wait_for_eve(eve)
    for process in (harvester, suricata):
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _header(http: dict, name: str) -> str:
    return next((h.get("value", "") for h in http.get("request_headers", []) if h.get("name") == name), "?")


def _report(flows: Path, eve: Path, requests: list[str], *, connections: int = 2) -> int:
    records = [json.loads(line) for line in flows.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in eve.read_text().splitlines() if line.strip()]
    _say("\nWhat the clients sent, inside TLS:")
    for line in requests:
        _say(f"  {line}")
    _say("\nWhat tls-bridge decrypted (flow log):")
    for r in records:
        origin = r.get("key_origin") or {}
        where = f"vm {origin['vm']}: " if origin.get("vm") else ""  # harvested from a VM's memory
        keys = f"keys from {where}{origin.get('comm')}[{origin.get('pid')}] by {origin.get('trigger')}" if origin else "no keys"
        _say(f"  {r['client']} -> {r['server']}  {r['status']:9} {r['tls_version']} {r['cipher_suite']} "
             f"sni={r['sni']} alpn={r['alpn']}  {r['c2s']['bytes']}+{r['s2c']['bytes']} bytes; {keys}")
    http = [e for e in events if e["event_type"] == "http" and e["http"].get("http_method")]
    alerts = [e for e in events if e["event_type"] == "alert"]
    tls_events = [e for e in events if e["event_type"] == "tls"]
    _say("\nWhat Suricata saw on the synthetic cleartext connections:")
    for e in http:
        h = e["http"]
        host = h.get("hostname") or _header(h, ":authority")
        _say(f"  http/{h.get('version', '1.1').replace('HTTP/', '')}  {e['src_ip']}:{e['src_port']} -> "
             f"{e['dest_ip']}:{e['dest_port']}  {h.get('http_method')} {host}{h.get('url')}  -> {h.get('status')}")
    for e in alerts:
        _say(f"  alert [{e['alert']['signature_id']}] {e['alert']['signature']}  ({e.get('http', {}).get('url', '')})")
    _say(f"  tls events on synthetic flows: {len(tls_events)}")
    # Beside Suricata: what Zeek with zeek-scripts/ saw, when Zeek is installed (bridge/demo_zeek.py).
    zeek_ok = zeek_report(flows.parent / "synthetic.pcap", flows, say=_say)
    decrypted = sum(r["status"] == "decrypted" for r in records)
    ok = decrypted == len(records) == connections and len(http) == 3 and bool(alerts) and not tls_events
    ok = ok and zeek_ok
    _say("\nDemo " + ("succeeded" if ok else "FAILED: Suricata did not see what was sent"))
    return 0 if ok else 1


def _summary_line(log: Path, needle: str) -> str:
    """The last line of a log that says ``needle`` (other lines may follow a summary)."""
    lines = log.read_text(errors="replace").strip().splitlines()
    return next((line for line in reversed(lines) if needle in line), lines[-1] if lines else "")


def _bridge(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]


def run_demo(args: argparse.Namespace) -> int:
    try:
        tools = _require_tools()
        work = Path(args.workdir).resolve()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        cert, key = _certificate(work)
        conf = _nginx_config(work, cert, key)
        flows, synthetic, feed = work / "flows.jsonl", work / "synthetic.pcap", f"ipc://{work}/keyfeed"
        certs = work / "certs"
        for name, directory in (("harvester", certs), ("sensor", certs / "sensors")):
            subprocess.run(_bridge(["keys", "gen-cert", name, "--dir", str(directory)]), check=True,
                           capture_output=True)
        logs = {name: work / f"{name}.log" for name in ("harvester", "bridge")}
        _say(f"tls-bridge demo: HTTPS server {HOST}:{PORT} in a private network namespace; work dir {work}")
        with _Namespace(tools["ip"]) as ns, open(logs["harvester"], "wb") as hlog, open(logs["bridge"], "wb") as blog:
            ns.add_injection_pair("tls0", "tls0peer")
            ns.start([tools["nginx"], "-c", str(conf)], stderr=subprocess.DEVNULL)
            _wait_for_port(ns, PORT)
            harvester = ns.start(_bridge(["harvest", "process", "--comm", "nginx", "--bind", feed, "--server-cert",
                                          str(certs / "harvester.key_secret"), "--allow", str(certs / "sensors")]),
                                 stdout=hlog, stderr=hlog)
            _wait_for_text(logs["harvester"], "harvesting", 30, "the harvester")
            _say("the harvester hooks nginx's OpenSSL (uprobes) and publishes secrets on the key feed (CurveZMQ)")
            suricata, eve = _start_suricata(ns, tools["suricata"], work, "tls0peer")
            _say("Suricata 7 inspects the injection interface tls0")
            bridge = ns.start(_bridge(["decrypt", "-i", "lo", "--keys", feed, "--server-key",
                                       str(certs / "harvester.key"), "--client-cert",
                                       str(certs / "sensors" / "sensor.key_secret"), "--inject", "tls0", "-w",
                                       str(synthetic), "--flows", str(flows)]), stdout=blog, stderr=blog)
            _wait_for_text(logs["bridge"], "capturing on lo", 30, "tls-bridge decrypt")
            _say("tls-bridge decrypts lo live with the harvested keys; clients fetch over TLS 1.3 and TLS 1.2 ...")
            requests = _client_requests(ns, tools["curl"])
            _stop_chain(bridge, harvester, suricata, eve, logs["bridge"])
        _say(_summary_line(logs["harvester"], "connections published"))
        _say(logs["bridge"].read_text().strip().splitlines()[-3])
        status = _report(flows, eve, requests)
        _say(f"\nLogs: flow log {flows}\n      synthetic cleartext pcap {synthetic}\n"
             f"      Suricata eve.json {eve}\n      harvester {logs['harvester']}\n      bridge {logs['bridge']}")
        return status
    except (DemoError, BridgeError, subprocess.SubprocessError, OSError) as exc:
        print(f"tls-bridge demo: error: {exc}", file=sys.stderr)
        return 1
