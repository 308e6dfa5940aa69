"""Live AF_PACKET capture on a veth pair inside a network namespace of our own.

All traffic stays inside the namespace the fixture creates (and deletes).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from bridge.capture import afpacket
from bridge.capture.afpacket import (
    AfPacketCapture,
    CaptureDeviceError,
    RingGeometry,
    insert_vlan_tag,
)
from bridge.capture.frames import LINKTYPE_ETHERNET, Frame
from bridge.capture.pcapwriter import PcapWriter
from bridge.engine.packets import decode_tcp
from bridge.errors import BridgeError
from tests.support.netns import in_netns, veth_namespace

pytestmark = pytest.mark.real

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
ETHERTYPE_TEST = 0x88B5  # IEEE "local experimental" ethertype


@pytest.fixture
def veth_ns() -> Iterator[str]:
    with veth_namespace("tlsb-afp") as ns:
        yield ns


@pytest.fixture(params=["ring", "recv"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both capture paths: the TPACKET_V3 ring and one recvmsg per frame."""
    return request.param


def _open(ns: str, mode: str, **kwargs: object) -> AfPacketCapture:
    cap = in_netns(ns, lambda: AfPacketCapture("vb", ring=mode == "ring", **kwargs))  # type: ignore[arg-type]
    assert cap.mode == mode, cap.fallback_reason
    return cap


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


def test_capture_frames_on_veth(veth_ns: str, mode: str) -> None:
    cap = _open(veth_ns, mode, snaplen=2048, buffer_bytes=1 << 20)
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


def test_tcp_segment_and_snaplen(veth_ns: str, mode: str) -> None:
    cap = _open(veth_ns, mode, snaplen=100, promiscuous=False)
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


def test_vlan_tag_preserved(veth_ns: str, mode: str) -> None:
    """veth offloads VLAN tags into skb metadata; the capture must show them again."""
    cap = _open(veth_ns, mode)
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


def test_stop_event_ends_idle_iteration(veth_ns: str, mode: str) -> None:
    stop = threading.Event()
    cap = _open(veth_ns, mode, stop_event=stop, poll_interval=0.05)
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


# ---- the TPACKET_V3 ring: frames replayed by tcpreplay (the oracle: the pcap it sent) ----

MARK = b"tlsb-ring-"


def _replay_frames(count: int) -> list[bytes]:
    """Frames of 60..1514 bytes, a fifth 802.1Q-tagged, a fifth 802.1ad + 802.1Q (QinQ),
    each numbered after MARK."""
    frames = []
    for i in range(count):
        size = 60 + (i * 97) % 1455
        kind = i % 5
        if kind == 3:
            tag = struct.pack("!HH", 0x8100, (i % 8) << 13 | (i % 4094 + 1))
        elif kind == 4:
            tag = struct.pack("!HHHH", 0x88A8, i % 4094 + 1, 0x8100, 7)
        else:
            tag = b""
        frame = DST_MAC + SRC_MAC + tag + struct.pack("!H", ETHERTYPE_TEST) + MARK + b"%06d" % i
        frames.append(frame + bytes(max(0, size - len(frame))))
    return frames


def _replay(ns: str, tmp_path: Path, frames: list[bytes]) -> None:
    pcap = tmp_path / "replay.pcap"
    with PcapWriter(pcap, LINKTYPE_ETHERNET) as writer:
        for i, frame in enumerate(frames):
            writer.write(1_700_000_000_000_000_000 + i * 1000, frame)
    result = subprocess.run(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", "va", "--topspeed",
                             str(pcap)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def _quiet_ipv6(ns: str) -> None:
    """No IPv6 neighbour discovery or MLD frames from now on: every frame on the link is ours."""
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True)


def _collect_batches(cap: AfPacketCapture, count: int, timeout: float = 30.0) -> list[list[Frame]]:
    """Batches (only frames carrying MARK kept) until ``count`` such frames arrived."""
    timer = threading.Timer(timeout, cap.stop)
    timer.start()
    batches: list[list[Frame]] = []
    seen = 0
    try:
        for batch in cap.batches():
            if batch is None:
                continue
            ours = [frame for frame in batch if MARK in frame.data]
            if ours:
                batches.append(ours)
                seen += len(ours)
                if seen >= count:
                    break
    finally:
        timer.cancel()
    return batches


