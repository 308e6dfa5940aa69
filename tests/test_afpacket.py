"""Live AF_PACKET capture on a veth pair inside a network namespace of our own.

All traffic stays inside the namespace the fixture creates (and deletes).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from bridge.capture.afpacket import AfPacketCapture, CaptureDeviceError, insert_vlan_tag
from bridge.capture.frames import LINKTYPE_ETHERNET, Frame
from bridge.errors import BridgeError
from bridge.engine.packets import decode_tcp

from tests.support.netns import in_netns, veth_namespace

pytestmark = pytest.mark.real

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
ETHERTYPE_TEST = 0x88B5  # IEEE "local experimental" ethertype


@pytest.fixture
def veth_ns() -> Iterator[str]:
    with veth_namespace("tlsb-afp") as ns:
        yield ns


def _tx_socket(ns: str, iface: str) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((iface, 0))
        return s

    return in_netns(ns, make)


def _test_frame(i: int) -> bytes:
    return DST_MAC + SRC_MAC + struct.pack("!H", ETHERTYPE_TEST) + b"tlsb-test-%03d" % i + bytes(40)


def _collect(cap: AfPacketCapture, want: Callable[[Frame], bool], count: int, timeout: float = 5.0) -> list[Frame]:
    """Iterate cap until ``count`` matching frames arrived (or timeout -> stop)."""
    timer = threading.Timer(timeout, cap.stop)
    timer.start()
    got: list[Frame] = []
    try:
        for frame in cap:
            if want(frame):
                got.append(frame)
                if len(got) == count:
                    break
    finally:
        timer.cancel()
    return got


def test_capture_frames_on_veth(veth_ns: str) -> None:
    cap = in_netns(veth_ns, lambda: AfPacketCapture("vb", snaplen=2048, buffer_bytes=1 << 20))
    tx = _tx_socket(veth_ns, "va")
    with cap, tx:
        before = time.time_ns()
        sent = [_test_frame(i) for i in range(5)]
        for f in sent:
            tx.send(f)
        got = _collect(cap, lambda fr: fr.data[12:14] == struct.pack("!H", ETHERTYPE_TEST), 5)
        after = time.time_ns()
        assert [f.data[: len(sent[0])] for f in got] == sent
        for f in got:
            assert f.linktype == LINKTYPE_ETHERNET
            assert f.orig_len == len(f.data) == len(sent[0])
            assert before <= f.timestamp_ns <= after
        assert cap.frames >= 5
        assert cap.drops == 0


def test_tcp_segment_and_snaplen(veth_ns: str) -> None:
    cap = in_netns(veth_ns, lambda: AfPacketCapture("vb", snaplen=100, promiscuous=False))
    tx = _tx_socket(veth_ns, "va")
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / TCP(sport=1234, dport=443, flags="PA", seq=99)
        / Raw(b"T" * 200)
    )
    with cap, tx:
        tx.send(frame)
        got = _collect(cap, lambda fr: fr.data[12:14] == b"\x08\x00", 1)
    assert len(got) == 1
    f = got[0]
    assert len(f.data) == 100 and f.orig_len == len(frame) and f.truncated
    seg = decode_tcp(f.linktype, f.data, f.timestamp_ns)
    assert seg is not None and (seg.sport, seg.dport, seg.seq) == (1234, 443, 99)
    assert seg.payload == b"T" * (100 - 54)


def test_vlan_tag_preserved(veth_ns: str) -> None:
    """veth offloads VLAN tags into skb metadata; the capture must show them again."""
    cap = in_netns(veth_ns, lambda: AfPacketCapture("vb"))
    tx = _tx_socket(veth_ns, "va")
    frame = bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / Dot1Q(vlan=42, prio=3)
        / IP(src="192.0.2.1", dst="192.0.2.2")
        / TCP(sport=5, dport=6)
        / Raw(b"vlan!")
    )
    with cap, tx:
        tx.send(frame)
        got = _collect(cap, lambda fr: b"vlan!" in fr.data, 1)
    assert len(got) == 1
    assert got[0].data == frame and got[0].orig_len == len(frame)
    seg = decode_tcp(got[0].linktype, got[0].data, 0)
    assert seg is not None and seg.vlan_ids == (42,) and seg.payload == b"vlan!"


def test_stop_event_ends_idle_iteration(veth_ns: str) -> None:
    stop = threading.Event()
    cap = in_netns(veth_ns, lambda: AfPacketCapture("vb", stop_event=stop, poll_interval=0.05))
    seen: list[Frame] = []
    t = threading.Thread(target=lambda: seen.extend(cap))
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    stop.set()
    t.join(2)
    assert not t.is_alive()
    assert time.monotonic() - started < 1.0
    assert cap.stopped
    cap.close()
    cap.close()  # idempotent


def test_missing_interface(veth_ns: str) -> None:
    with pytest.raises(CaptureDeviceError, match="no such network interface"):
        in_netns(veth_ns, lambda: AfPacketCapture("nope0"))
    assert issubclass(CaptureDeviceError, BridgeError)


def test_permission_denied_is_clear() -> None:
    code = (
        "from bridge.capture.afpacket import AfPacketCapture, CaptureDeviceError\n"
        "try:\n    AfPacketCapture('lo')\nexcept CaptureDeviceError as e:\n    print('ERR', e)\n"
    )
    res = subprocess.run(
        ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert res.stdout.startswith("ERR"), res.stderr
    assert "not permitted" in res.stdout and "CAP_NET_RAW" in res.stdout


def test_insert_vlan_tag() -> None:
    base = DST_MAC + SRC_MAC + b"\x08\x00payload"
    assert insert_vlan_tag(base, 0x2005) == DST_MAC + SRC_MAC + b"\x81\x00\x20\x05\x08\x00payload"
    assert insert_vlan_tag(base, 7, 0x88A8)[12:16] == b"\x88\xa8\x00\x07"
