"""Capture and injection I/O at the sensor's edge, old path against new, in one run.

In a network namespace of its own (a veth pair va/vb):

* capture: ``tcpreplay --topspeed`` sends a pcap of Ethernet/IPv4/TCP frames onto
  va while :class:`AfPacketCapture` reads vb, once with one ``recvmsg`` per frame
  (``ring=False``, the old path), once from the TPACKET_V3 ring frame by frame,
  once from the ring block by block (``batches()``).  Printed: frames and MB
  captured per second of the replay, the kernel's drops, and the reader thread's
  CPU per frame (what the capture takes from a worker);
* capture, drain: a backlog of frames replayed while nobody reads, then read as
  fast as the reader can: its own rate, without tcpreplay competing for the CPUs;
* injection: the same frames written to an :class:`InterfaceOutput` on va as fast
  as the caller can, then closed (everything sent): the old output (a
  ``queue.Queue`` and one ``send()`` per frame, kept here as it was), the new one
  (``sendmmsg`` batches), and a ``PACKET_TX_RING`` (TPACKET_V2) candidate that lost
  to it (see bridge/reinject/batchsend.py).  Printed: frames and MB per second
  until the last frame was out, what vb received, and the writer's CPU per frame
  (what it takes from the decrypting thread);
* pcap output: the same frames written record by record through an 8 KiB
  buffered file (the old writer) and through :class:`PcapWriter` (1 MiB chunks);
  the two files must be identical.

    .venv/bin/python bench/bench_capture.py [--frames 200000] [--payload 1460] [--repeat 2]

Needs root and tcpreplay (Debian package).  On a shared 2-core machine the
numbers move with the other load: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import mmap
import os
import queue
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_packets import build_frame

from bridge.capture.afpacket import AfPacketCapture
from bridge.capture.frames import LINKTYPE_ETHERNET
from bridge.capture.pcapwriter import PcapWriter, pcap_global_header, pcap_record
from bridge.reinject.batchsend import BatchResult
from bridge.reinject.outputs import InterfaceOutput, OutputStats

CLONE_NEWNET = 0x40000000


def enter_namespace() -> str:
    """A fresh namespace with va<->vb; this thread (and every thread and child started
    from now on) moves into it."""
    name = f"tlsb-bcap-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    for command in (["link", "add", "va", "type", "veth", "peer", "name", "vb"], ["link", "set", "va", "up"],
                    ["link", "set", "vb", "up"]):
        subprocess.run(["ip", "-n", name, *command], check=True)
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"], check=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)
    return name


def rx_packets(interface: str) -> int:
    out = subprocess.run(["ip", "-s", "-j", "link", "show", interface], capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout)[0]["stats64"]["rx"]["packets"])


# ---- capture ------------------------------------------------------------------------

def capture_run(mode: str, pcap: Path, count: int, buffer_mb: int) -> dict:
    cap = AfPacketCapture("vb", ring=mode != "recv", buffer_bytes=buffer_mb << 20, idle_marker=True,
                          poll_interval=0.1)
    assert cap.mode == ("recv" if mode == "recv" else "ring"), cap.fallback_reason
    done = threading.Event()
    result = {"mode": mode, "frames": 0, "bytes": 0, "cpu": 0.0, "last": 0.0}

    def consume() -> None:
        cpu = time.thread_time()
        frames = size = 0
        last = 0.0
        if mode == "ring, batches":
            for batch in cap.batches():
                if batch is None:
                    if done.is_set():
                        break
                    continue
                frames += len(batch)
                size += sum(len(frame.data) for frame in batch)
                last = time.perf_counter()
        else:
            for frame in cap:
                if frame is None:
                    if done.is_set():
                        break
                    continue
                frames += 1
                size += len(frame.data)
                last = time.perf_counter()
        result.update(frames=frames, bytes=size, cpu=time.thread_time() - cpu, last=last)

    reader = threading.Thread(target=consume)
    reader.start()
    time.sleep(0.3)
    started = time.perf_counter()
    subprocess.run(["tcpreplay", "-q", "--topspeed", "-i", "va", str(pcap)], check=True, capture_output=True)
    result["replay"] = time.perf_counter() - started
    done.set()
    reader.join(60)
    result["drops"] = cap.drops
    cap.close()
    result["seconds"] = max(result["last"] - started, result["replay"])
    result["sent"] = count
    return result


def drain_run(mode: str, pcap: Path, count: int, buffer_mb: int) -> dict:
    """``count`` frames replayed while nobody reads, then read as fast as possible:
    the reader's own rate, with no sender competing for the CPUs."""
    cap = AfPacketCapture("vb", ring=mode != "recv", buffer_bytes=buffer_mb << 20, idle_marker=True,
                          poll_interval=0.05)
    subprocess.run(["tcpreplay", "-q", "--topspeed", "-i", "va", str(pcap)], check=True, capture_output=True)
    time.sleep(0.1)  # the last ring block is handed over after its timeout
    frames = size = 0
    cpu = time.thread_time()
    started = time.perf_counter()
    if mode == "ring, batches":
        for batch in cap.batches():
            if batch is None:
                break
            frames += len(batch)
            size += sum(len(frame.data) for frame in batch)
            if frames >= count:
                break
    else:
        for frame in cap:
            if frame is None:
                break
            frames += 1
            size += len(frame.data)
            if frames >= count:
                break
    seconds = time.perf_counter() - started
    cpu = time.thread_time() - cpu
    drops = cap.drops
    cap.close()
    return {"mode": mode, "frames": frames, "bytes": size, "seconds": seconds, "cpu": cpu, "drops": drops}


