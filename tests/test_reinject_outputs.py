"""The re-injector's outputs: PCAP-over-IP clients and live injection on an interface."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bridge.capture.afpacket import AfPacketCapture
from bridge.capture.pcapfile import parse_capture_bytes
from bridge.reinject.outputs import InterfaceOutput, OutputError, PcapOverIpOutput
from tests.support.netns import in_netns, veth_namespace

FRAMES = [
    (1_700_000_000_000_000_000 + i * 1000,
     bytes.fromhex("020000000002020000000001") + struct.pack("!H", 0x88B5) + b"synthetic-%04d" % i + bytes(50))
    for i in range(300)
]


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_pcap_over_ip_serves_every_client_a_valid_pcap():
    output = PcapOverIpOutput("127.0.0.1", 0)
    clients = [socket.create_connection(output.address) for _ in range(2)]
    deadline = time.monotonic() + 5
    while output.stats.clients < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    for timestamp_ns, data in FRAMES:
        output.write(timestamp_ns, data)
    output.close()
    for client in clients:
        frames = parse_capture_bytes(_read_all(client))
        assert [(f.timestamp_ns, f.data) for f in frames] == FRAMES
        assert all(f.linktype == 1 for f in frames)


def test_pcap_over_ip_slow_client_loses_records_not_the_sensor():
    output = PcapOverIpOutput("127.0.0.1", 0, queue_records=50)
    stalled = socket.create_connection(output.address)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    while output.stats.clients < 1:
        time.sleep(0.01)
    started = time.monotonic()
    big = bytes(9000)
    for i in range(20_000):  # ~180 MB offered to a client that never reads
        output.write(i, big)
    assert time.monotonic() - started < 20
    assert output.stats.dropped > 0
    stalled.close()
    output.close()


def test_bad_pcap_over_ip_address_is_a_clear_error():
    with pytest.raises(OutputError, match="cannot listen on 192.0.2.1:1 for PCAP-over-IP"):
        PcapOverIpOutput("192.0.2.1", 1)


@pytest.mark.real
def test_injection_on_a_veth_reaches_the_peer():
    with veth_namespace("tlsb-inj") as ns:
        capture = in_netns(ns, lambda: AfPacketCapture("vb", poll_interval=0.05))
        output = in_netns(ns, lambda: InterfaceOutput("va"))
        received = []

        def collect() -> None:
            for frame in capture:
                if frame.data[12:14] == b"\x88\xb5":
                    received.append(frame.data)
                    if len(received) == len(FRAMES):
                        return

        reader = threading.Thread(target=collect)
        reader.start()
        time.sleep(0.2)
        for timestamp_ns, data in FRAMES:
            output.write(timestamp_ns, data)
        output.close()
        reader.join(timeout=10)
        capture.stop()
        capture.close()
    assert received == [data for _, data in FRAMES]
    assert output.stats.frames == len(FRAMES) and output.stats.dropped == 0


def test_injection_on_a_missing_interface_is_a_clear_error():
    with pytest.raises(OutputError, match="cannot inject on tlsb-nonexistent0"):
        InterfaceOutput("tlsb-nonexistent0")


# ---- batched injection, checked against tcpdump on the peer ------------------------------

def _injected(count: int) -> list[bytes]:
    """Frames of 60..1514 bytes, every fourth one 802.1Q-tagged, numbered."""
    frames = []
    for i in range(count):
        tag = struct.pack("!HH", 0x8100, (i % 4094) + 1) if i % 4 == 3 else b""
        frame = (bytes.fromhex("020000000002020000000001") + tag + struct.pack("!H", 0x88B5)
                 + b"batched-%05d" % i)
        frames.append(frame + bytes(max(0, 60 + (i * 131) % 1455 - len(frame))))
    return frames


class _Tcpdump:
    """tcpdump writing what arrives on vb of ``ns`` to a pcap: the independent oracle."""

    def __init__(self, ns: str, path: Path) -> None:
        self.path = path
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", "vb", "-U", "-n", "-s", "0", "-w", str(path),
             "ether proto 0x88b5 or vlan"], stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "listening on vb, ..." once it captures
        assert "listening on vb" in line, line

    def frames(self, count: int, timeout: float = 30.0) -> list[bytes]:
        """The frames captured once ``count`` arrived (or the deadline passed)."""
        deadline = time.monotonic() + timeout
        frames: list[bytes] = []
        while time.monotonic() < deadline:
            frames = [f.data for f in parse_capture_bytes(self.path.read_bytes())] if self.path.stat().st_size else []
            if len(frames) >= count:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # anything beyond count would show now
        self.process.send_signal(signal.SIGINT)
        self.process.wait(10)
        return [f.data for f in parse_capture_bytes(self.path.read_bytes())]


def _rx_packets(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "vb"], capture_output=True, text=True,
                         check=True).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


@pytest.mark.real
def test_batched_injection_equals_what_tcpdump_sees(tmp_path: Path) -> None:
    """5000 frames through sendmmsg batches: tcpdump on the peer captures exactly
    them, byte for byte and in order (VLAN tags included)."""
    frames = _injected(5000)
    with veth_namespace("tlsb-injb") as ns:
        dump = _Tcpdump(ns, tmp_path / "peer.pcap")
        output = in_netns(ns, lambda: InterfaceOutput("va"))
        assert output.method == "sendmmsg"
        for i, data in enumerate(frames):
            output.write(i, data)
        output.close()
        seen = dump.frames(len(frames))
    assert seen == frames
    assert (output.stats.frames, output.stats.bytes) == (len(frames), sum(map(len, frames)))
    assert output.stats.errors == output.stats.dropped == 0


@pytest.mark.real
def test_refused_frames_are_counted_one_by_one(tmp_path: Path) -> None:
    """Frames longer than the interface's MTU among good ones, in the same batches: each
    refused one is an error with the kernel's reason, every good one still goes out in
    order."""
    good = _injected(600)
    oversized = bytes.fromhex("020000000002020000000001") + struct.pack("!H", 0x88B5) + bytes(1600)
    frames = []
    for i, data in enumerate(good):
        frames.append(data)
        if i % 50 == 7:
            frames.append(oversized)
    with veth_namespace("tlsb-injr") as ns:
        dump = _Tcpdump(ns, tmp_path / "peer.pcap")
        output = in_netns(ns, lambda: InterfaceOutput("va"))
        for i, data in enumerate(frames):
            output.write(i, data)
        output.close()
        seen = dump.frames(len(good))
    assert seen == good
    assert output.stats.errors == len(frames) - len(good) == 12
    assert output.stats.frames == len(good)
    assert output.stats.last_error == "Message too long"


@pytest.mark.real
def test_no_room_in_the_kernel_is_counted_as_dropped_and_the_output_never_waits() -> None:
    """A device queue of a few frames (tbf: 1 Mbit/s, 3000 bytes deep) offered 20000 frames
    in bursts: the output does not wait for it (at 1 Mbit/s they would take 18 s), what
    the kernel had no room for is counted as dropped (ENOBUFS), not as an error, and the
    peer received exactly what the output says it sent."""
    frame = bytes.fromhex("020000000002020000000001") + struct.pack("!H", 0x88B5) + bytes(100)
    with veth_namespace("tlsb-injq") as ns:
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "va", "root", "tbf", "rate", "1mbit",
                        "burst", "1600", "limit", "3000"], check=True)
        before = _rx_packets(ns)
        output = in_netns(ns, lambda: InterfaceOutput("va"))
        started = time.monotonic()
        for i in range(0, 20000, 100):
            output.write_burst(i, [frame] * 100)
        elapsed = time.monotonic() - started
        output.close()
        deadline = time.monotonic() + 10
        while _rx_packets(ns) - before < output.stats.frames and time.monotonic() < deadline:
            time.sleep(0.1)
        received = _rx_packets(ns) - before
    assert elapsed < 5, elapsed
    assert output.stats.dropped > 0 and output.stats.errors == 0, output.stats
    assert output.stats.frames + output.stats.dropped == 20000
    assert received >= output.stats.frames  # IPv6 neighbour discovery may add a few of its own
    assert received - output.stats.frames < 10


def test_a_pcap_file_gets_the_same_records_from_bursts_of_segments_as_from_their_frames(tmp_path: Path) -> None:
    """PcapFileOutput.write_frames builds a plaintext event's segments in the writer's
    buffer (SegmentBurst.pack_pcap); the file is byte for byte the one written from the
    same bursts' frames (write_burst), and both read back as the frames."""
    from bridge.capture.pcapfile import read_capture
    from bridge.engine.events import FlowInfo, PlaintextData
    from bridge.reinject.outputs import PcapFileOutput
    from bridge.reinject.synthetic import SyntheticFlows
    from bridge.tls.state import Direction

    def bursts() -> list:  # type: ignore[type-arg]
        flows = SyntheticFlows()
        info = FlowInfo(1, 4, b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443, 0)
        made = []
        for i, size in enumerate((1, 1460, 1461, 16384, 70000)):
            direction = Direction.C2S if i % 2 == 0 else Direction.S2C
            made += flows.bursts(PlaintextData(info, direction, bytes([65 + i]) * size, 1_000_000_000 + i))
        return made + flows.close_bursts(1_000_000_010)

    built, listed = PcapFileOutput(str(tmp_path / "built.pcap")), PcapFileOutput(str(tmp_path / "listed.pcap"))
    for burst in bursts():
        built.write_frames(burst)
    frames = []
    for burst in bursts():
        listed.write_burst(burst.timestamp_ns, burst.frames)
        frames += [(burst.timestamp_ns, frame) for frame in burst.frames]
    built.close()
    listed.close()
    assert (built.stats.frames, built.stats.bytes) == (listed.stats.frames, listed.stats.bytes) == (
        len(frames), sum(len(frame) for _, frame in frames))
    assert (tmp_path / "built.pcap").read_bytes() == (tmp_path / "listed.pcap").read_bytes()
    assert [(f.timestamp_ns, f.data) for f in read_capture(tmp_path / "built.pcap")] == frames


