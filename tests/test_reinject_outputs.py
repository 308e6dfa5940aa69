"""The re-injector's outputs: PCAP-over-IP clients and live injection on an interface."""

from __future__ import annotations

import socket
import struct
import threading
import time

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
