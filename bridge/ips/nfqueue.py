"""The kernel's packet queue (nfnetlink_queue, iptables' ``NFQUEUE`` target), spoken
directly over an ``AF_NETLINK`` socket.

Two halves, as everywhere in the bridge: a codec that is pure code over bytes
(messages built with :func:`config_messages` and :func:`verdict_message`,
datagrams parsed by :func:`parse`), and :class:`NfQueue`, a thin driver that
owns the socket.

Why not a library: ``NetfilterQueue`` on PyPI wraps libnetfilter_queue in Cython
(it needs ``libnetfilter-queue-dev`` and a compiler at install time, and hands
packets over one callback at a time); the protocol itself is four message types
of fixed structs and attributes (``include/uapi/linux/netfilter/nfnetlink_queue.h``),
so the codec is shorter than the glue would be, has no build step, and lets the
driver batch: many verdicts go out in one ``send`` (a netlink datagram may hold
any number of messages), many packets come in per ``recv``.

Layout (``netlink(7)``, ``nfnetlink_queue.h``): every message is an ``nlmsghdr``
(host byte order: length, type, flags, sequence, port id), then the
``nfgenmsg`` (family, version 0, the queue number big-endian), then attributes
(``nlattr``: length and type in host order, the value padded to 4 bytes; the
values of this subsystem are big-endian).  The message type is the subsystem
(``NFNL_SUBSYS_QUEUE`` = 3) shifted left 8, or'ed with the queue message type.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bridge.errors import BridgeError

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # not in Python's socket module

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4

# configuration attributes and commands
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 0x1
NFQA_CFG_F_GSO = 0x4

# packet attributes
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_PAYLOAD = 10
NFQA_CAP_LEN = 13

NF_DROP = 0
NF_ACCEPT = 1

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG = struct.Struct("!BBH")  # the queue number (res_id) is big-endian
_NLATTR = struct.Struct("=HH")
_ATTR_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
_HEADERS = _NLMSGHDR.size + _NFGENMSG.size


class NfQueueError(BridgeError):
    """The queue cannot be bound or read, or the kernel refused a message."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attribute(kind: int, value: bytes) -> bytes:
    length = _NLATTR.size + len(value)
    return _NLATTR.pack(length, kind) + value + b"\0" * (_align(length) - length)


def _message(kind: int, queue: int, attributes: bytes, *, flags: int = NLM_F_REQUEST, seq: int = 0,
             family: int = socket.AF_UNSPEC) -> bytes:
    body = _NFGENMSG.pack(family, 0, queue) + attributes
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


# --- messages to the kernel -------------------------------------------------------------------


def bind_message(queue: int, *, seq: int = 1) -> bytes:
    """Become the listener of ``queue`` (acknowledged: EBUSY when another process is)."""
    command = struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)
    return _message(NFQNL_MSG_CONFIG, queue, _attribute(NFQA_CFG_CMD, command), flags=NLM_F_REQUEST | NLM_F_ACK,
                    seq=seq)


def unbind_message(queue: int, *, seq: int = 0) -> bytes:
    command = struct.pack("!BxH", NFQNL_CFG_CMD_UNBIND, 0)
    return _message(NFQNL_MSG_CONFIG, queue, _attribute(NFQA_CFG_CMD, command), seq=seq)


def config_messages(queue: int, *, copy_range: int = 0xFFFF, max_len: int = 4096, fail_open: bool = False,
                    gso: bool = True, seq: int = 2) -> list[bytes]:
    """Copy whole packets (up to ``copy_range`` bytes), at most ``max_len`` waiting in
    the kernel, and with ``fail_open`` a full queue accepts packets instead of dropping
    them.  With ``gso`` (``NFQA_CFG_F_GSO``) the kernel queues a TCP super-packet of
    segmentation offload (GRO on the way in, TSO of the sender on a veth) as it is, up
    to 64 KiB, instead of cutting it into MTU-sized packets first: one packet, one
    verdict, one pass through the bridge for up to ~45 segments of a bulk transfer (its
    checksum may be partial: the bridge does not check it; the kernel completes it when
    the packet leaves).  Each is acknowledged."""
    flags = NLM_F_REQUEST | NLM_F_ACK
    params = _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    maxlen = _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_len))
    flags_value = (NFQA_CFG_F_FAIL_OPEN if fail_open else 0) | (NFQA_CFG_F_GSO if gso else 0)
    fail = _attribute(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO)) + _attribute(
        NFQA_CFG_FLAGS, struct.pack("!I", flags_value))
    return [_message(NFQNL_MSG_CONFIG, queue, params, flags=flags, seq=seq),
            _message(NFQNL_MSG_CONFIG, queue, maxlen, flags=flags, seq=seq + 1),
            _message(NFQNL_MSG_CONFIG, queue, fail, flags=flags, seq=seq + 2)]


