"""The gdbstub watchdog: when the harvester ends, however it ends, remove its
breakpoints and let the guest run.

Started by :class:`~bridge.vmi.gdb_hooks.GdbHooks` with the gdb connection's socket
(inherited) and a pipe on stdin, on which the harvester writes its breakpoint list
(a JSON line each time it changes).  End of file: the harvester is gone.  Then:
interrupt, remove each breakpoint, detach (QEMU resumes the guest), and, as a last
resort, ``cont`` on the QMP monitor.

    python -m bridge.vmi.gdb_watchdog FD [QMP_SOCKET]
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time

from bridge.vmi.gdbremote import PacketReader, frame


def _drain(sock: socket.socket, seconds: float) -> None:
    reader = PacketReader()
    deadline = time.monotonic() + seconds
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return
        if not data:
            return
        for packet in reader.feed(data):
            sock.sendall(b"+")


def _qmp_cont(path: str) -> None:
    try:
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.settimeout(3)
            qmp.connect(path)
            qmp.recv(65536)
            qmp.sendall(b'{"execute": "qmp_capabilities"}\n')
            qmp.recv(65536)
            qmp.sendall(b'{"execute": "cont"}\n')
            qmp.recv(65536)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    fd, qmp = int(argv[0]), (argv[1] if len(argv) > 1 else "")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    points: list[dict] | None = []
    for line in sys.stdin:
        try:
            points = json.loads(line)
        except ValueError:
            continue
    if points is None:
        return 0  # the harvester cleaned up itself ("null")
    sock = socket.socket(fileno=fd)
    try:
        if points:
            sock.sendall(b"\x03")
            _drain(sock, 0.5)
            for point in points:
                kind = b"1" if point.get("hardware") else b"0"
                sock.sendall(frame(b"z" + kind + b",%x,1" % point["address"]))
                _drain(sock, 0.1)
        sock.sendall(frame(b"D"))
        _drain(sock, 0.3)
    except OSError:
        pass
    if qmp:
        _qmp_cont(qmp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
