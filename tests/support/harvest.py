"""Harvester test lab: real TLS servers and clients in a network namespace,
the harvester as a real process beside them, a capture of the traffic.

Servers: ``openssl s_server -www``, nginx (master + 2 forked workers), a
threaded Python ``ssl`` server, node's ``https`` server.  Clients: curl
(SSLKEYLOGFILE) and ``openssl s_client -keylogfile`` — their key logs are the
ground truth the harvested key log is compared with.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess

SERVERS_DIR = Path(__file__).resolve().parent / "servers"
HANDSHAKE_TRAFFIC = ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET")


def keylog_lines(path: Path) -> set[tuple[str, str, str]]:
    if not path.exists():
        return set()
    lines = set()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            lines.add((parts[0], parts[1].lower(), parts[2].lower()))
    return lines


def compare_keylogs(client: Path, harvested: Path) -> tuple[set, set]:
    """(client lines missing from the harvest, harvested lines the client did not write),
    the handshake traffic secrets aside: the harvester gives HANDSHAKE_SECRET instead,
    which must be there for every TLS 1.3 connection."""
    theirs = {line for line in keylog_lines(client) if line[0] not in HANDSHAKE_TRAFFIC}
    ours_all = keylog_lines(harvested)
    ours = {line for line in ours_all if line[0] != "HANDSHAKE_SECRET"}
    tls13 = {line[1] for line in theirs if line[0] == "CLIENT_TRAFFIC_SECRET_0"}
    with_handshake_secret = {line[1] for line in ours_all if line[0] == "HANDSHAKE_SECRET"}
    missing_hs = {("HANDSHAKE_SECRET", random, "?") for random in tls13 - with_handshake_secret}
    return (theirs - ours) | missing_hs, ours - theirs


def randoms(keylog: Path) -> set[str]:
    return {line[1] for line in keylog_lines(keylog)}


def hold_until_harvested(keylog: Path, harvested: Path, before: set[str], *, timeout: float = 60.0,
                         alive=lambda: True) -> None:
    """Keep a client's connection open until the harvester has published it: the
    client's new random (in ``keylog`` and not in ``before``) is in ``harvested``.
    A connection "held open" is held until it is found, not for a fixed moment a
    loaded host may not honour; after ``timeout`` the caller goes on and the test's
    assertions say what is missing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        new = randoms(keylog) - before
        if new and new <= randoms(harvested):
            return
        time.sleep(0.05)


@dataclass
class Lab:
    tmp: Path
    certs: tlslab.CertChain
    ns: tlslab.Netns
    procs: list = field(default_factory=list)

    # --- servers -------------------------------------------------------------------------

    def s_server(self, port: int = 4433, extra: tuple[str, ...] = ()) -> tlslab.Proc:
        argv = [tlslab.tool("openssl"), "s_server", "-accept", str(port), "-cert", str(self.certs.cert),
                "-key", str(self.certs.key), "-www", *extra]
        return self._start(argv, port)

    def python_server(self, port: int = 4434) -> tlslab.Proc:
        return self._start([sys.executable, str(SERVERS_DIR / "python_tls_server.py"), str(self.certs.chain),
                            str(self.certs.key), str(port)], port)

    def node_server(self, port: int = 4435, node: str | None = None) -> tlslab.Proc:
        return self._start([node or tlslab.tool("node"), str(SERVERS_DIR / "https_server.js"), str(self.certs.chain),
                            str(self.certs.key), str(port)], port)

    def nginx(self, port: int = 4436, workers: int = 2) -> tlslab.Proc:
        prefix = self.tmp / "nginx"
        for directory in ("logs", "html", "tmp"):
            (prefix / directory).mkdir(parents=True, exist_ok=True)
        (prefix / "html" / "index.html").write_text("hello from nginx\n")
        (prefix / "html" / "big.bin").write_bytes(os.urandom(300_000))
        conf = prefix / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process on;