# ---- injection ----------------------------------------------------------------------

class OldInterfaceOutput:
    """The injection output as it was before batching: a queue.Queue drained by a
    thread with one send() per frame."""

    _STOP = object()

    def __init__(self, interface: str, *, queue_frames: int = 65536) -> None:
        self.stats = OutputStats()
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._socket.bind((interface, 0))
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_frames)
        self._thread = threading.Thread(target=self._send_loop, daemon=True)
        self._thread.start()

    def write(self, timestamp_ns: int, data: bytes) -> None:
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self.stats.dropped += 1

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            try:
                self._socket.send(item)  # type: ignore[arg-type]
            except OSError:
                self.stats.errors += 1
                continue
            self.stats.frames += 1
            self.stats.bytes += len(item)  # type: ignore[arg-type]

    def close(self) -> None:
        self._queue.put(self._STOP)
        self._thread.join(timeout=30)
        self._socket.close()


class TxRingSender:
    """PACKET_TX_RING (TPACKET_V2) with the batch sender's interface: frames copied
    into ring slots, TP_STATUS_SEND_REQUEST set, one send() to flush.  A bench
    candidate only (no recovery of a ring the kernel stopped on)."""

    method = "tx-ring"
    SLOTS = 1024
    SLOT = 2048  # frames up to 2016 bytes: enough for the bench

    def __init__(self, sock: socket.socket) -> None:
        sol_packet, packet_version, packet_tx_ring, packet_loss = 263, 10, 13, 14
        sock.setsockopt(sol_packet, packet_version, 1)  # TPACKET_V2
        sock.setsockopt(sol_packet, packet_loss, 1)
        block = 1 << 16
        sock.setsockopt(sol_packet, packet_tx_ring,
                        struct.pack("@4I", block, self.SLOTS * self.SLOT // block, self.SLOT, self.SLOTS))
        self._ring = mmap.mmap(sock.fileno(), self.SLOTS * self.SLOT)
        self._sock = sock
        self._index = 0

    def send(self, frames: Sequence[bytes]) -> BatchResult:
        result = BatchResult()
        ring = self._ring
        header = struct.Struct("@III").pack_into  # tp_status, tp_len, tp_snaplen
        for start in range(0, len(frames), self.SLOTS):
            chunk = frames[start:start + self.SLOTS]
            index = self._index
            for data in chunk:
                offset = index * self.SLOT
                size = len(data)
                ring[offset + 32:offset + 32 + size] = data  # data at TPACKET2_HDRLEN - sizeof(sockaddr_ll)
                header(ring, offset, 1, size, size)  # TP_STATUS_SEND_REQUEST
                index = (index + 1) % self.SLOTS
            self._index = index
            sent = self._sock.send(b"")
            result.frames += len(chunk)
            result.bytes += sent
        return result


def tx_ring_output(interface: str, *, queue_frames: int) -> InterfaceOutput:
    return InterfaceOutput(interface, sender=TxRingSender)


def new_output(interface: str, *, queue_frames: int) -> InterfaceOutput:
    return InterfaceOutput(interface)


#: frames per write_burst (about what one 16 KiB record makes at MTU 1500)
BURST = 13


def inject_run(name: str, factory, frames: list[bytes]) -> dict:
    before = rx_packets("vb")
    output = factory("va", queue_frames=len(frames))
    time.sleep(0.05)
    times = os.times()
    started = time.perf_counter()
    cpu = time.thread_time()
    if hasattr(output, "write_burst"):  # the sink's way: the frames of one event at a time
        for i in range(0, len(frames), BURST):
            output.write_burst(i, frames[i:i + BURST])
    else:
        for i, data in enumerate(frames):
            output.write(i, data)
    writer_cpu = time.thread_time() - cpu
    output.close()
    seconds = time.perf_counter() - started
    after = os.times()
    time.sleep(0.2)
    return {"name": name, "frames": output.stats.frames, "bytes": output.stats.bytes, "seconds": seconds,
            "writer_cpu": writer_cpu, "cpu": after.user + after.system - times.user - times.system,
            "received": rx_packets("vb") - before, "dropped": output.stats.dropped, "errors": output.stats.errors}


# ---- pcap output --------------------------------------------------------------------

def old_pcap_write(path: Path, frames: list[bytes]) -> None:
    with open(path, "wb") as f:  # the old writer: one write() per record into an 8 KiB buffer
        f.write(pcap_global_header(LINKTYPE_ETHERNET))
        f.writelines(pcap_record(1_700_000_000_000_000_000 + i, data) for i, data in enumerate(frames))


def new_pcap_write(path: Path, frames: list[bytes]) -> None:
    with PcapWriter(path, LINKTYPE_ETHERNET) as writer:
        for i, data in enumerate(frames):
            writer.write(1_700_000_000_000_000_000 + i, data)


def pcap_run(name: str, function, path: Path, frames: list[bytes]) -> dict:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    function(path, frames)
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    size = path.stat().st_size
    path.unlink()
    return {"name": name, "seconds": seconds, "size": size, "sha256": digest}


# ---- report -------------------------------------------------------------------------

def best(rows: list[dict], key: str) -> dict:
    return min(rows, key=lambda row: row[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--payload", type=int, default=1460, help="TCP payload bytes per frame (1460: 1514-byte frames)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each; the best is printed")
    parser.add_argument("--buffer-mb", type=int, default=64, help="ring / receive buffer of the capture")
    parser.add_argument("--backlog", type=int, default=25_000, help="frames waiting in the buffer for the drain runs")
    parser.add_argument("--backlog-mb", type=int, default=160, help="ring / receive buffer of the drain runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_capture: needs root (network namespaces, AF_PACKET)")
    if shutil.which("tcpreplay") is None:
        sys.exit("bench_capture: needs tcpreplay (apt-get install tcpreplay)")
    payload = bytes(range(256)) * (args.payload // 256 + 1)
    frames = [build_frame(i, payload[: args.payload]) for i in range(args.frames)]
    megabytes = sum(map(len, frames)) / 1e6
    namespace = enter_namespace()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-capture-") as tmp:
            pcap = Path(tmp) / "replay.pcap"
            new_pcap_write(pcap, frames)
            capture = {mode: [capture_run(mode, pcap, len(frames), args.buffer_mb) for _ in range(args.repeat)]
                       for mode in ("recv", "ring", "ring, batches")}
            backlog = Path(tmp) / "backlog.pcap"
            new_pcap_write(backlog, frames[: args.backlog])
            drain = {mode: [drain_run(mode, backlog, args.backlog, args.backlog_mb) for _ in range(args.repeat)]
                     for mode in ("recv", "ring", "ring, batches")}
            inject = {name: [inject_run(name, factory, frames) for _ in range(args.repeat)]
                      for name, factory in (("send per frame (old)", OldInterfaceOutput),
                                            ("sendmmsg (new)", new_output),
                                            ("TX ring (candidate)", tx_ring_output))}
            pcaps = {name: [pcap_run(name, function, Path(tmp) / "out.pcap", frames) for _ in range(args.repeat)]
                     for name, function in (("record by record (old)", old_pcap_write),
                                            ("1 MiB chunks (new)", new_pcap_write))}
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)

    print(f"{args.frames} frames of {len(frames[0])} bytes ({megabytes:.0f} MB), {os.cpu_count()} CPUs, "
          f"best of {args.repeat} (capture: least CPU; injection, pcap: fastest); ratios against the old path "
          f"of the same run")
    print()
    print(f"capture: tcpreplay --topspeed onto a veth, AfPacketCapture on its peer ({args.buffer_mb} MiB buffer)")
    header = (f"{'path':<16} {'captured':>9} {'drops':>7} {'frames/s':>10} {'MB/s':>7} {'CPU us/frame':>13} "
              f"{'x frames/s':>10} {'x CPU':>6}  drops of each run")
    print(header)
    print("-" * len(header))
    reference = None
    for mode, rows in capture.items():
        row = best(rows, "cpu")
        rate = row["frames"] / row["seconds"]
        cpu = row["cpu"] / max(row["frames"], 1) * 1e6
        if reference is None:
            reference = (rate, cpu)
        print(f"{mode:<16} {row['frames']:>9} {row['drops']:>7} {rate:>10,.0f} {row['bytes'] / row['seconds'] / 1e6:>7.1f} "
              f"{cpu:>13.2f} {rate / reference[0]:>10.2f} {reference[1] / cpu:>6.2f}  "
              f"{' '.join(str(r['drops']) for r in rows)}")
    print()
    print(f"capture, drain: {args.backlog} frames waiting in the buffer ({args.backlog_mb} MiB), read as fast as "
          "the reader can (no sender running)")
    header = f"{'path':<16} {'read':>9} {'drops':>7} {'frames/s':>10} {'MB/s':>7} {'CPU us/frame':>13} {'x frames/s':>10}"
    print(header)
    print("-" * len(header))
    reference = None
    for mode, rows in drain.items():
        row = best(rows, "seconds")
        rate = row["frames"] / row["seconds"]
        reference = reference or rate
        print(f"{mode:<16} {row['frames']:>9} {row['drops']:>7} {rate:>10,.0f} {row['bytes'] / row['seconds'] / 1e6:>7.1f} "
              f"{row['cpu'] / max(row['frames'], 1) * 1e6:>13.2f} {rate / reference:>10.2f}")
    print()
    print(f"injection: every frame as fast as possible (InterfaceOutput.write_burst of {BURST} frames at a time, the old "
          "output .write() of each), then close() (all sent)")
    header = (f"{'output':<22} {'sent':>8} {'received':>9} {'frames/s':>10} {'MB/s':>7} {'writer us/fr':>13} "
              f"{'all CPU us/fr':>14} {'x frames/s':>10} {'x writer':>9}")
    print(header)
    print("-" * len(header))
    reference = None
    for name, rows in inject.items():
        row = best(rows, "seconds")
        rate = row["frames"] / row["seconds"]
        writer = row["writer_cpu"] / len(frames) * 1e6
        if reference is None:
            reference = (rate, writer)
        print(f"{name:<22} {row['frames']:>8} {row['received']:>9} {rate:>10,.0f} {row['bytes'] / row['seconds'] / 1e6:>7.1f} "
              f"{writer:>13.2f} {row['cpu'] / len(frames) * 1e6:>14.2f} {rate / reference[0]:>10.2f} "
              f"{reference[1] / writer:>9.2f}")
    print()
    print("pcap output: the same frames to a file")
    header = f"{'writer':<24} {'frames/s':>10} {'MB/s':>7} {'x frames/s':>10}  same bytes"
    print(header)
    print("-" * len(header))
    reference = None
    digests = {rows[0]["sha256"] for rows in pcaps.values()}
    for name, rows in pcaps.items():
        row = best(rows, "seconds")
        rate = len(frames) / row["seconds"]
        reference = reference or rate
        print(f"{name:<24} {rate:>10,.0f} {row['size'] / row['seconds'] / 1e6:>7.1f} {rate / reference:>10.2f}  "
              f"{'yes' if len(digests) == 1 else 'NO'}")


if __name__ == "__main__":
    main()
