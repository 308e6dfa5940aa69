"""Key feed test helpers: certificates, free endpoints, and ``tls-bridge`` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.keyfeed.security import generate_certificate

BRIDGE = [sys.executable, "-m", "bridge.cli"]
ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FeedCerts:
    """A publisher certificate, an allow-list with one sensor, and an intruder not on it."""

    publisher_public: Path
    publisher_secret: Path
    allow_dir: Path
    sensor_secret: Path
    intruder_secret: Path

    def publisher_args(self) -> list[str]:
        return ["--server-cert", str(self.publisher_secret), "--allow", str(self.allow_dir)]

    def sensor_args(self, *, secret: Path | None = None) -> list[str]:
        return ["--server-key", str(self.publisher_public), "--client-cert", str(secret or self.sensor_secret)]


def make_feed_certs(directory: Path) -> FeedCerts:
    pub_public, pub_secret = generate_certificate("harvester", directory / "server")
    _, sensor_secret = generate_certificate("sensor", directory / "sensors")
    _, intruder_secret = generate_certificate("intruder", directory / "others")
    return FeedCerts(pub_public, pub_secret, directory / "sensors", sensor_secret, intruder_secret)


def free_tcp_pair(host: str = "127.0.0.1") -> int:
    """A port P such that P and P + 1 are free (feed and snapshot service)."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind((host, 0))
            port = first.getsockname()[1]
            if port >= 65534:
                continue
            with socket.socket() as second:
                try:
                    second.bind((host, port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


class BridgeProcess:
    """A ``tls-bridge`` subprocess with stderr in a file."""

    def __init__(self, args: list[str], log: Path, *, prefix: list[str] | None = None, cwd: Path = ROOT) -> None:
        self.log = log
        self._handle = open(log, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen((prefix or []) + BRIDGE + args, stdout=subprocess.DEVNULL, stderr=self._handle,
                                     cwd=cwd, env=env)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not printed (rc={self.proc.poll()}):\n{self.text()}")

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._handle.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.wait(timeout)

    def __enter__(self) -> BridgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)


def keylog_line_set(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}


def write_random_keylog(path: Path, connections: int, *, seed: int = 1) -> list[str]:
    """A key log with TLS 1.2 and 1.3 connections (random secrets); returns its lines."""
    import random

    rng = random.Random(seed)
    lines = []
    for index in range(connections):
        random_hex = rng.randbytes(32).hex()
        if index % 2:
            lines.append(f"CLIENT_RANDOM {random_hex} {rng.randbytes(48).hex()}")
        else:
            for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                          "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"):
                lines.append(f"{label} {random_hex} {rng.randbytes(32).hex()}")
    path.write_text("".join(line + "\n" for line in lines))
    return lines