user root;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp; proxy_temp_path {prefix}/tmp; fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp; scgi_temp_path {prefix}/tmp;
    keepalive_timeout 5s;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {self.certs.chain};
        ssl_certificate_key {self.certs.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        root {prefix}/html;
    }}
}}
""")
        return self._start([tlslab.tool("nginx"), "-p", str(prefix), "-c", str(conf)], port)

    def _start(self, argv: list[str], port: int) -> tlslab.Proc:
        proc = self.ns.proc(argv, stdin_pipe=False)
        tlslab._wait_listening(proc, port)
        self.procs.append(proc)
        return proc

    # --- clients -------------------------------------------------------------------------

    def curl(self, port: int, keylog: Path, *args: str, path: str = "/") -> bytes:
        argv = [tlslab.tool("curl"), "-sS", "--fail", "-k", "--max-time", "20", *args,
                f"https://127.0.0.1:{port}{path}"]
        proc = self.ns.proc(argv, stdin_pipe=False, env=dict(os.environ, SSLKEYLOGFILE=str(keylog)))
        if proc.wait(30) is None or proc.stop(timeout=1) != 0:
            raise AssertionError(f"curl {' '.join(args)} failed: {proc.describe()}")
        return proc.out.data

    def s_client(self, port: int, keylog: Path, *args: str, hold: float = 0.3, harvested: Path | None = None,
                 keep_alive: bool = False) -> bytes:
        """Connect, wait ``hold`` seconds (and, given ``harvested``, until the connection
        is in that key log), send a GET, wait for the answer.

        ``keep_alive``: the GET (HTTP/1.1, the connection kept) is sent first, then the
        connection is held, then closed.  For a server whose last hooked call before
        the request ran while the handshake was still unfinished (node): its calls
        for the request run on the established connection, alive while it is held."""
        argv = [tlslab.tool("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-keylogfile", str(keylog),
                "-quiet", *args]
        before = randoms(keylog)
        proc = self.ns.proc(argv)
        if keep_alive:
            proc.write(b"GET / HTTP/1.1\r\nHost: server.test\r\n\r\n")
        time.sleep(hold)
        if harvested is not None:
            hold_until_harvested(keylog, harvested, before, alive=proc.alive)
        if not keep_alive:
            proc.write(b"GET / HTTP/1.0\r\n\r\n")
            proc.wait(10)
        proc.stop(timeout=2)
        return proc.out.data

    # --- harvester -------------------------------------------------------------------------

    def harvester(self, *args: str, name: str = "harvest") -> BridgeProcess:
        if "--profile-cache" not in args:  # profiles made by this test stay with it
            args = (*args, "--profile-cache", str(self.tmp / f"{name}-profiles"))
        process = BridgeProcess(["harvest", "process", *args], self.tmp / f"{name}.err", prefix=self.ns.prefix())
        process.wait_for("harvesting", timeout=30)
        return process

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(signal.SIGTERM, timeout=5)


def probes_left(pid: int) -> list[str]:
    """uprobe_events lines and tracing instances of harvester ``pid``.

    Read through the product's :func:`~bridge.harvest.uprobes.tracefs`, which
    mounts tracefs when this mount namespace has none: the harvester runs under
    ``ip netns exec`` (a mount namespace of its own), so its mount is not seen here."""
    from bridge.harvest.uprobes import tracefs

    root = tracefs()
    name = f"tlsbridge_{pid}"
    left = [line for line in (root / "uprobe_events").read_text().splitlines() if f"{name}/" in line]
    if (root / "instances" / name).exists():
        left.append(f"instances/{name}")
    return left


def rebuilt_library(original: str | Path, directory: Path) -> tuple[Path, str]:
    """A copy of a libssl with its GNU build-id changed (the same code: a "security
    update" no profile knows), and any libcrypto beside it copied too.  Returns
    (the copy, its build-id)."""
    import shutil

    from bridge.harvest.elf import read_elf

    original = Path(original)
    directory.mkdir(parents=True, exist_ok=True)
    data = bytearray(original.read_bytes())
    build_id = bytes.fromhex(read_elf(original).build_id)
    position = data.index(build_id)
    patched = bytes(b ^ 0x5A for b in build_id)
    data[position : position + len(build_id)] = patched
    copy = directory / original.name
    copy.write_bytes(data)
    for sibling in original.parent.glob("libcrypto*.so*"):
        if original.parent != Path("/usr/lib/x86_64-linux-gnu"):
            shutil.copy(sibling, directory / sibling.name)
    return copy, patched.hex()
