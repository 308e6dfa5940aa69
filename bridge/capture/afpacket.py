"""Live capture from a Linux network interface with an AF_PACKET socket.

A thin driver: one ``recvmsg_into`` per frame (into one reused buffer), with

* the kernel receive timestamp from ``SO_TIMESTAMPNS`` ancillary data
  (``time.time_ns()`` if absent);
* ``PACKET_AUXDATA`` for the original frame length and for VLAN tags the NIC/
  driver stripped (VLAN offload): the 802.1Q/802.1ad tag is re-inserted, as
  libpcap does, so the frame looks like it did on the wire;
* non-blocking reads plus ``poll`` with a timeout, so iteration ends promptly
  once :meth:`AfPacketCapture.stop` is called or the ``stop_event`` is set.

Direction: on a mirror (SPAN) port every frame arrives as PACKET_HOST/OTHERHOST,
but frames this host *sends* on the interface are delivered too (PACKET_OUTGOING);
they are kept by default (``ignore_outgoing=True`` drops them in the kernel via
PACKET_IGNORE_OUTGOING, Linux >= 4.20).  Frames sent through this very socket are
never looped back to it by the kernel.

Counters: ``frames`` (yielded) and ``drops`` (kernel drops, accumulated from
PACKET_STATISTICS, which resets on every read).
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator

from bridge.capture.frames import LINKTYPE_ETHERNET, Frame, make_frame
from bridge.errors import BridgeError

__all__ = ["AfPacketCapture", "CaptureDeviceError"]

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RCVBUFFORCE = 33
ETH_P_ALL = 0x0003
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
# tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid
_AUXDATA = struct.Struct("@IIIHHHH")
_MREQ = struct.Struct("@iHH8s")  # struct packet_mreq
_STATS = struct.Struct("@II")  # struct tpacket_stats: tp_packets, tp_drops
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)


class CaptureDeviceError(BridgeError):
    """A live capture device cannot be opened or read (missing interface, no permission)."""


def _device_error(interface: str, action: str, exc: OSError) -> CaptureDeviceError:
    if exc.errno in (errno.EPERM, errno.EACCES):
        hint = " (needs root or CAP_NET_RAW)"
    elif exc.errno in (errno.ENODEV, errno.ENXIO):
        hint = " (no such interface)"
    else:
        hint = ""
    return CaptureDeviceError(f"cannot {action} on interface {interface!r}: {exc.strerror or exc}{hint}")


def insert_vlan_tag(data: bytes, tci: int, tpid: int = 0x8100) -> bytes:
    """Re-insert an 802.1Q tag (stripped by VLAN offload) after the MAC addresses."""
    return data[:12] + struct.pack("!HH", tpid, tci) + data[12:]


class AfPacketCapture:
    """Iterate Ethernet frames captured live on ``interface``."""

    linktype = LINKTYPE_ETHERNET

    def __init__(
        self,
        interface: str,
        *,
        snaplen: int = 262144,
        promiscuous: bool = True,
        buffer_bytes: int = 32 * 1024 * 1024,
        ignore_outgoing: bool = False,
        stop_event: threading.Event | None = None,
        poll_interval: float = 0.2,
        idle_marker: bool = False,
        fanout_group: int | None = None,
    ) -> None:
        self.interface = interface
        self.snaplen = snaplen
        self.poll_interval = poll_interval
        #: Yield None after each ``poll_interval`` without a frame, so the consumer
        #: can do timed work (keys that arrived, idle connections) on a quiet link.
        self.idle_marker = idle_marker
        self._stop = stop_event if stop_event is not None else threading.Event()
        self.frames = 0
        self._drops = 0
        self._kernel_packets = 0
        try:
            self.ifindex = socket.if_nametoindex(interface)
        except OSError as exc:
            raise CaptureDeviceError(f"no such network interface: {interface!r}") from exc
        try:
            # protocol 0: receive nothing until bound, so no frames of other interfaces sneak in
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as exc:
            raise _device_error(interface, "open an AF_PACKET socket", exc) from exc
        self._sock = sock
        try:
            self._setup(sock, promiscuous, buffer_bytes, ignore_outgoing)
            if fanout_group is not None:
                # Workers of one group share the interface's packets by flow hash
                # (symmetric: both directions of a connection go to the same worker).
                mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
                value = (fanout_group & 0xFFFF) | mode << 16  # above INT_MAX with the DEFRAG flag: pack it
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, value.to_bytes(4, "little"))
        except OSError as exc:
            sock.close()
            raise _device_error(interface, "start capturing", exc) from exc
        except BaseException:
            sock.close()
            raise
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)

    def _setup(self, sock: socket.socket, promiscuous: bool, buffer_bytes: int, ignore_outgoing: bool) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, buffer_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        if ignore_outgoing:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.bind((self.interface, ETH_P_ALL))
        if promiscuous:
            mreq = _MREQ.pack(self.ifindex, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)

    # ---- control
    def stop(self) -> None:
        """Make iteration end (from any thread) within ``poll_interval``."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Close the socket. Call after iteration ended (use stop() from other threads)."""
        if self._sock.fileno() >= 0:
            try:
                self._refresh_stats()
            except OSError:
                pass
            self._sock.close()

    def __enter__(self) -> AfPacketCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- counters
    def _refresh_stats(self) -> None:
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        packets, drops = _STATS.unpack(raw)
        self._kernel_packets += packets
        self._drops += drops

    @property
    def drops(self) -> int:
        """Frames the kernel dropped (receive buffer full) since the socket opened."""
        if self._sock.fileno() >= 0:
            self._refresh_stats()
        return self._drops

    # ---- capture
    def __iter__(self) -> Iterator[Frame | None]:
        sock = self._sock
        idle_marker = self.idle_marker
        recvmsg_into = sock.recvmsg_into
        poll = self._poller.poll
        stop = self._stop
        timeout_ms = max(1, int(self.poll_interval * 1000))
        # One receive buffer for every frame: recvmsg(snaplen) would allocate (and
        # page-fault in) snaplen bytes per frame, 256 KiB by default.
        buffer = bytearray(self.snaplen)
        buffers = [buffer]
        view = memoryview(buffer)
        while not stop.is_set():
            try:
                size, ancdata, _flags, _addr = recvmsg_into(buffers, _CMSG_SPACE)
            except BlockingIOError:
                if not poll(timeout_ms) and idle_marker:
                    yield None
                continue
            except InterruptedError:
                continue
            except OSError as exc:
                if sock.fileno() < 0:
                    return
                raise _device_error(self.interface, "receive", exc) from exc
            data = bytes(view[:size])
            ts = 0
            orig_len = size
            for level, ctype, cdata in ancdata:
                if level == socket.SOL_SOCKET and ctype == SCM_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    ts = sec * 1_000_000_000 + nsec
                elif level == SOL_PACKET and ctype == PACKET_AUXDATA:
                    status, tp_len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(cdata)
                    orig_len = tp_len
                    if status & TP_STATUS_VLAN_VALID:
                        if not status & TP_STATUS_VLAN_TPID_VALID:
                            tpid = 0x8100
                        data = insert_vlan_tag(data, tci, tpid)
                        orig_len += 4
            if not ts:
                ts = time.time_ns()
            self.frames += 1
            yield make_frame(ts, LINKTYPE_ETHERNET, data, orig_len)
