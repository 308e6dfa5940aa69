"""The capture's pure parts: the TPACKET_V3 ring's shape and VLAN tag re-insertion
(the capture itself runs on a veth in tests/test_afpacket.py)."""

from __future__ import annotations

import pytest

from bridge.capture.afpacket import RingGeometry, insert_vlan_tag, ring_geometry


@pytest.mark.parametrize("snaplen", [60, 1514, 2048, 4096, 65535, 262144])
@pytest.mark.parametrize("buffer_bytes", [1, 1 << 18, 1 << 20, 32 << 20, 64 << 20, 4096 << 20])
def test_ring_geometry_is_one_the_kernel_takes(snaplen: int, buffer_bytes: int) -> None:
    geometry = ring_geometry(snaplen, buffer_bytes, page_size=4096)
    block = geometry.block_size
    assert block & (block - 1) == 0 and 1 << 16 <= block <= 1 << 20  # a power of two pages
    assert block <= max(1 << 18, 2 * snaplen)  # no larger than needed: more blocks, less lost to a stall
    assert block % geometry.frame_size == 0 and geometry.frame_size % 16 == 0
    assert geometry.frame_count == block // geometry.frame_size * geometry.block_count
    assert geometry.block_count >= 4
    assert geometry.size == max(buffer_bytes - buffer_bytes % block, 4 * block)  # what was asked, in blocks
    assert geometry.max_frame >= min(snaplen, (1 << 20) - 200)  # a snaplen frame fits one block


def test_ring_geometry_prefers_256_kib_blocks_when_the_buffer_holds_16() -> None:
    assert ring_geometry(2048, 64 << 20) == RingGeometry(1 << 18, 256, 2048)
    assert ring_geometry(2048, 1 << 20).block_size == 1 << 16  # 16 blocks rather than 4
    assert ring_geometry(262144, 32 << 20) == RingGeometry(1 << 19, 64, 2048)  # the default snaplen


def test_insert_vlan_tag() -> None:
    base = bytes(6) + bytes([2] * 6) + b"\x08\x00payload"
    assert insert_vlan_tag(base, 0x2005) == base[:12] + b"\x81\x00\x20\x05\x08\x00payload"
    assert insert_vlan_tag(base, 7, 0x88A8)[12:16] == b"\x88\xa8\x00\x07"