def test_a_run_s_burst_reaches_every_output_with_each_plaintext_s_time(tmp_path: Path) -> None:
    """The sink hands the outputs an engine run's plaintexts of a direction as one burst
    (SyntheticFlows.bursts_all). A pcap file (built in its buffer, or from frames made
    first for another output) and a PCAP-over-IP client get what one burst per event
    gives: the same frames, each plaintext's at its own time."""
    from bridge.capture.pcapfile import read_capture
    from bridge.engine.events import FlowInfo, PlaintextData
    from bridge.reinject.outputs import PcapFileOutput
    from bridge.reinject.synthetic import SyntheticFlows
    from bridge.tls.state import Direction

    info = FlowInfo(1, 4, b"\x0a\x00\x00\x01", 40000, b"\x0a\x00\x00\x02", 443, 0)
    events = [PlaintextData(info, Direction.C2S, b"GET / HTTP/1.1\r\n\r\n", 1_000_000_000)] + [
        PlaintextData(info, Direction.S2C, bytes([65 + i]) * size, 1_000_000_000 + 1000 * (i + 1))
        for i, size in enumerate((16384, 1, 3000, 16384))]
    each = SyntheticFlows()
    expected = [pair for event in events for burst in each.bursts(event) for pair in burst.stamped()]
    assert len({timestamp_ns for timestamp_ns, _ in expected}) == 5

    run = SyntheticFlows().bursts_all(events)
    assert len(run) == 3  # the handshake, the request, the response's four records
    built = PcapFileOutput(str(tmp_path / "built.pcap"))
    for burst in run:
        built.write_frames(burst)
    built.close()
    assert [(f.timestamp_ns, f.data) for f in read_capture(tmp_path / "built.pcap")] == expected

    run = SyntheticFlows().bursts_all(events)
    for burst in run:
        assert burst.frames  # made first, as for an interface
    made = PcapFileOutput(str(tmp_path / "made.pcap"))
    for burst in run:
        made.write_frames(burst)
    made.close()
    assert (tmp_path / "made.pcap").read_bytes() == (tmp_path / "built.pcap").read_bytes()

    output = PcapOverIpOutput("127.0.0.1", 0)
    client = socket.create_connection(output.address)
    deadline = time.monotonic() + 5
    while output.stats.clients < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    for burst in SyntheticFlows().bursts_all(events):
        output.write_frames(burst)
    output.close()
    assert [(f.timestamp_ns, f.data) for f in parse_capture_bytes(_read_all(client))] == expected
