"""Smoke test of the QEMU test guest (tests/support/guest.py): both kernel flavors
boot, serve TLS 1.2 and 1.3 on 4433 (host OpenSSL 3.0) and 4434 (wheel OpenSSL 3.5),
mirror traffic to a pcap, expose RAM in /dev/shm, reboot, and leave nothing behind.
Missing tools FAIL (never skip)."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest

from tests.support.guest import READY_MARKER, Guest, build_guest_image, curl_guest

pytestmark = pytest.mark.real

TLS_VERSIONS = {
    "TLSv1.3": ("--tlsv1.3",),
    "TLSv1.2": ("--tlsv1.2", "--tls-max", "1.2"),
}


def _pcap_records(path: Path) -> int:
    data = path.read_bytes()
    assert len(data) >= 24, f"{path}: no pcap header"
    magic = data[:4]
    assert magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4"), f"{path}: not a pcap ({magic.hex()})"
    endian = "<" if magic == b"\xd4\xc3\xb2\xa1" else ">"
    off, count = 24, 0
    while off + 16 <= len(data):
        incl = struct.unpack_from(endian + "IIII", data, off)[2]
        off += 16 + incl
        count += 1
    return count


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("flavor", ["6.1", "6.12"])
def test_guest_boots_serves_tls_and_cleans_up(flavor: str, tmp_path: Path, record_property) -> None:
    image = build_guest_image(flavor)
    assert image.kernel.is_file() and image.initrd.is_file() and image.cert.is_file()
    assert image.kernel_version.startswith(flavor + ".")
    assert image.system_map.is_file()
    assert "Library: OpenSSL 3.5.9" in image.alt_openssl_version
    assert build_guest_image(flavor) == image  # cached

    pcap = tmp_path / "guest.pcap"
    keylog = tmp_path / "keylog.txt"
    guest = Guest(image, pcap=pcap, workdir=tmp_path / "guest", name=f"smoke-{flavor}")
    assert not any("nokaslr" in arg for arg in guest.command_line())
    t0 = time.monotonic()
    with guest:
        boot = time.monotonic() - t0
        record_property("boot_seconds", round(boot, 1))
        print(f"\n{flavor} ({image.kernel_version}): boot {boot:.1f} s")
        qemu_pid, shm = guest.qemu_pid, guest.memory_path
        assert Path(f"/proc/{qemu_pid}").exists()
        assert shm.parent == Path("/dev/shm") and shm.stat().st_size == guest.memory_bytes == 512 << 20
        assert sorted(guest.hostfwd.values()) == [4433, 4434]
        assert guest.host_port(4433) != guest.host_port(4434)
        console = guest.console_text()
        assert console.count(READY_MARKER) == 1
        assert f"guest-init: kernel {image.kernel_version}" in console
        assert "openssl-4433 OpenSSL 3.0." in console and "Library: OpenSSL 3.0." in console
        assert "openssl-4434 OpenSSL 3.0." in console and "(Library: OpenSSL 3.5.9" in console
        assert "running" in guest.monitor("info status")

        for port in (4433, 4434):
            for version, args in TLS_VERSIONS.items():
                body = curl_guest(guest, port, keylog, *args).decode(errors="replace")
                assert f"s_server -accept {port} -www" in body, body[:300]
                assert f"New, {version}, Cipher is " in body, body
        lines = keylog.read_text().splitlines()
        assert sum(line.startswith("CLIENT_RANDOM ") for line in lines) == 2  # one per TLS 1.2 connection
        assert sum(line.startswith("CLIENT_TRAFFIC_SECRET_0 ") for line in lines) == 2
        assert pcap.stat().st_size > 24

        took = guest.reboot()
        print(f"{flavor}: reboot {took:.1f} s")
        record_property("reboot_seconds", round(took, 1))
        assert guest.ready_count() == 2
        assert guest.qemu_pid == qemu_pid
        body = curl_guest(guest, 4434, keylog, "--tlsv1.3").decode(errors="replace")
        assert "New, TLSv1.3, Cipher is " in body

    assert _pid_gone(qemu_pid), f"qemu {qemu_pid} still running after close()"
    assert not shm.exists(), f"{shm} left behind"
    assert guest.console_text().count(READY_MARKER) == 2  # kept after close
    # 5 TLS connections (plus readiness probes) crossed the guest NIC
    assert _pcap_records(pcap) > 5 * 10
