"""The VM harvester against a real guest booted under QEMU (TCG): Debian's kernel
with KASLR, openssl s_server on two OpenSSL builds, nothing of ours inside.
The harvested keys equal the host clients' key logs; the guest NIC's mirror pcap
decrypts with the harvested keys alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bridge.vmi.btf import btf_from_kernel_image, find_btf_in_memory
from bridge.vmi.linux import LinuxGuest
from bridge.vmi.physmem import MemoryFileBackend, QemuProcessBackend
from tests.support.guest import Guest, build_guest_image, curl_guest
from tests.support.harvest import compare_keylogs
from tests.support.keyfeed import BridgeProcess

pytestmark = pytest.mark.real

TLS13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
TLS12 = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384")


class _GuestThread:
    """QEMU dies with the thread that started it: keep one alive for a module's guest."""

    def __init__(self, flavor: str, tmp: Path) -> None:
        self.flavor, self.tmp = flavor, tmp
        self.guest: Guest | None = None
        self.error: BaseException | None = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with Guest(build_guest_image(self.flavor), pcap=self.tmp / "guest.pcap", workdir=self.tmp) as guest:
                self.guest = guest
                self._ready.set()
                self._stop.wait()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self._ready.set()

    def __enter__(self) -> Guest:
        self._thread.start()
        self._ready.wait(300)
        if self.error is not None or self.guest is None:
            raise RuntimeError(f"the test guest did not boot: {self.error!r}")
        return self.guest

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    with _GuestThread("6.1", tmp_path_factory.mktemp("guest-6.1")) as booted:
        yield booted


def _harvester(guest: Guest, tmp: Path, *extra: str, name: str = "harvest") -> BridgeProcess:
    process = BridgeProcess(["harvest", "vm", "--memory-file", str(guest.memory_path), "--wire-pcap", str(guest.pcap),
                             "--name", "test-guest", *extra], tmp / f"{name}.err")
    process.wait_for("harvesting", timeout=60)
    return process


def _s_client(guest: Guest, port: int, keylog: Path, *args: str, hold: float = 0.5) -> bytes:
    """A keep-alive style client: connects, waits, then sends its request."""
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(port)}", "-keylogfile",
                             str(keylog), "-quiet", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    time.sleep(hold)
    out, _ = proc.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
    return out


def _clients(guest: Guest, keylog: Path) -> int:
    """Both servers (Debian's 3.0.19 on 4433, a wheel's 3.5.9 on 4434), TLS 1.3 and 1.2."""
    count = 0
    for port in (4433, 4434):
        for suite in TLS13:
            assert b"s_server" in curl_guest(guest, port, keylog, "--tlsv1.3", "--tls13-ciphers", suite)
            count += 1
        for cipher in TLS12:
            assert b"s_server" in curl_guest(guest, port, keylog, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher)
            count += 1
        assert b"s_server" in _s_client(guest, port, keylog, "-tls1_3")
        count += 1
    return count


def _stop(process: BridgeProcess) -> str:
    time.sleep(1.0)  # the last ClientHellos are in the pcap; their searches finish
    assert process.stop() == 0, process.text()
    return process.text()


def test_guest_os_awareness_from_btf_found_in_memory_and_in_the_image(guest):
    memory = MemoryFileBackend(guest.memory_path)
    try:
        from_image = btf_from_kernel_image(guest.image.kernel)
        in_memory = find_btf_in_memory(memory.read, memory.layout.ranges())
        assert len(from_image) == len(in_memory) > 50_000
        linux = LinuxGuest(memory, in_memory, memory.layout.ranges())
        processes = {p.comm for p in linux.processes()}
        assert {"init", "openssl"} <= processes
        server = next(p for p in linux.processes() if p.comm == "openssl")
        paths = {vma.path for vma in linux.vmas(server)}
        assert "/usr/bin/openssl" in paths and any("libssl" in path for path in paths)
        # KASLR is on: the direct map is not at its unrandomized base
        assert linux.kernel.direct_map != 0xFFFF_8880_0000_0000 and linux.kernel.levels == 4
    finally:
        memory.close()


def test_harvested_keys_equal_the_clients_and_decrypt_the_mirror(guest, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _harvester(guest, tmp_path, "--comm", "openssl", "--keylog", str(harvested))
    assert "openssl[" in harvester.text() and "libssl.so.3" in harvester.text()
    connections = _clients(guest, client)
    summary = _stop(harvester)
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3], summary)
    assert re.search(rf"{connections} connections published of \d+ ClientHellos", summary), summary
    # the mirror pcap, decrypted with the harvested keys only
    flows = tmp_path / "flows.jsonl"
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(guest.pcap), "--keylog",
                             str(harvested), "--flows", str(flows)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    randoms = {line.split()[1] for line in harvested.read_text().splitlines()}
    ours = [json.loads(line) for line in flows.read_text().splitlines()]
    ours = [r for r in ours if r["client_random"] in randoms]
    assert len(ours) == connections
    assert all(r["status"] == "decrypted" for r in ours), [(r["status"], r["reason"]) for r in ours]
    origins = {r["server"].rsplit(":", 1)[1] for r in ours}
    assert origins == {"4433", "4434"}