def test_replayed_frames_arrive_byte_identical_in_blocks(veth_ns: str, mode: str, tmp_path: Path) -> None:
    """3000 frames (VLAN and QinQ ones among them) by tcpreplay: every one captured, in
    order, byte for byte as in the pcap tcpreplay sent (tags stripped by the veth put
    back), with its length on the wire; the ring hands them over many per block."""
    frames = _replay_frames(3000)
    cap = _open(veth_ns, mode, snaplen=2048, idle_marker=True, poll_interval=0.05)
    with cap:
        before = time.time_ns()
        replayer = threading.Thread(target=_replay, args=(veth_ns, tmp_path, frames))
        replayer.start()
        batches = _collect_batches(cap, len(frames))
        replayer.join()
        after = time.time_ns()
        drops = cap.drops
    got = [frame for batch in batches for frame in batch]
    assert [frame.data for frame in got] == frames
    assert [frame.orig_len for frame in got] == [len(frame) for frame in frames]
    assert all(before <= frame.timestamp_ns <= after for frame in got)
    assert [frame.timestamp_ns for frame in got] == sorted(frame.timestamp_ns for frame in got)
    assert drops == 0
    if mode == "ring":
        assert max(len(batch) for batch in batches) > 1
        assert len(batches) < len(frames)
    else:
        assert all(len(batch) == 1 for batch in batches)


def test_ring_overrun_is_counted_as_drops(veth_ns: str, tmp_path: Path) -> None:
    """A ring of 4 blocks of 64 KiB that nobody reads while 3000 frames arrive: the frames
    that fitted come out whole and in order, every other one is a counted drop."""
    _quiet_ipv6(veth_ns)
    frames = _replay_frames(3000)
    cap = _open(veth_ns, "ring", snaplen=2048, buffer_bytes=1 << 18, idle_marker=True, poll_interval=0.05)
    assert cap.geometry is not None and cap.geometry.size == 1 << 18
    with cap:
        _replay(veth_ns, tmp_path, frames)
        got: list[Frame] = []
        quiet = 0
        for batch in cap.batches():  # now drain what the ring kept
            if batch is None:
                quiet += 1
                if quiet == 4:
                    break
                continue
            quiet = 0
            got.extend(frame for frame in batch if MARK in frame.data)
        drops = cap.drops
    assert 0 < len(got) < len(frames)
    assert [frame.data for frame in got] == frames[: len(got)]
    assert drops > 0
    assert len(got) + drops == len(frames)


