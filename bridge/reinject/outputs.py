"""Where synthetic frames go: a pcap file, an interface (AF_PACKET), or PCAP-over-IP
clients.  Thin drivers; the frames come from :mod:`bridge.reinject.synthetic`.

Live outputs never block the decryptor indefinitely: each has a bounded queue
drained by its own thread, and what does not fit is dropped and counted.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from bridge.capture.frames import LINKTYPE_ETHERNET
from bridge.capture.pcapwriter import PcapWriter, pcap_global_header, pcap_record
from bridge.errors import BridgeError
from bridge.reinject.batchsend import BatchResult, FrameSender, open_sender

if TYPE_CHECKING:
    from bridge.reinject.synthetic import FrameBurst


class OutputError(BridgeError):
    """An output could not be opened or written."""


@dataclass(slots=True)
class OutputStats:
    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    errors: int = 0
    clients: int = 0
    last_error: str | None = field(default=None)


class FrameOutput(Protocol):
    stats: OutputStats

    def write(self, timestamp_ns: int, data: bytes) -> None: ...

    def write_burst(self, timestamp_ns: int, frames: list[bytes]) -> None:
        """Several frames in order, all at ``timestamp_ns`` (one call: the per-frame
        work in one loop)."""

    def write_frames(self, burst: FrameBurst) -> None:
        """The frames of one burst (:mod:`bridge.reinject.synthetic`), each at its
        time (:meth:`~bridge.reinject.synthetic.FrameBurst.stamped`: a burst of several
        plaintexts has several), made where the output keeps them when it can."""

    def close(self) -> None: ...


class PcapFileOutput:
    """``-w FILE``: Ethernet pcap with nanosecond timestamps taken from the original packets."""

    def __init__(self, path: str) -> None:
        self.stats = OutputStats()
        try:
            self._writer = PcapWriter(path, LINKTYPE_ETHERNET)
        except BridgeError as exc:
            raise OutputError(str(exc)) from None

    def write(self, timestamp_ns: int, data: bytes) -> None:
        self._writer.write(timestamp_ns, data)
        self.stats.frames += 1
        self.stats.bytes += len(data)

    def write_burst(self, timestamp_ns: int, frames: list[bytes]) -> None:
        self.stats.bytes += self._writer.write_burst(timestamp_ns, frames)
        self.stats.frames += len(frames)

    def write_frames(self, burst: FrameBurst) -> None:
        # a burst of segments is built straight into the writer's buffer
        records, size = self._writer.extend(burst.pack_pcap)
        self.stats.frames += records
        self.stats.bytes += size

    def close(self) -> None:
        self._writer.close()


#: a frame refused for want of room, not for what it is
_NO_ROOM = frozenset((errno.ENOBUFS, errno.EAGAIN))


class InterfaceOutput:
    """``--inject IFACE``: frames sent on an interface with an AF_PACKET socket.

    The deployment default is a ``dummy`` interface (``ip link add tls0 type
    dummy``) that Suricata/Zeek capture on; any interface works (veth, tap).

    Frames go to the kernel in the caller's thread, a burst (the frames of one
    event) per ``sendmmsg`` (:mod:`bridge.reinject.batchsend`, which says why not
    a TX ring), without waiting: a frame the kernel has no room for (``ENOBUFS``,
    ``EAGAIN``: the socket's send buffer or the device's queue is full) is
    dropped and counted (``stats.dropped``); any other refusal is an error,
    counted per frame (``stats.errors``, ``stats.last_error``).  No queue and no
    thread: a sensor worker is then one core (with a sender thread, one worker
    took 1.1-1.2 cores and two workers on two cores ran at x1.3-1.7 one,
    ``bench/bench_sensor.py --prefill``), no GIL changes hands per batch, and the
    capture loop never waits on the injection interface.
    """

    def __init__(self, interface: str, *, sender: Callable[[socket.socket], FrameSender] = open_sender) -> None:
        self.interface = interface
        self.stats = OutputStats()
        try:
            self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._socket.bind((interface, 0))
        except OSError as exc:
            hint = " (needs root or CAP_NET_RAW)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
            raise OutputError(f"cannot inject on {interface}: {exc.strerror}{hint}") from None
        self._socket.setblocking(False)  # no room: EAGAIN or ENOBUFS, counted, never a wait
        try:
            self._sender = sender(self._socket)
        except OSError as exc:
            self._socket.close()
            raise OutputError(f"cannot inject on {interface}: {exc.strerror or exc}") from None
        #: "sendmmsg" (batches) or "send" (one system call per frame)
        self.method = self._sender.method

    def write(self, timestamp_ns: int, data: bytes) -> None:
        self._count(self._sender.send((data,)))

    def write_burst(self, timestamp_ns: int, frames: list[bytes]) -> None:
        self._count(self._sender.send(frames))

    def write_frames(self, burst: FrameBurst) -> None:
        self._count(self._sender.send(burst.frames))

    def _count(self, result: BatchResult) -> None:
        stats = self.stats
        stats.frames += result.frames
        stats.bytes += result.bytes
        for code in result.errors:
            if code in _NO_ROOM:
                stats.dropped += 1
            else:
                stats.errors += 1
                stats.last_error = os.strerror(code)

    def close(self) -> None:
        self._socket.close()


class _PcapClient:
    def __init__(self, conn: socket.socket, limit: int, stats: OutputStats) -> None:
        self.conn = conn
        self.limit = limit
        self.stats = stats
        self.pending: deque[bytes] = deque()
        self.ready = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._send_loop, daemon=True)

    def offer(self, record: bytes) -> None:
        with self.ready:
            if len(self.pending) >= self.limit:
                self.stats.dropped += 1
                return
            self.pending.append(record)
            self.ready.notify()

    def _send_loop(self) -> None:
        try:
            self.conn.sendall(pcap_global_header(LINKTYPE_ETHERNET))
            while True:
                with self.ready:
                    while not self.pending and not self.closed:
                        self.ready.wait()
                    if not self.pending and self.closed:
                        return
                    batch = b"".join(self.pending)
                    self.pending.clear()
                self.conn.sendall(batch)
        except OSError:
            pass  # the client went away
        finally:
            self.closed = True
            self.conn.close()

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify()
        self.thread.join(timeout=10)


class PcapOverIpOutput:
    """``--pcap-over-ip HOST:PORT``: a TCP server streaming a pcap (global header,
    then records) to every connected client, as Arkime, NetworkMiner and
    PolarProxy expect.  A slow client loses records (counted), never the sensor."""

    def __init__(self, host: str, port: int, *, queue_records: int = 65536) -> None:
        self.stats = OutputStats()
        self._limit = queue_records
        self._clients: list[_PcapClient] = []
        self._lock = threading.Lock()
        try:
            self._server = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:
            raise OutputError(f"cannot listen on {host}:{port} for PCAP-over-IP: {exc.strerror}") from None
        self.address = self._server.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name="pcap-over-ip", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _PcapClient(conn, self._limit, self.stats)
            client.thread.start()  # before close() can see it (and join it)
            with self._lock:
                self._clients = [c for c in self._clients if not c.closed] + [client]
                self.stats.clients = len(self._clients)

    def write_burst(self, timestamp_ns: int, frames: list[bytes]) -> None:
        for frame in frames:
            self.write(timestamp_ns, frame)

    def write_frames(self, burst: FrameBurst) -> None:
        for timestamp_ns, frame in burst.stamped():  # a burst of several plaintexts: each one's frames at its time
            self.write(timestamp_ns, frame)

    def write(self, timestamp_ns: int, data: bytes) -> None:
        record = pcap_record(timestamp_ns, data)
        with self._lock:
            clients = self._clients
        for client in clients:
            if not client.closed:
                client.offer(record)
        self.stats.frames += 1
        self.stats.bytes += len(data)

    def close(self) -> None:
        self._server.close()
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
