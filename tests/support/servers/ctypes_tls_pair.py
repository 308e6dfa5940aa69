"""Real TLS handshakes through one libssl (any build, loaded with ctypes), both
ends in this process over memory BIOs; the library's key log callback writes the
ground truth.  For harvesting wheel-bundled OpenSSL builds that no server here
links.

    python ctypes_tls_pair.py LIBSSL KEYLOG [--wire] [--tls13-only]

Prints "ready", waits for a line on stdin, runs the handshakes (TLS 1.3 with
three suites, TLS 1.2 with two), prints "done", and exits at end of input.

``--wire``: every handshake's records also cross a real TCP connection on
127.0.0.1 (client to server as the client sent them, and back), so a capture on
``lo`` sees each ClientHello, as for any server; the TLS objects still talk over
memory BIOs.  The TCP connections of the last ``KEEP_OPEN`` handshakes stay open
(the wire trigger finds a connection's process by its open socket).  ``--tls13-only``: only the TLS 1.3 handshakes.
"""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

from bridge.harvest.calibrate_ctypes import _Endpoint, _Handshaker, _Library, _self_signed

RUNS = (
    (0x0304, "TLS_AES_128_GCM_SHA256"),
    (0x0304, "TLS_AES_256_GCM_SHA384"),
    (0x0304, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x0303, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (0x0303, "ECDHE-ECDSA-AES256-GCM-SHA384"),
)


KEEP_OPEN = 32


class WiredHandshaker(_Handshaker):
    """Handshakes whose records are also sent over a TCP connection on 127.0.0.1."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self._client_ssl = 0
        self._sockets: dict[bool, socket.socket] = {}

    def handshake(self, version: int, suites: str) -> tuple[_Endpoint, _Endpoint]:
        client = socket.create_connection(self.listener.getsockname())
        server, _ = self.listener.accept()
        self._sockets = {True: client, False: server}
        self._open = [*getattr(self, "_open", []), client, server]
        while len(self._open) > 2 * KEEP_OPEN:
            self._open.pop(0).close()
        self._client_ssl = -1
        return super().handshake(version, suites)

    def close(self) -> None:
        super().close()
        for sock in getattr(self, "_open", []):
            sock.close()
        self.listener.close()

    def _endpoint(self, ctx: int, server: bool) -> _Endpoint:
        endpoint = super()._endpoint(ctx, server)
        if not server:
            self._client_ssl = endpoint.ssl
        return endpoint

    def _pump(self, source: _Endpoint, target: _Endpoint) -> int:
        lib = self.lib
        import ctypes

        moved = 0
        buffer = ctypes.create_string_buffer(65536)
        sender = self._sockets[source.ssl == self._client_ssl]
        receiver = self._sockets[source.ssl != self._client_ssl]
        while lib.BIO_ctrl(source.wbio, 10, 0, None) > 0:  # BIO_CTRL_PENDING
            count = lib.BIO_read(source.wbio, buffer, len(buffer))
            if count <= 0:
                break
            data = buffer.raw[:count]
            sender.sendall(data)
            received = 0
            while received < count:  # across the wire, then into the peer's BIO as received
                received += len(receiver.recv(count - received))
            lib.BIO_write(target.rbio, data, count)
            moved += count
        return moved


def main(libssl: str, keylog: str, *options: str) -> None:
    lib = _Library(libssl)
    runs = [run for run in RUNS if run[0] == 0x0304] if "--tls13-only" in options else RUNS
    with tempfile.TemporaryDirectory() as directory:
        cert, key = _self_signed(Path(directory))
        pair = (WiredHandshaker if "--wire" in options else _Handshaker)(lib, cert, key)
        print("ready", flush=True)
        sys.stdin.readline()
        for version, suites in runs:
            pair.handshake(version, suites)
        with open(keylog, "w") as handle:
            for random, secrets in pair.secrets.items():
                for label, secret in secrets.items():
                    handle.write(f"{label} {random.hex()} {secret.hex()}\n")
        print("done", flush=True)
        sys.stdin.read()
        pair.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