def test_reading_the_ram_inside_the_qemu_process_and_the_image_btf(guest, tmp_path):
    """An unmodified guest: no RAM file, QEMU's own memory instead."""
    memory = QemuProcessBackend(guest.qemu_pid, guest.memory_bytes)
    try:
        file_backend = MemoryFileBackend(guest.memory_path)
        assert memory.read(0x100000, 4096) == file_backend.read(0x100000, 4096)
        file_backend.close()
    finally:
        memory.close()
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    process = BridgeProcess(["harvest", "vm", "--qemu-pid", str(guest.qemu_pid), "--ram-size",
                             f"{guest.memory_bytes // (1 << 20)}M", "--kernel", str(guest.image.kernel),
                             "--wire-pcap", str(guest.pcap), "--pid", *[str(p) for p in _server_pids(guest)],
                             "--keylog", str(harvested)], tmp_path / "harvest.err")
    process.wait_for("harvesting", timeout=60)
    for suite in TLS13[:2]:
        curl_guest(guest, 4433, client, "--tlsv1.3", "--tls13-ciphers", suite)
    curl_guest(guest, 4433, client, "--tlsv1.2", "--tls-max", "1.2")
    _stop(process)
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra


def _server_pids(guest: Guest) -> list[int]:
    memory = MemoryFileBackend(guest.memory_path)
    try:
        linux = LinuxGuest(memory, btf_from_kernel_image(guest.image.kernel), memory.layout.ranges())
        return [p.pid for p in linux.processes() if p.comm == "openssl"]
    finally:
        memory.close()


def test_guest_processes_that_die_and_start_later(guest, tmp_path):
    """The 3.5.9 server is killed (one of its connections open) and started again: the
    harvester keeps going, and harvests the new process after its rescan."""
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _harvester(guest, tmp_path, "--comm", "openssl", "--keylog", str(harvested))
    curl_guest(guest, 4434, client, "--tlsv1.3")
    held = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(4434)}", "-quiet",
                             "-keylogfile", str(client)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    status, output = guest.shell("for p in $(pidof openssl); do grep -q 4434 /proc/$p/cmdline && kill -9 $p; done; "
                                 "LD_LIBRARY_PATH=/opt/ossl35 openssl s_server -accept 4434 -www -quiet "
                                 "-cert /etc/guest/cert.pem -key /etc/guest/key.pem </dev/null >/dev/null 2>&1 &")
    assert status == 0, output
    held.kill()
    held.wait()
    time.sleep(4)  # the rescan (every 2 s) finds the new process
    curl_guest(guest, 4434, client, "--tlsv1.3")
    curl_guest(guest, 4434, client, "--tlsv1.2", "--tls-max", "1.2")
    summary = _stop(harvester)
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, summary
    assert "Traceback" not in summary


def test_the_libvmi_backend_says_what_it_needs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "harvest", "vm", "--libvmi", "web01", "--all",
                             "--wire-pcap", str(tmp_path / "x.pcap"), "--keylog", str(tmp_path / "k")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "LibVMI and its Python bindings" in result.stderr
    assert "--memory-file or --qemu-pid" in result.stderr and "Traceback" not in result.stderr


def test_misses_are_counted_and_the_guest_reboot_is_followed(guest, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _harvester(guest, tmp_path, "--comm", "openssl", "--keylog", str(harvested))
    curl_guest(guest, 4433, client, "--tlsv1.3")
    guest.reboot()
    time.sleep(3)  # the harvester's rescan finds the moved kernel (KASLR)
    curl_guest(guest, 4433, client, "--tlsv1.3")
    _s_client(guest, 4434, client, "-tls1_2")
    summary = _stop(harvester)
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, summary
    assert "re-located" in summary and int(re.search(r"(\d+) attaches", summary).group(1)) >= 2


def test_the_backports_6_12_kernel_line(tmp_path):
    """A second kernel line (bookworm-backports' 6.12, zstd-compressed image): the same
    harvester, no per-kernel profile."""
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    with _GuestThread("6.12", tmp_path / "guest") as booted:
        harvester = _harvester(booted, tmp_path, "--comm", "openssl", "--kernel", str(booted.image.kernel),
                               "--keylog", str(harvested))
        for suite in TLS13[:2]:
            curl_guest(booted, 4433, client, "--tlsv1.3", "--tls13-ciphers", suite)
        curl_guest(booted, 4434, client, "--tlsv1.2", "--tls-max", "1.2")
        summary = _stop(harvester)
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, summary
    assert "3 connections published" in summary