def verdict_message(queue: int, packet_id: int, verdict: int, *, batch: bool = False) -> bytes:
    """The verdict on one packet; with ``batch``, on every packet of the queue whose id
    is at most ``packet_id`` (``NFQNL_MSG_VERDICT_BATCH``)."""
    kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return _message(kind, queue, _attribute(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))


def verdicts(queue: int, decided: Iterable[tuple[int, int]]) -> bytes:
    """Many verdicts, (packet id, verdict), as one datagram."""
    return b"".join(verdict_message(queue, packet_id, verdict) for packet_id, verdict in decided)


# --- messages from the kernel -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueuedPacket:
    """One packet the kernel holds until it has our verdict."""

    queue: int
    packet_id: int
    hw_protocol: int  # ethertype (0x0800, 0x86DD)
    hook: int  # NF_INET_* (2: forward)
    payload: bytes  # the IP packet
    timestamp_ns: int | None = None  # the kernel's receive time, when it has one
    indev: int | None = None
    outdev: int | None = None
    cap_len: int | None = None  # the original length when the copy was cut


@dataclass(frozen=True, slots=True)
class KernelAck:
    """The kernel's answer to an acknowledged request: ``error`` 0 is success."""

    seq: int
    error: int


def _attributes(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size or offset + length > end:
            raise NfQueueError(f"malformed netlink attribute (length {length} at {offset})")
        yield kind & _ATTR_TYPE_MASK, data[offset + _NLATTR.size:offset + length]
        offset += _align(length)


def parse(data: bytes) -> list[QueuedPacket | KernelAck]:
    """The messages of one datagram read from the socket.  Unknown messages are
    skipped; a truncated or inconsistent one raises :class:`NfQueueError`."""
    out: list[QueuedPacket | KernelAck] = []
    offset = 0
    try:
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size or offset + length > len(data):
                raise NfQueueError(f"malformed netlink message (length {length} at {offset} of {len(data)})")
            end = offset + length
            if kind == NLMSG_ERROR:
                (error,) = struct.unpack_from("=i", data, offset + _NLMSGHDR.size)
                out.append(KernelAck(seq, -error))
            elif kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                out.append(_packet(data, offset, end))
            offset = _align(end)
    except struct.error as exc:
        raise NfQueueError(f"truncated netlink message: {exc}") from exc
    return out


def _packet(data: bytes, offset: int, end: int) -> QueuedPacket:
    _family, _version, queue = _NFGENMSG.unpack_from(data, offset + _NLMSGHDR.size)
    header: tuple[int, int, int] | None = None
    payload = b""
    timestamp = indev = outdev = cap_len = None
    for kind, value in _attributes(data, offset + _HEADERS, end):
        if kind == NFQA_PACKET_HDR:
            header = struct.unpack_from("!IHB", value)
        elif kind == NFQA_PAYLOAD:
            payload = bytes(value)
        elif kind == NFQA_TIMESTAMP:
            seconds, micros = struct.unpack_from("!QQ", value)
            timestamp = seconds * 1_000_000_000 + micros * 1000
        elif kind == NFQA_IFINDEX_INDEV:
            (indev,) = struct.unpack_from("!I", value)
        elif kind == NFQA_IFINDEX_OUTDEV:
            (outdev,) = struct.unpack_from("!I", value)
        elif kind == NFQA_CAP_LEN:
            (cap_len,) = struct.unpack_from("!I", value)
    if header is None:
        raise NfQueueError("a queued packet without its packet header (id)")
    packet_id, hw_protocol, hook = header
    return QueuedPacket(queue, packet_id, hw_protocol, hook, payload, timestamp, indev, outdev, cap_len)


def queue_counters(queue: int, text: str | None = None) -> dict[str, int]:
    """One queue's line of ``/proc/net/netfilter/nfnetlink_queue`` (queue number, peer
    port id, packets waiting, copy mode, copy range, queue dropped, user dropped, id
    sequence, 1)."""
    if text is None:
        try:
            with open("/proc/net/netfilter/nfnetlink_queue", encoding="ascii") as handle:
                text = handle.read()
        except OSError:
            return {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == str(queue):
            return {"waiting": int(fields[2]), "queue_dropped": int(fields[5]), "user_dropped": int(fields[6])}
    return {}


# --- the driver -------------------------------------------------------------------------------


class NfQueue:
    """A bound queue: :meth:`receive` packets, :meth:`send_verdicts` in batches.

    Needs CAP_NET_ADMIN.  With ``fail_open`` the kernel accepts packets instead of
    dropping them while the queue is full (``max_len``); iptables' ``--queue-bypass``
    decides what happens while no process is bound at all.
    """

    def __init__(self, queue: int, *, max_len: int = 4096, fail_open: bool = False, gso: bool = True,
                 receive_buffer: int = 8 << 20) -> None:
        self.queue = queue
        self.overruns = 0  # ENOBUFS: the socket's buffer overflowed, packets lost to the kernel's policy
        self._early: list[QueuedPacket] = []  # packets that came while the queue was being configured
        self._socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._socket.bind((0, 0))
            for option, value in ((SO_RCVBUFFORCE, receive_buffer), (SO_SNDBUFFORCE, 1 << 20)):
                try:
                    self._socket.setsockopt(socket.SOL_SOCKET, option, value)
                except OSError:
                    pass  # without CAP_NET_ADMIN the binding below fails with a clearer message
            self._request(bind_message(queue), 1, f"bind queue {queue}")
            for seq, message in enumerate(config_messages(queue, max_len=max_len, fail_open=fail_open,
                                                                   gso=gso), 2):
                self._request(message, seq, f"configure queue {queue}")
            self._socket.setblocking(False)
        except BaseException:
            self._socket.close()
            raise

    def fileno(self) -> int:
        return self._socket.fileno()

    def kernel_counters(self) -> dict[str, int]:
        """The kernel's own counts for this queue (``/proc/net/netfilter/nfnetlink_queue`` of
        this network namespace): ``waiting`` packets now, ``queue_dropped`` (the queue was
        full and fail-open off), ``user_dropped`` (our socket's buffer overflowed), or {}."""
        return queue_counters(self.queue)

    def _request(self, message: bytes, seq: int, what: str) -> None:
        try:
            self._socket.send(message)
        except OSError as exc:
            raise NfQueueError(f"cannot {what}: {exc.strerror}") from exc
        while True:
            for item in parse(self._socket.recv(1 << 17)):
                if isinstance(item, QueuedPacket):
                    self._early.append(item)
                elif item.seq == seq:
                    if item.error:
                        hint = {errno.EBUSY: " (another process is bound to it)",
                                errno.EPERM: " (needs CAP_NET_ADMIN)"}.get(item.error, "")
                        raise NfQueueError(f"cannot {what}: {os.strerror(item.error)}{hint}")
                    return

    def receive(self, limit: int = 256) -> list[QueuedPacket]:
        """The packets waiting now (at most ``limit`` datagrams read); [] when none."""
        out, self._early = self._early, []
        recv = self._socket.recv
        for _ in range(limit):
            try:
                data = recv(1 << 17)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overruns += 1
                    continue
                raise NfQueueError(f"reading queue {self.queue}: {exc.strerror}") from exc
            out.extend(item for item in parse(data) if isinstance(item, QueuedPacket))
        return out

    def send_verdicts(self, decided: list[tuple[int, int]]) -> None:
        """(packet id, NF_ACCEPT/NF_DROP) pairs, as few datagrams as fit the socket."""
        for start in range(0, len(decided), 512):
            data = verdicts(self.queue, decided[start:start + 512])
            while True:
                try:
                    self._socket.send(data)
                    break
                except BlockingIOError:
                    import select

                    select.select([], [self._socket], [], 0.1)
                except OSError as exc:
                    raise NfQueueError(f"sending verdicts to queue {self.queue}: {exc.strerror}") from exc

    def close(self) -> None:
        try:
            self._socket.send(unbind_message(self.queue))
        except OSError:
            pass
        self._socket.close()
