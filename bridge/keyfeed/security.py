"""CurveZMQ for the key feed: certificates, allow-lists, socket set-up, endpoints.

Certificates are pyzmq's ``zmq.auth`` files: ``NAME.key`` holds the public key,
``NAME.key_secret`` both keys (we write it mode 0600; pyzmq alone leaves it
world-readable).  The side that binds is the Curve *server* and admits only the
client public keys found in its allow-list directory (``*.key`` files), checked
by a ZAP authenticator thread; the side that connects is the Curve *client* and
must know the server's public key.  ``insecure`` turns all of it off, for labs.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from bridge.errors import TransportError

INSECURE_WARNING = (
    "tls-bridge: WARNING: --insecure: the key feed runs WITHOUT encryption or authentication. "
    "TLS session secrets cross the network in clear and anyone can publish or subscribe. Labs only."
)


@dataclass(frozen=True, slots=True)
class CurveServer:
    """The binding side's keys and the directory of client public keys it admits."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    allow_dir: Path


@dataclass(frozen=True, slots=True)
class CurveClient:
    """The connecting side's keys and the public key of the server it expects."""

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes = field(repr=False)


def generate_certificate(name: str, directory: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/NAME.key`` and ``DIR/NAME.key_secret`` (0600); refuse to overwrite."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise TransportError(f"certificate name {name!r}: use letters, digits, '.', '_' and '-'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public_path, secret_path = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not force and (public_path.exists() or secret_path.exists()):
        raise TransportError(f"{public_path} or {secret_path} exists already (--force replaces them)")
    old_umask = os.umask(0o077)
    try:
        public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old_umask)
    os.chmod(secret_file, 0o600)
    os.chmod(public_file, 0o644)
    return Path(public_file), Path(secret_file)


def _load(path: str | os.PathLike[str], *, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except OSError as exc:
        raise TransportError(f"cannot read certificate {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, IndexError):
        raise TransportError(f"{path} is not a ZeroMQ certificate (zmq.auth format)") from None
    if not public:
        raise TransportError(f"{path} is not a ZeroMQ certificate (zmq.auth format)")
    if need_secret and not secret:
        raise TransportError(f"{path} holds no secret key: give the NAME.key_secret file")
    if need_secret and os.stat(path).st_mode & 0o077:
        print(f"tls-bridge: warning: {path} is readable by other users; chmod 600 it", file=sys.stderr)
    return public, secret


def load_server(secret_path: str | os.PathLike[str], allow_dir: str | os.PathLike[str]) -> CurveServer:
    public, secret = _load(secret_path, need_secret=True)
    allow = Path(allow_dir)
    if not allow.is_dir():
        raise TransportError(f"allow-list {allow} is not a directory of client public keys (*.key)")
    if not any(allow.glob("*.key")):
        raise TransportError(f"allow-list {allow} holds no *.key file: no client could connect")
    assert secret is not None
    return CurveServer(public, secret, allow)


def load_client(server_key_path: str | os.PathLike[str], client_secret_path: str | os.PathLike[str]) -> CurveClient:
    server_public, _ = _load(server_key_path, need_secret=False)
    public, secret = _load(client_secret_path, need_secret=True)
    assert secret is not None
    return CurveClient(server_public, public, secret)


def secure_server(socket: zmq.Socket, server: CurveServer | None, domain: str) -> None:
    """Make a binding socket a Curve server checked against ``domain``'s allow-list."""
    if server is None:
        return
    socket.zap_domain = domain.encode()
    socket.curve_server = True
    socket.curve_publickey = server.public_key
    socket.curve_secretkey = server.secret_key


def secure_client(socket: zmq.Socket, client: CurveClient | None) -> None:
    if client is None:
        return
    socket.curve_serverkey = client.server_public_key
    socket.curve_publickey = client.public_key
    socket.curve_secretkey = client.secret_key


def start_authenticator(context: zmq.Context, allow: dict[str, Path]) -> ThreadAuthenticator | None:
    """A ZAP handler admitting, per domain, the public keys in that directory."""
    if not allow:
        return None
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    for domain, directory in allow.items():
        authenticator.configure_curve(domain=domain, location=str(directory))
    return authenticator


def snapshot_endpoint(endpoint: str) -> str:
    """The snapshot service beside a feed endpoint: TCP port + 1, or ``PATH.snapshot``.

    ``tcp://10.0.0.5:5555`` → ``tcp://10.0.0.5:5556``; ``ipc:///run/keys`` →
    ``ipc:///run/keys.snapshot``.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        raise TransportError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or not port.isdigit() or not 0 < int(port) < 65535:
            raise TransportError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT (a port below 65535)")
        return f"tcp://{host}:{int(port) + 1}"
    if scheme in ("ipc", "inproc"):
        return f"{endpoint}.snapshot"
    raise TransportError(f"endpoint {endpoint!r}: transport {scheme!r} is not supported (tcp, ipc, inproc)")


def check_endpoint(endpoint: str) -> str:
    snapshot_endpoint(endpoint)
    return endpoint


@dataclass(slots=True)
class HandshakeCounts:
    succeeded: int = 0
    failed_auth: int = 0  # the peer's key is not on the allow-list, or ours is not on theirs
    failed_protocol: int = 0  # e.g. Curve against plain text
    failed_other: int = 0
    disconnected: int = 0


class HandshakeMonitor:
    """Counts a socket's ZMTP handshake outcomes (libzmq's socket monitor), so a
    rejected key or a Curve/plain-text mismatch is reported instead of silence."""

    _EVENTS = (
        zmq.EVENT_HANDSHAKE_SUCCEEDED
        | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        | zmq.EVENT_DISCONNECTED
    )

    def __init__(self, socket: zmq.Socket) -> None:
        self.counts = HandshakeCounts()
        self.socket: zmq.Socket = socket.get_monitor_socket(self._EVENTS)

    def drain(self) -> list[str]:
        """Read pending events; returns a description of each failure."""
        from zmq.utils.monitor import recv_monitor_message

        failures = []
        while self.socket.poll(0):
            event = recv_monitor_message(self.socket, zmq.NOBLOCK)
            kind = event["event"]
            endpoint = event.get("endpoint", b"")
            endpoint = endpoint.decode(errors="replace") if isinstance(endpoint, bytes) else str(endpoint)
            counts = self.counts
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                counts.succeeded += 1
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                counts.failed_auth += 1
                failures.append(f"{endpoint}: authentication refused (key not on the allow-list, or wrong server key)")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                counts.failed_protocol += 1
                failures.append(f"{endpoint}: handshake failed (Curve against plain text, or wrong server key)")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                counts.failed_other += 1
                failures.append(f"{endpoint}: handshake failed")
            elif kind == zmq.EVENT_DISCONNECTED:
                counts.disconnected += 1
        return failures

    def close(self) -> None:
        self.socket.close(linger=0)


class FailureReporter:
    """Passes each distinct failure text to ``report`` at most once per ``interval``
    seconds: libzmq retries a refused connection ten times a second."""

    def __init__(self, report: Callable[[str], None] | None, *, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.report = report
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, text: str) -> None:
        now = self.clock()
        if now - self._last.get(text, -float("inf")) >= self.interval:
            if len(self._last) > 1024:
                self._last.clear()
            self._last[text] = now
            if self.report is not None:
                self.report(text)
