"""The inline IPS's lab (tests/test_ips_inline.py, bench/bench_ips_inline.py): network
namespaces client — gateway — server (IPv4 and IPv6); the gateway forwards and iptables'
(and ip6tables') NFQUEUE target hands the server's port-443 traffic to queue 13; Suricata 7 runs in af-packet IPS mode
with the deploy overlay between the veth pairs ipsin0/ipsin1 and ipsout1/ipsout0; on the
server nginx (HTTP/1.1 and HTTP/2, TLS 1.2 and 1.3, an access log) and the process
harvester (secrets on a key feed and in a key log)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support import suricata as S
from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "deploy" / "suricata" / "tls-bridge-inline.yaml"
INLINE_RULES = ROOT / "suricata-rules" / "tls-bridge-inline.rules"
SERVER, CLIENT = "10.113.2.2", "10.113.1.2"
SERVER6, CLIENT6 = "fd13:2::2", "fd13:1::2"
QUEUE = "13"
BLOCK = "/tls-bridge-block-marker"
TEST_RULES = 'alert http any any -> any any (msg:"inline test: request seen"; flow:to_server; http.uri; ' \
    'content:"/files/"; sid:9913002; rev:1;)\n'


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def exec_in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


#: the client's ephemeral ports, a slice per inline IPS process (Lab.ips)
PORTS_LOW, PORT_SLICE, PORT_SLICES = 10_000, 2_000, 25


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
    ips_runs: int = 0

    def ips(self, name: str, *extra: str, keys: tuple[str, ...] | None = None) -> BridgeProcess:
        """An inline IPS process.  Each one's clients get ports of their own: the one
        Suricata outlives the IPS processes, and keeps dropping a synthetic 4-tuple an
        earlier process cut until its flow timeout; a new process does not know it (the
        remap of a cut 4-tuple's synthetic port lives in the process), so a client
        reusing that port would be cut too (README: the inline IPS's limits)."""
        keys = keys if keys is not None else ("--keys", self.feed, "--keys-insecure")
        work = self.tmp / name
        work.mkdir()
        low = PORTS_LOW + (self.ips_runs % PORT_SLICES) * PORT_SLICE
        self.ips_runs += 1
        subprocess.run([*exec_in(self.client), "sysctl", "-qw", f"net.ipv4.ip_local_port_range={low} {low + PORT_SLICE - 1}"],
                       check=True)
        return BridgeProcess(["ips", "--inline", "-q", QUEUE, "--suricata-in", "ipsin0", "--suricata-out", "ipsout0",
                              *keys, "--flows", str(work / "flows.jsonl"), "--log", str(work / "ips.jsonl"), *extra],
                             work / "ips.err", prefix=exec_in(self.gateway))

    def concurrent_client(self, downloads: Path, keylog: Path, *, connections: int, per_connection: int,
                          prefix: str = "f", timeout: float = 60) -> tuple[int, list[dict]]:
        """tests/support/inline_client.py in the client's namespace: ``connections`` connections
        open at once, ``per_connection`` requests each in lockstep rounds."""
        result = subprocess.run([*exec_in(self.client), str(ROOT / ".venv" / "bin" / "python"), "-m",
                                 "tests.support.inline_client", "--host", SERVER, "--connections", str(connections),
                                 "--per-connection", str(per_connection), "--prefix", prefix, "--downloads",
                                 str(downloads), "--keylog", str(keylog), "--timeout", str(timeout)],
                                capture_output=True, text=True, check=False, cwd=ROOT, timeout=timeout * 4)
        lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert lines or result.returncode == 0, result.stderr
        return result.returncode, lines

    def curl(self, *args: str, timeout: float = 40) -> subprocess.CompletedProcess:
        return subprocess.run([*exec_in(self.client), "curl", "-sk", "--max-time", str(timeout), *args],
                              capture_output=True, text=True, check=False,
                              env=dict(os.environ, SSLKEYLOGFILE=str(self.client_keylog)))

    def access(self) -> list[dict[str, str]]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [dict(zip(("msec", "connection", "uri", "status", "protocol", "active"), line.split())) for line in lines]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _topology(tag: str) -> tuple[str, str, str]:
    client, gateway, server = (f"tlsb-ipsi-{n}-{tag}" for n in "cgv")
    for ns in (client, gateway, server):
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
    ip("-n", client, "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", gateway)
    ip("-n", server, "link", "add", "s0", "type", "veth", "peer", "name", "g1", "netns", gateway)
    # the veth pairs to and from Suricata, as deployed
    subprocess.run([*exec_in(gateway), str(ROOT / "deploy" / "create-inline-interfaces.sh")], check=True)
    for ns, link, address in ((client, "c0", f"{CLIENT}/24"), (gateway, "g0", "10.113.1.1/24"),
                              (gateway, "g1", "10.113.2.1/24"), (server, "s0", f"{SERVER}/24")):
        ip("-n", ns, "addr", "add", address, "dev", link)
    for ns, link, address in ((client, "c0", f"{CLIENT6}/64"), (gateway, "g0", "fd13:1::1/64"),
                              (gateway, "g1", "fd13:2::1/64"), (server, "s0", f"{SERVER6}/64")):
        ip("-n", ns, "-6", "addr", "add", address, "dev", link, "nodad")
    for ns, link in ((client, "c0"), (gateway, "g0"), (gateway, "g1"), (server, "s0")):
        ip("-n", ns, "link", "set", link, "up")
    ip("-n", client, "route", "add", "default", "via", "10.113.1.1")
    ip("-n", server, "route", "add", "default", "via", "10.113.2.1")
    ip("-n", client, "-6", "route", "add", "default", "via", "fd13:1::1")
    ip("-n", server, "-6", "route", "add", "default", "via", "fd13:2::1")
    subprocess.run([*exec_in(gateway), "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
                   check=True)
    forwarding_queued(gateway, True)
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
http {{ log_format ipsi '$msec $connection $request_uri $status $server_protocol $connections_active';
access_log {access} ipsi; client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp;
fastcgi_temp_path {prefix}/tmp; uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
keepalive_requests 1000;
server {{ listen {SERVER}:443 ssl http2; listen [{SERVER6}]:443 ssl http2; ssl_certificate {certs.chain}; ssl_certificate_key {certs.key};
ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets off; ssl_session_cache off; root {html}; }} }}
""")
    proc = subprocess.Popen([*exec_in(server), "nginx", "-p", str(prefix), "-c", str(conf)],
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
        proc = subprocess.Popen([*exec_in(gateway), S.require_suricata(), "-c", str(config), "--af-packet", "-v",
                                 "--init-errors-fatal", "-l", str(work), "-S", str(rules), "--runmode", "workers"],
                                stdout=out, stderr=subprocess.STDOUT)
    wait(lambda: "Engine started" in (work / "suricata.out").read_text(errors="replace") or proc.poll() is not None,
          60, "Suricata")
    assert proc.poll() is None, (work / "suricata.out").read_text()
    return proc, work / "eve-tls-bridge-inline.json"



@contextlib.contextmanager
def inline_lab(tmp: Path, certs: tlslab.CertChain) -> Iterator[Lab]:
    """The lab, torn down on exit (every process in its namespaces killed)."""
    tlslab.require_root()
    tlslab.require_tools("nginx", "curl", "iptables", "suricata", "tcpdump", "tshark")
    tag = str(os.getpid() % 100000)
    client, gateway, server = _topology(tag)
    procs: list[subprocess.Popen] = []
    try:
        nginx, access, html = _nginx(server, tmp, certs)
        procs.append(nginx)
        wait(lambda: (tmp / "nginx" / "nginx.pid").exists(), 20, "nginx")
        pid = (tmp / "nginx" / "nginx.pid").read_text().strip()
        feed, harvested = f"ipc://{tmp}/feed", tmp / "harvested.keylog"
        harvester_log = tmp / "harvester.log"
        with open(harvester_log, "wb") as hlog:
            harvester = subprocess.Popen([*exec_in(server), str(ROOT / ".venv" / "bin" / "python"), "-m", "bridge.cli",
                                          "harvest", "process", "--pid", pid, "--keylog", str(harvested), "--bind",
                                          feed, "--insecure"], stdout=hlog, stderr=hlog, cwd=ROOT)
        procs.append(harvester)
        wait(lambda: "harvesting" in harvester_log.read_text(errors="replace") or harvester.poll() is not None, 60,
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




def forwarding_queued(gateway: str, on: bool) -> None:
    """The NFQUEUE rules in (the inline IPS judges) or out (plain forwarding)."""
    for tool, server in (("iptables", SERVER), ("ip6tables", SERVER6)):
        for rule in (["-d", server, "--dport", "443"], ["-s", server, "--sport", "443"]):
            subprocess.run([*exec_in(gateway), tool, "-A" if on else "-D", "FORWARD", "-p", "tcp", *rule, "-j",
                            "NFQUEUE", "--queue-num", QUEUE], check=True)