def test_ring_refused_falls_back_to_recv_and_says_so(veth_ns: str, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A ring the kernel refuses (here a frame size that is not a multiple of 16): the
    log says so and frames come one recvmsg at a time instead."""
    monkeypatch.setattr(afpacket, "ring_geometry", lambda snaplen, buffer_bytes: RingGeometry(1 << 16, 4, 1000))
    with caplog.at_level(logging.WARNING, logger="bridge.capture"):
        cap = in_netns(veth_ns, lambda: AfPacketCapture("vb", snaplen=2048))
    assert cap.mode == "recv" and cap.geometry is None
    assert cap.fallback_reason is not None and "Invalid argument" in cap.fallback_reason
    assert any("receiving one frame per system call" in record.getMessage() for record in caplog.records)
    tx = _tx_socket(veth_ns, "va")
    with cap, tx:
        sent = [_test_frame(i) for i in range(3)]
        for frame in sent:
            tx.send(frame)
        got = _collect(cap, lambda fr: fr.data[12:14] == struct.pack("!H", ETHERTYPE_TEST), 3)
    assert [frame.data for frame in got] == sent


def test_ring_fanout_splits_flows_between_workers(veth_ns: str, tmp_path: Path) -> None:
    """Two ring captures in one fanout group (the sensor's workers): each frame reaches
    exactly one of them, and a flow (here a source MAC) stays with one."""
    frames = [DST_MAC + SRC_MAC + b"\x08\x00" + _ipv4(i) + MARK + b"%06d" % i + bytes(i % 1000) for i in range(400)]
    group = os.getpid() & 0x7FFF
    caps = [_open(veth_ns, "ring", snaplen=2048, idle_marker=True, poll_interval=0.05, fanout_group=group)
            for _ in range(2)]
    results: list[list[Frame]] = [[], []]

    def drain(index: int) -> None:
        quiet = 0
        for batch in caps[index].batches():
            if batch is None:
                quiet += 1
                if quiet == 20 and done.is_set():
                    return
                continue
            quiet = 0
            results[index].extend(frame for frame in batch if MARK in frame.data)

    done = threading.Event()
    readers = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for reader in readers:
        reader.start()
    _replay(veth_ns, tmp_path, frames)
    done.set()
    for reader in readers:
        reader.join(30)
    for cap in caps:
        cap.close()
    assert sorted(frame.data for part in results for frame in part) == sorted(frames)
    assert results[0] and results[1]
    owners = {}
    for index, part in enumerate(results):
        for frame in part:
            assert owners.setdefault(frame.data[26:34], index) == index  # IP addresses: one worker each
    assert len(owners) == 40


def _ipv4(i: int) -> bytes:
    """An IPv4 header of flow i % 40 (fanout hashes on the addresses)."""
    flow = i % 40
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, i & 0xFFFF, 0, 64, 253, 0,
                       bytes([10, 0, 0, flow + 1]), bytes([10, 0, 1, flow + 1]))


def test_ring_batches_mark_a_quiet_link_and_a_vanished_interface(veth_ns: str) -> None:
    cap = _open(veth_ns, "ring", idle_marker=True, poll_interval=0.05)
    items: list[object] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            items.extend(cap.batches())
        except CaptureDeviceError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while items.count(None) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert items.count(None) >= 3
    subprocess.run(["ip", "-n", veth_ns, "link", "del", "va"], check=True)  # takes vb with it
    reader.join(10)
    cap.close()
    assert not reader.is_alive()
    assert errors and "cannot receive on interface 'vb'" in str(errors[0])


def test_close_from_another_thread_ends_iteration_quietly(veth_ns: str, mode: str) -> None:
    """Only this capture's iteration ends: the stop event it shares (a worker's, with its
    other captures) stays clear."""
    shared = threading.Event()
    cap = _open(veth_ns, mode, idle_marker=True, poll_interval=0.05, stop_event=shared)
    outcome: list[object] = []

    def read() -> None:
        try:
            for _ in cap.batches():
                pass
            outcome.append("ended")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    cap.close()
    reader.join(5)
    assert not reader.is_alive()
    assert outcome == ["ended"]
    assert not shared.is_set()


def test_ignore_outgoing_keeps_only_what_arrives(veth_ns: str, mode: str) -> None:
    """Capturing on va: frames va sends are dropped in the kernel with ignore_outgoing,
    frames that arrive from vb are kept."""
    cap = in_netns(veth_ns, lambda: AfPacketCapture("va", ring=mode == "ring", ignore_outgoing=True,
                                                    poll_interval=0.05))
    assert cap.mode == mode
    out_of_va = _tx_socket(veth_ns, "va")
    into_va = _tx_socket(veth_ns, "vb")
    with cap, out_of_va, into_va:
        for i in range(3):
            out_of_va.send(_test_frame(100 + i))
            into_va.send(_test_frame(200 + i))
        got = _collect(cap, lambda fr: fr.data[12:14] == struct.pack("!H", ETHERTYPE_TEST), 3)
        time.sleep(0.2)
        late = _collect(cap, lambda fr: fr.data[12:14] == struct.pack("!H", ETHERTYPE_TEST), 1, timeout=0.5)
    assert [frame.data for frame in got] == [_test_frame(200 + i) for i in range(3)]
    assert late == []


def _promiscuity(ns: str, name: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-d", "-j", "link", "show", name], capture_output=True, text=True,
                         check=True).stdout
    return int(json.loads(out)[0]["promiscuity"])


def test_promiscuous_membership_lasts_as_long_as_the_capture(veth_ns: str, mode: str) -> None:
    assert _promiscuity(veth_ns, "vb") == 0
    cap = _open(veth_ns, mode, promiscuous=True)
    assert _promiscuity(veth_ns, "vb") == 1
    cap.close()
    assert _promiscuity(veth_ns, "vb") == 0
    with _open(veth_ns, mode, promiscuous=False):
        assert _promiscuity(veth_ns, "vb") == 0
