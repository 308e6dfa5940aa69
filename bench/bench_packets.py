"""Micro-benchmark of the capture hot path.

Builds a 100k-frame Ethernet/IPv4/TCP pcap in a temp dir, then prints frames/s for
``read_capture`` alone and for ``read_capture`` + ``decode_tcp``.

    .venv/bin/python bench/bench_packets.py [--frames N] [--payload BYTES]
"""

from __future__ import annotations

import argparse
import os
import struct
import tempfile
import time

from bridge.capture.frames import LINKTYPE_ETHERNET
from bridge.capture.pcapfile import read_capture
from bridge.capture.pcapwriter import PcapWriter
from bridge.engine.packets import decode_tcp


def build_frame(i: int, payload: bytes) -> bytes:
    """A valid Ethernet/IPv4/TCP frame (checksums zero: irrelevant for decoding)."""
    tcp = struct.pack("!HHIIBBHHH", 40000 + (i & 0xFF), 443, i, 1, 0x50, 0x18, 512, 0, 0)
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, i & 0xFFFF, 0x4000, 64, 6, 0, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + ip + tcp + payload


def bench(path: str, n: int) -> None:
    t = time.perf_counter()
    count = 0
    for _ in read_capture(path):
        count += 1
    dt = time.perf_counter() - t
    assert count == n
    print(f"read_capture:              {n / dt:>12,.0f} frames/s  ({dt:.3f} s)")

    t = time.perf_counter()
    segs = 0
    for f in read_capture(path):
        if decode_tcp(f.linktype, f.data, f.timestamp_ns) is not None:
            segs += 1
    dt = time.perf_counter() - t
    assert segs == n
    print(f"read_capture + decode_tcp: {n / dt:>12,.0f} frames/s  ({dt:.3f} s)")

    frames = list(read_capture(path))
    t = time.perf_counter()
    for f in frames:
        decode_tcp(f.linktype, f.data, f.timestamp_ns)
    dt = time.perf_counter() - t
    print(f"decode_tcp alone:          {n / dt:>12,.0f} frames/s  ({dt:.3f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--payload", type=int, default=200)
    args = ap.parse_args()
    payload = b"x" * args.payload
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.pcap")
        with PcapWriter(path, LINKTYPE_ETHERNET) as w:
            for i in range(args.frames):
                w.write(1_700_000_000_000_000_000 + i * 1000, build_frame(i, payload))
        print(f"{args.frames} frames, {os.path.getsize(path):,} bytes")
        bench(path, args.frames)


if __name__ == "__main__":
    main()
