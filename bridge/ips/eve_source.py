"""Where Suricata's eve records come from: a file it appends to, or a unix socket
it writes to (eve-log ``filetype: unix_stream`` or ``unix_dgram``).

Suricata is the client of an eve unix socket: it connects to ``filename`` (and
reconnects when the listener comes back), so we create and listen on the socket.
A stream carries newline-terminated records; a datagram socket one record per
datagram.  Every source yields text lines and ends when ``stop`` is set.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bridge.errors import BridgeError

MAX_LINE = 1 << 20
"""A longer eve record (no newline within 1 MiB) is dropped and counted: a
misbehaving writer must not grow our buffer without bound."""


class EveSourceError(BridgeError):
    """The eve source cannot be opened."""


class EveLines:
    """Split a byte stream into lines; bounded; counts what it had to drop."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.oversized = 0
        self._partial = b""
        self._discarding = False

    def feed(self, data: bytes) -> list[str]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if self._discarding and lines:  # the oversized record ends with the first newline
            lines.pop(0)
            self._discarding = False
        if len(self._partial) > self.max_line:
            self.oversized += 1
            self._partial, self._discarding = b"", True
        return [line.decode("utf-8", "replace") for line in lines if line]


def follow_file(path: str, stop: threading.Event, *, from_start: bool, poll_interval: float = 0.01) -> Iterator[str]:
    """Lines appended to ``path`` (``tail -F``): waits for the file to appear, and
    reopens it when it is rotated (a new inode at the path) or truncated."""
    while not stop.is_set():
        while not os.path.exists(path):
            from_start = True  # a file that appears after we started holds only new lines
            if stop.wait(poll_interval * 10):
                return
        with open(path, "rb") as handle:
            if not from_start:
                handle.seek(0, os.SEEK_END)
            from_start = True  # a rotated file is read from its beginning
            lines = EveLines()
            inode = os.fstat(handle.fileno()).st_ino
            while not stop.is_set():
                chunk = handle.read(1 << 16)
                if chunk:
                    yield from lines.feed(chunk)
                    continue
                if _rotated(path, inode, handle.tell()):
                    break
                time.sleep(poll_interval)


def _rotated(path: str, inode: int, position: int) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # moved away, the new one not there yet: keep reading the old
    return now.st_ino != inode or now.st_size < position


def listen_unix(path: str, stop: threading.Event, *, kind: str = "stream", mode: int = 0o660,
                poll_interval: float = 0.1) -> Iterator[str]:
    """Lines Suricata writes to the unix socket we create at ``path``."""
    if kind not in ("stream", "dgram"):
        raise EveSourceError(f"eve socket type {kind!r}: expected stream or dgram")
    server = _bind(path, socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM, mode)
    try:
        yield from (_serve_stream(server, stop, poll_interval) if kind == "stream"
                    else _serve_dgram(server, stop, poll_interval))
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _bind(path: str, kind: int, mode: int) -> socket.socket:
    existing = Path(path)
    if existing.exists() or existing.is_symlink():
        if not stat.S_ISSOCK(existing.lstat().st_mode):
            raise EveSourceError(f"{path} exists and is not a socket: refusing to replace it")
        existing.unlink()  # a stale socket from an earlier run
    server = socket.socket(socket.AF_UNIX, kind)
    try:
        server.bind(path)
    except OSError as error:
        server.close()
        raise EveSourceError(f"cannot create the eve socket {path}: {error.strerror}") from error
    os.chmod(path, mode)
    if kind == socket.SOCK_STREAM:
        server.listen(4)
    server.setblocking(False)
    return server


def _serve_stream(server: socket.socket, stop: threading.Event, poll_interval: float) -> Iterator[str]:
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    readers: dict[socket.socket, EveLines] = {}
    try:
        while not stop.is_set():
            for key, _ in selector.select(poll_interval):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is server:
                    client, _ = server.accept()
                    client.setblocking(False)
                    readers[client] = EveLines()
                    selector.register(client, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:  # Suricata closed (restart, log rotation): it reconnects
                    selector.unregister(sock)
                    readers.pop(sock)
                    sock.close()
                    continue
                yield from readers[sock].feed(data)
    finally:
        for sock in readers:
            sock.close()
        selector.close()


def _serve_dgram(server: socket.socket, stop: threading.Event, poll_interval: float) -> Iterator[str]:
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ)
    try:
        while not stop.is_set():
            if not selector.select(poll_interval):
                continue
            try:
                data = server.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                continue
            for line in data.split(b"\n"):
                if line.strip():
                    yield line.decode("utf-8", "replace")
    finally:
        selector.close()
