"""The nfnetlink_queue codec against the kernel's message layout
(include/uapi/linux/netfilter/nfnetlink_queue.h, netlink(7)); the socket driver
is exercised by tests/test_ips_inline.py on a real queue."""

from __future__ import annotations

import struct

import pytest

from bridge.ips import nfqueue as Q


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def _kernel_packet(packet_id: int, payload: bytes, *, queue: int = 13, seq: int = 0) -> bytes:
    """A NFQNL_MSG_PACKET as the kernel sends it."""
    body = struct.pack("!BBH", 2, 0, queue)
    body += _attr(Q.NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 2) + b"\0")
    body += _attr(Q.NFQA_TIMESTAMP, struct.pack("!QQ", 1_700_000_000, 250_000))
    body += _attr(Q.NFQA_IFINDEX_INDEV | 0x4000, struct.pack("!I", 7))  # NLA_F_NET_BYTEORDER set
    body += _attr(Q.NFQA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), (3 << 8) | Q.NFQNL_MSG_PACKET, 0, seq, 0) + body


def test_packets_of_one_datagram_are_parsed_with_their_ids_and_payloads():
    datagram = _kernel_packet(41, b"\x45" + b"x" * 59) + _kernel_packet(42, b"\x45" + b"y" * 38)
    first, second = Q.parse(datagram)
    assert (first.packet_id, first.hw_protocol, first.hook, first.queue) == (41, 0x0800, 2, 13)
    assert first.payload == b"\x45" + b"x" * 59 and second.payload == b"\x45" + b"y" * 38
    assert first.timestamp_ns == 1_700_000_000 * 10**9 + 250_000_000 and first.indev == 7


def test_a_kernel_error_is_an_ack_with_its_errno():
    error = struct.pack("=IHHII", 36, Q.NLMSG_ERROR, 0, 5, 0) + struct.pack("=i", -16) + b"\0" * 16
    assert Q.parse(error) == [Q.KernelAck(5, 16)]  # EBUSY: the queue has another listener


def test_truncated_messages_raise_the_codecs_error():
    datagram = _kernel_packet(1, b"\x45" * 40)
    longer = struct.pack("=I", len(datagram) + 8) + datagram[4:]  # says it is longer than the datagram
    with pytest.raises(Q.NfQueueError, match="malformed netlink message"):
        Q.parse(longer)
    attribute = datagram[:20] + struct.pack("=HH", 200, Q.NFQA_PACKET_HDR) + datagram[24:]  # past its message
    with pytest.raises(Q.NfQueueError, match="malformed netlink attribute"):
        Q.parse(attribute)
    header = bytearray(datagram)
    struct.pack_into("=H", header, 20, 6)  # a packet header of 2 bytes: struct.error inside, our error outside
    with pytest.raises(Q.NfQueueError):
        Q.parse(bytes(header))


def test_a_packet_without_its_header_is_refused():
    body = struct.pack("!BBH", 2, 0, 13) + _attr(Q.NFQA_PAYLOAD, b"\x45" * 20)
    message = struct.pack("=IHHII", 16 + len(body), (3 << 8) | Q.NFQNL_MSG_PACKET, 0, 0, 0) + body
    with pytest.raises(Q.NfQueueError, match="packet header"):
        Q.parse(message)


def test_verdicts_are_one_message_each_in_one_datagram():
    data = Q.verdicts(13, [(41, Q.NF_ACCEPT), (42, Q.NF_DROP)])
    messages = []
    offset = 0
    while offset < len(data):
        length, kind, flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        _family, _version, queue = struct.unpack_from("!BBH", data, offset + 16)
        attr_length, attr_type = struct.unpack_from("=HH", data, offset + 20)
        verdict, packet_id = struct.unpack_from("!II", data, offset + 24)
        messages.append((kind, flags, queue, attr_type, attr_length, verdict, packet_id))
        offset += length
    assert messages == [(0x301, Q.NLM_F_REQUEST, 13, Q.NFQA_VERDICT_HDR, 12, 1, 41),
                        (0x301, Q.NLM_F_REQUEST, 13, Q.NFQA_VERDICT_HDR, 12, 0, 42)]
    batch = Q.verdict_message(13, 99, Q.NF_ACCEPT, batch=True)
    assert struct.unpack_from("=H", batch, 4)[0] == (3 << 8) | Q.NFQNL_MSG_VERDICT_BATCH


def test_binding_and_configuration_ask_for_acknowledgements():
    bind = Q.bind_message(13)
    assert struct.unpack_from("=HH", bind, 4) == ((3 << 8) | Q.NFQNL_MSG_CONFIG, Q.NLM_F_REQUEST | Q.NLM_F_ACK)
    assert bind[20:28] == struct.pack("=HH", 8, Q.NFQA_CFG_CMD) + bytes([Q.NFQNL_CFG_CMD_BIND, 0, 0, 0])
    params, maxlen, flags = Q.config_messages(13, copy_range=0xFFFF, max_len=1000, fail_open=True)
    assert params[20:29] == struct.pack("=HH", 9, Q.NFQA_CFG_PARAMS) + struct.pack("!IB", 0xFFFF, 2)
    assert maxlen[24:28] == struct.pack("!I", 1000)
    assert flags[24:28] == struct.pack("!I", Q.NFQA_CFG_F_FAIL_OPEN | Q.NFQA_CFG_F_GSO)  # the mask
    assert flags[32:36] == struct.pack("!I", Q.NFQA_CFG_F_FAIL_OPEN | Q.NFQA_CFG_F_GSO)  # the flags
    *_, flags = Q.config_messages(13, fail_open=False, gso=False)
    assert flags[32:36] == struct.pack("!I", 0)


def test_the_kernels_queue_counters_are_read_from_its_proc_file():
    text = "   12  12345     0 2 65535     0     0        7  1\n   13  23456     3 2 65535    41     2     9000  1\n"
    assert Q.queue_counters(13, text) == {"waiting": 3, "queue_dropped": 41, "user_dropped": 2}
    assert Q.queue_counters(14, text) == {}
