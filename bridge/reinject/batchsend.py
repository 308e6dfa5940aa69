"""Frames handed to the kernel many at a time: ``sendmmsg(2)`` on an AF_PACKET socket.

A thin driver.  :class:`MultiSender` copies a batch of frames into one staging
buffer, points one ``struct mmsghdr`` (one ``iovec``) at each, and sends them
all with one ``sendmmsg`` call from libc through :mod:`ctypes` (the call
releases the GIL).  The kernel returns how many went out; a frame it refused
is counted with its ``errno`` and the rest of the batch is sent after it, so
every frame is accounted for exactly as with one ``send()`` per frame.

Why not a ``PACKET_TX_RING``: measured beside it on a veth
(bench/bench_capture.py keeps the candidate), the ring sent 0.4-1.2 times as
many frames per second in five runs (1.0 with 66-byte frames; the kernel's
per-frame work dominates either way), with the same CPU in the writing thread:
no clear gain.  And a TX ring has fixed slots (a 65000-byte frame of ``--mtu
65000`` needs a slot that large), and a frame the kernel refuses either stalls
the ring or, with ``PACKET_LOSS``, is skipped without a word; ``sendmmsg``
keeps the per-frame count and error.

:class:`SingleSender` is the same interface over one ``send()`` per frame, for
a libc without ``sendmmsg``.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["BatchResult", "FrameSender", "MultiSender", "SingleSender", "open_sender"]

#: the kernel's limit on messages per sendmmsg call (UIO_MAXIOV)
MAX_BATCH = 1024
#: staging buffer: a batch ends when its frames would not fit
STAGE_BYTES = 2 << 20

_IOVEC = struct.Struct("@QQ")  # struct iovec: iov_base, iov_len
_MMSGHDR_SIZE = 64  # struct mmsghdr on 64-bit Linux: struct msghdr (56) + msg_len + padding
_MSG_IOV_OFFSET = 16  # msghdr: msg_name (8), msg_namelen (4 + 4 padding), then msg_iov and msg_iovlen


@dataclass(slots=True)
class BatchResult:
    """What became of one batch: frames and bytes sent, and the errno of each refused frame."""

    frames: int = 0
    bytes: int = 0
    errors: list[int] = field(default_factory=list)


class FrameSender(Protocol):
    method: str

    def send(self, frames: Sequence[bytes]) -> BatchResult: ...


def _libc_sendmmsg() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


class MultiSender:
    """``sendmmsg`` on ``sock`` (an AF_PACKET socket bound to the interface)."""

    method = "sendmmsg"

    def __init__(self, sock: socket.socket, sendmmsg: ctypes._CFuncPtr) -> None:  # type: ignore[name-defined]
        if struct.calcsize("P") != 8:
            raise OSError(errno.ENOSYS, "the sendmmsg layout here is the 64-bit one")
        self._sock = sock
        self._sendmmsg = sendmmsg
        self._stage = (ctypes.c_char * STAGE_BYTES)()
        self._stage_view = memoryview(self._stage).cast("B")
        self._stage_base = ctypes.addressof(self._stage)
        self._iovecs = (ctypes.c_char * (MAX_BATCH * _IOVEC.size))()
        self._iovec_view = memoryview(self._iovecs).cast("B")
        self._messages = (ctypes.c_char * (MAX_BATCH * _MMSGHDR_SIZE))()
        self._messages_base = ctypes.addressof(self._messages)
        iovec_base = ctypes.addressof(self._iovecs)
        messages = memoryview(self._messages).cast("B")
        for i in range(MAX_BATCH):  # message i always points at iovec i (one each)
            struct.pack_into("@QQ", messages, i * _MMSGHDR_SIZE + _MSG_IOV_OFFSET, iovec_base + i * _IOVEC.size, 1)
        messages.release()

    def send(self, frames: Sequence[bytes]) -> BatchResult:
        """Send ``frames`` in order, as many per system call as the staging buffer holds."""
        result = BatchResult()
        start = 0
        total = len(frames)
        while start < total:
            end = start
            size = 0
            while end < total and end - start < MAX_BATCH:
                size += (len(frames[end]) + 7) & ~7
                if size > STAGE_BYTES:
                    break
                end += 1
            if end - start <= 1:  # a lone frame (or one larger than the staging buffer)
                end = start + 1
                _send_each(self._sock, frames[start:end], result)
            else:
                self._send_batch(frames, start, end, result)
            start = end
        return result

    def _send_batch(self, frames: Sequence[bytes], start: int, end: int, result: BatchResult) -> None:
        stage = self._stage_view
        iovecs = self._iovec_view
        pack = _IOVEC.pack_into
        base = self._stage_base
        offset = 0
        for index in range(end - start):
            data = frames[start + index]
            size = len(data)
            stage[offset:offset + size] = data
            pack(iovecs, index * 16, base + offset, size)
            offset += (size + 7) & ~7
        fd = self._sock.fileno()
        sendmmsg = self._sendmmsg
        messages = self._messages_base
        count = end - start
        done = 0
        while done < count:
            sent = sendmmsg(fd, messages + done * _MMSGHDR_SIZE, count - done, 0)
            if sent < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                result.errors.append(code)  # the frame at ``done`` was refused; go on after it
                done += 1
                continue
            result.frames += sent
            result.bytes += sum(len(frames[start + i]) for i in range(done, done + sent))
            done += sent


class SingleSender:
    """One ``send()`` per frame (a libc without ``sendmmsg``)."""

    method = "send"

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, frames: Sequence[bytes]) -> BatchResult:
        return _send_each(self._sock, frames, BatchResult())


def _send_each(sock: socket.socket, frames: Sequence[bytes], result: BatchResult) -> BatchResult:
    send = sock.send
    for data in frames:
        try:
            send(data)
        except OSError as exc:
            result.errors.append(exc.errno or errno.EIO)
            continue
        result.frames += 1
        result.bytes += len(data)
    return result


def open_sender(sock: socket.socket) -> MultiSender | SingleSender:
    """The batch sender for ``sock``: sendmmsg where libc has it."""
    sendmmsg = _libc_sendmmsg()
    if sendmmsg is None:
        return SingleSender(sock)
    try:
        return MultiSender(sock, sendmmsg)
    except OSError:
        return SingleSender(sock)
