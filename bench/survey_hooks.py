"""Which exported ``SSL_*`` functions real servers call, how often, per connection.

Hooks every exported ``SSL_*`` function of each server's OpenSSL with a bare
uprobe (the ``SSL *`` only), serves N connections (curl, TLS 1.3 and 1.2, one
small request each), and prints, per server, the functions hit with their count
per connection and whether they see the connection's secrets complete (a
hook point is worth having when it fires once or a few times per connection,
after the handshake).  This is how the harvester's hook set was chosen.

    .venv/bin/python bench/survey_hooks.py [--connections 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.harvest.chain import read_secrets  # noqa: E402
from bridge.harvest.memory import ProcessMemory  # noqa: E402
from bridge.harvest.profile import ProfileStore  # noqa: E402
from bridge.harvest.targets import TargetFinder  # noqa: E402
from bridge.harvest.uprobes import UprobeSession, _write, probe_definition  # noqa: E402

SERVERS = ROOT / "tests" / "support" / "servers"


def _servers(cert: Path, key: Path) -> dict[str, list[str]]:
    return {
        "openssl s_server -www": ["openssl", "s_server", "-accept", "44400", "-cert", str(cert), "-key", str(key),
                                  "-www", "-quiet"],
        "python ssl (threads)": [sys.executable, str(SERVERS / "python_tls_server.py"), str(cert), str(key), "44401"],
        "node https": ["node", str(SERVERS / "https_server.js"), str(cert), str(key), "44402"],
    }


def _nginx(directory: Path, cert: Path, key: Path) -> list[str]:
    for sub in ("logs", "html", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "html" / "index.html").write_text("hello\n")
    conf = directory / "nginx.conf"
    conf.write_text(f"""daemon off; master_process off; worker_processes 1; pid {directory}/nginx.pid;
error_log {directory}/logs/error.log; events {{ worker_connections 64; }}
http {{ access_log off; client_body_temp_path {directory}/tmp; proxy_temp_path {directory}/tmp;
fastcgi_temp_path {directory}/tmp; uwsgi_temp_path {directory}/tmp; scgi_temp_path {directory}/tmp;
server {{ listen 127.0.0.1:44403 ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate {cert};
ssl_certificate_key {key}; root {directory}/html; }} }}
""")
    return ["nginx", "-p", str(directory), "-c", str(conf)]


def survey(name: str, argv: list[str], port: int, connections: int, profiles: ProfileStore) -> None:
    server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    target = TargetFinder(pids=(server.pid,)).inspect(server.pid)
    binary = target.binaries[0]
    profile = profiles.get(binary.build_id)
    functions = sorted(f for f in binary.image.functions if f.startswith("SSL_"))
    hits: Counter[str] = Counter()
    complete: dict[str, int] = defaultdict(int)
    memory = ProcessMemory(server.pid)
    with UprobeSession() as session:
        for index, function in enumerate(functions):
            event = f"s{index}"
            offset = binary.image.symbol_offset(function)
            _write(session.root / "uprobe_events", probe_definition(session.group, event, binary.path, offset, profile))
            session._functions[event] = (function, binary.path)
            _write(session.root / "instances" / session.instance / "events" / session.group / event / "enable", "1")
        for index in range(connections):
            version = ["--tlsv1.3"] if index % 2 == 0 else ["--tlsv1.2", "--tls-max", "1.2"]
            subprocess.run(["curl", "-sSk", *version, f"https://127.0.0.1:{port}/", "-o", os.devnull], check=True)
        time.sleep(0.3)
        events = []
        while batch := session.read(0.5):
            events += batch
        for event in events:
            if event.tgid != server.pid:
                continue
            hits[event.function] += 1
            secrets = read_secrets(event) if profile else None
            if secrets is not None and secrets.complete:
                complete[event.function] += 1
    memory.close()
    server.terminate()
    server.wait()
    print(f"\n{name} ({binary.path}, {binary.image.openssl_version}): {connections} connections")
    for function, count in sorted(hits.items(), key=lambda item: -item[1]):
        print(f"  {function:<34} {count / connections:6.1f} per connection, secrets complete in "
              f"{complete[function] / count:4.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    profiles = ProfileStore()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-subj", "/CN=survey", "-days", "2"], check=True, capture_output=True)
        servers = _servers(cert, key)
        servers["nginx"] = _nginx(directory / "nginx", cert, key)
        for (name, argv), port in zip(servers.items(), (44400, 44401, 44402, 44403)):
            survey(name, argv, port, args.connections, profiles)


if __name__ == "__main__":
    main()
