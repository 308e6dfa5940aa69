"""TPACKET_V3 ring blocks as the kernel fills them, for the ring readers' tests and fuzz seeds."""

from __future__ import annotations

import struct

BLOCK_HEADER = 48
V3_HEADER = 48 + 20  # what the kernel puts before tp_mac


def tpacket_v3_block(frames, *, size: int = 1 << 16) -> bytearray:  # type: ignore[no-untyped-def]
    """A ring of one block: tpacket_block_desc, then each tpacket3_hdr with its frame at
    tp_mac, the next header 16-byte aligned after it.  ``frames``: (seconds, nanoseconds,
    data, tp_status, tp_vlan_tci, tp_vlan_tpid) each."""
    ring = bytearray(size)
    struct.pack_into("=III", ring, 8, 1, len(frames), BLOCK_HEADER)  # status TP_STATUS_USER, count, first
    position = BLOCK_HEADER
    for i, (sec, nsec, data, status, tci, tpid) in enumerate(frames):
        mac = V3_HEADER
        length = mac + len(data)
        next_offset = 0 if i == len(frames) - 1 else (length + 15) & ~15
        struct.pack_into("=IIIIIIHH", ring, position, next_offset, sec, nsec, len(data), len(data), status, mac, mac)
        struct.pack_into("=IIH", ring, position + 28, 0, tci, tpid)  # hv1: tp_rxhash, tp_vlan_tci, tp_vlan_tpid
        ring[position + mac:position + mac + len(data)] = data
        position += next_offset
    return ring
