"""Live capture from a Linux network interface with an AF_PACKET socket.

A thin driver.  By default the kernel writes frames into a TPACKET_V3 ring
(``PACKET_RX_RING``) shared with us through ``mmap``: it fills one block of
frames at a time and hands the block over whole (when it is full or after
``block_timeout`` seconds); we copy the block's frames out, give the block
back and ``poll`` only when the next block is not ready yet.  No system call
per frame, which is what lets one worker follow a busy mirror port.  The walk
over a block's frames is C, :func:`bridge.capture._records.tpacket_v3`: one copy
of the block's frames into one buffer, a
:class:`~bridge.capture.pcapfile.FrameBatch` that the compiled engine reads in
place (no :class:`Frame` made for a frame it takes); the rest is plain Python over
``mmap`` and ``struct`` (bench/bench_capture.py measures both paths against
each other).  The ring is ``buffer_bytes`` of kernel
memory taken when the capture opens (a receive buffer is only a limit); its
shape is :func:`ring_geometry`'s.  Reading a block's status and then its frames
relies on the CPU not reordering those loads (x86-64's ordering; Python issues no
barrier).

If the ring cannot be set up (no memory for it, a kernel without TPACKET_V3),
the capture says so in the log (``bridge.capture`` logger) and falls back to one
``recvmsg_into`` per frame (``ring=False`` asks for that path directly).

Either way:

* the kernel receive timestamp (ring header, or ``SO_TIMESTAMPNS`` ancillary
  data; ``time.time_ns()`` if absent);
* the original frame length, and VLAN tags the NIC/driver stripped (VLAN
  offload: the ring header's ``tp_vlan_tci``/``tp_vlan_tpid`` with
  ``TP_STATUS_VLAN_VALID``, or ``PACKET_AUXDATA`` on the recv path): the
  802.1Q/802.1ad tag is re-inserted, as libpcap does, so the frame looks like it
  did on the wire;
* iteration ends within ``poll_interval`` once :meth:`AfPacketCapture.stop` is
  called or the ``stop_event`` is set.

Two ways to consume: iterating yields one :class:`Frame` at a time (``None``
after each quiet ``poll_interval`` with ``idle_marker``); :meth:`batches`
yields the frames of one ring block as a list (``None`` likewise).

Direction: on a mirror (SPAN) port every frame arrives as PACKET_HOST/OTHERHOST,
but frames this host *sends* on the interface are delivered too (PACKET_OUTGOING);
they are kept by default (``ignore_outgoing=True`` drops them in the kernel via
PACKET_IGNORE_OUTGOING, Linux >= 4.20).  Frames sent through this very socket are
never looped back to it by the kernel.

Counters: ``frames`` (yielded) and ``drops`` (kernel drops: ring or receive
buffer full, accumulated from PACKET_STATISTICS, which resets on every read).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bridge.capture import _records
from bridge.capture.frames import LINKTYPE_ETHERNET, Frame, make_frame
from bridge.errors import BridgeError

__all__ = ["AfPacketCapture", "CaptureDeviceError", "RingGeometry", "insert_vlan_tag", "ring_geometry"]

log = logging.getLogger("bridge.capture")

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
TPACKET_V3 = 2
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_RCVBUFFORCE = 33
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40

_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
# tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci, tp_vlan_tpid
_AUXDATA = struct.Struct("@IIIHHHH")
_MREQ = struct.Struct("@iHH8s")  # struct packet_mreq
_STATS = struct.Struct("@II")  # struct tpacket_stats: tp_packets, tp_drops (the recv path)
_STATS_V3 = struct.Struct("@III")  # struct tpacket_stats_v3: tp_packets, tp_drops, tp_freeze_q_cnt
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_AUXDATA.size)

# struct tpacket_req3: block size, block count, frame size, frame count, block retire
# timeout (ms), private area size, feature request word
_REQ3 = struct.Struct("@7I")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status
# (+8), num_pkts, offset_to_first_pkt; a block's frames (struct tpacket3_hdr) are read by
# bridge/capture/_records.c
_BLOCK_STATUS = struct.Struct("@I")
_BLOCK_STATUS_OFFSET = 8
_TPACKET3_HDRLEN = 48 + 20  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr)) + sizeof(struct sockaddr_ll)
_BLOCK_HEADER = 48  # BLK_HDR_LEN: ALIGN(sizeof(struct tpacket_block_desc), 8)
_RING_FRAME = 2048  # tp_frame_size: the kernel only checks it (V3 packs frames by their size)
_MIN_BLOCK = 1 << 16
_TARGET_BLOCK = 1 << 18
_MAX_BLOCK = 1 << 20
_MIN_BLOCKS = 4


class _Closed(Exception):
    """The socket was closed under a running iteration (which then ends)."""


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


@dataclass(frozen=True, slots=True)
class RingGeometry:
    """The shape of a TPACKET_V3 receive ring."""

    block_size: int
    block_count: int
    frame_size: int

    @property
    def frame_count(self) -> int:
        return self.block_size // self.frame_size * self.block_count

    @property
    def size(self) -> int:
        return self.block_size * self.block_count

    @property
    def max_frame(self) -> int:
        """The longest frame a block holds whole (longer ones are truncated by the kernel)."""
        return self.block_size - _BLOCK_HEADER - _TPACKET3_HDRLEN - 16


def ring_geometry(snaplen: int, buffer_bytes: int, page_size: int = mmap.PAGESIZE) -> RingGeometry:
    """Blocks of a power of two, large enough for one ``snaplen`` frame, and of 256 KiB
    where ``buffer_bytes`` still holds 16 of them; at least ``_MIN_BLOCKS`` blocks.

    Why not larger: the kernel hands over a block when it is full or after the block
    timeout, so on a slow link every block holds only the frames of one timeout, and
    how long the reader may stall before frames are lost is the number of blocks
    times the timeout (256 KiB blocks: 128 of them, 1.3 s at 10 ms, in 32 MiB).
    Why not smaller: one block is one batch and one poll() (~165 full-size frames)."""
    block = max(_MIN_BLOCK, page_size)
    need = snaplen + _BLOCK_HEADER + _TPACKET3_HDRLEN + 16
    while block < _MAX_BLOCK and block < need:
        block *= 2
    while block < _TARGET_BLOCK and buffer_bytes // (block * 2) >= 16:
        block *= 2
    count = max(_MIN_BLOCKS, buffer_bytes // block)
    return RingGeometry(block, count, _RING_FRAME)


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
        ring: bool = True,
        block_timeout: float | None = None,
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
        #: "ring" (TPACKET_V3 blocks) or "recv" (one system call per frame)
        self.mode = "recv"
        #: why the ring is not used (None when it is, or when ring=False asked for recv)
        self.fallback_reason: str | None = None
        self.geometry: RingGeometry | None = None
        self._ring: mmap.mmap | None = None
        self._block = 0
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
            if ring:
                # A block goes to the reader when full or after block_timeout (default: 10 ms,
                # or poll_interval when shorter: the harvesters' wire triggers want frames soon).
                timeout = min(0.01, poll_interval) if block_timeout is None else block_timeout
                self._setup_ring(sock, snaplen, buffer_bytes, max(1, round(timeout * 1000)))
            self._setup(sock, promiscuous, buffer_bytes, ignore_outgoing)
            if fanout_group is not None:
                # Workers of one group share the interface's packets by flow hash
                # (symmetric: both directions of a connection go to the same worker).
                mode = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG
                value = (fanout_group & 0xFFFF) | mode << 16  # above INT_MAX with the DEFRAG flag: pack it
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, value.to_bytes(4, "little"))
        except OSError as exc:
            self._close_ring()
            sock.close()
            raise _device_error(interface, "start capturing", exc) from exc
        except BaseException:
            self._close_ring()
            sock.close()
            raise
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)

    def _setup_ring(self, sock: socket.socket, snaplen: int, buffer_bytes: int, timeout_ms: int) -> None:
        geometry = ring_geometry(snaplen, buffer_bytes)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            request = _REQ3.pack(geometry.block_size, geometry.block_count, geometry.frame_size,
                                 geometry.frame_count, timeout_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
            self._ring = mmap.mmap(sock.fileno(), geometry.size, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise
            self.fallback_reason = (f"no TPACKET_V3 ring of {geometry.block_count} x {geometry.block_size >> 10} KiB "
                                    f"({exc.strerror or exc})")
            log.warning("capture on %s: %s; receiving one frame per system call instead",
                        self.interface, self.fallback_reason)
            self._close_ring()
            try:  # a ring without its mapping would take every frame from recv: remove it
                sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ3.pack(0, 0, 0, 0, 0, 0, 0))
            except OSError:
                pass  # there was none
            return
        self.geometry = geometry
        self.mode = "ring"

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _setup(self, sock: socket.socket, promiscuous: bool, buffer_bytes: int, ignore_outgoing: bool) -> None:
        if self._ring is None:
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
            self._close_ring()
            self._sock.close()

    def __enter__(self) -> AfPacketCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- counters
    def _refresh_stats(self) -> None:
        if self._ring is not None:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
            packets, drops, _freezes = _STATS_V3.unpack(raw)
        else:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
            packets, drops = _STATS.unpack(raw)
        self._kernel_packets += packets
        self._drops += drops

    @property
    def drops(self) -> int:
        """Frames the kernel dropped (ring or receive buffer full) since the socket opened."""
        if self._sock.fileno() >= 0:
            self._refresh_stats()
        return self._drops

    # ---- capture
    def __iter__(self) -> Iterator[Frame | None]:
        if self._ring is None:
            yield from self._receive()
            return
        for batch in self._blocks():
            if batch is None:
                yield None
            else:
                yield from batch

    def batches(self) -> Iterator[Sequence[Frame] | None]:
        """The frames in batches: a FrameBatch per ring block (a list of one frame
        on the recv path); ``None`` after a quiet ``poll_interval`` with ``idle_marker``."""
        if self._ring is None:
            for frame in self._receive():
                yield None if frame is None else [frame]
            return
        yield from self._blocks()

    def _wait(self, timeout_ms: int) -> bool:
        """poll() for the next block; False when it timed out.  A socket error (the
        interface went away) is raised as CaptureDeviceError."""
        try:
            events = self._poller.poll(timeout_ms)
        except InterruptedError:
            return True
        for _fd, mask in events:
            if mask & (select.POLLERR | select.POLLNVAL):
                if self._sock.fileno() < 0:
                    raise _Closed
                code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise _device_error(self.interface, "receive", OSError(code, os.strerror(code)))
        return bool(events)

    def _blocks(self) -> Iterator[Sequence[Frame] | None]:
        ring = self._ring
        try:
            yield from self._walk_blocks()
        except _Closed:  # close() from another thread
            return
        except ValueError:  # the same, seen as the ring unmapped
            if ring is None or not ring.closed:
                raise

    def _walk_blocks(self) -> Iterator[Sequence[Frame] | None]:
        ring = self._ring
        geometry = self.geometry
        assert ring is not None and geometry is not None
        block_size = geometry.block_size
        block_count = geometry.block_count
        idle_marker = self.idle_marker
        stop = self._stop
        snaplen = self.snaplen
        timeout_ms = max(1, int(self.poll_interval * 1000))
        block_status = _BLOCK_STATUS.unpack_from
        release = _BLOCK_STATUS.pack_into
        block_frames = _records.tpacket_v3
        wait = self._wait
        index = self._block
        while not stop.is_set():
            base = index * block_size
            if not block_status(ring, base + _BLOCK_STATUS_OFFSET)[0] & TP_STATUS_USER:
                if not wait(timeout_ms) and idle_marker:
                    yield None
                continue
            batch = block_frames(Frame, ring, base, snaplen)  # the per-frame loop, compiled
            release(ring, base + _BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
            index = self._block = (index + 1) % block_count
            if batch:
                self.frames += len(batch)
                yield batch

    def _receive(self) -> Iterator[Frame | None]:
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
