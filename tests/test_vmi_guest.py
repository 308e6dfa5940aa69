"""The VM harvester against a real guest booted under QEMU (TCG): Debian's kernel
with KASLR, openssl s_server on two OpenSSL builds, nothing of ours inside.
The harvested keys equal the host clients' key logs; the guest NIC's mirror pcap
decrypts with the harvested keys alone."""

from __future__ import annotations

import json
import re
import signal
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
from tests.support.harvest import compare_keylogs, hold_until_harvested, randoms
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
            with Guest(build_guest_image(self.flavor), pcap=self.tmp / "guest.pcap", workdir=self.tmp,
                       gdb_port=0) as guest:
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


def _s_client(guest: Guest, port: int, keylog: Path, *args: str, hold: float = 0.5,
              harvested: Path | None = None) -> bytes:
    """A keep-alive style client: connects, waits (given ``harvested``, also until its
    connection is in that key log: held open until found, however loaded the host and
    slow the TCG guest), then sends its request."""
    before = randoms(keylog)
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(port)}", "-keylogfile",
                             str(keylog), "-quiet", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    time.sleep(hold)
    if harvested is not None:
        hold_until_harvested(keylog, harvested, before, alive=lambda: proc.poll() is None)
    out, _ = proc.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
    return out


def _clients(guest: Guest, keylog: Path, held: Path, harvested: Path) -> None:
    """Both servers (Debian's 3.0.19 on 4433, a wheel's 3.5.9 on 4434), TLS 1.3 and 1.2:
    one-shot curls (key log ``keylog``), and connections held open a moment (``held``)."""
    for port in (4433, 4434):
        for suite in TLS13:
            assert b"s_server" in curl_guest(guest, port, keylog, "--tlsv1.3", "--tls13-ciphers", suite)
        for cipher in TLS12:
            assert b"s_server" in curl_guest(guest, port, keylog, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher)
        assert b"s_server" in _s_client(guest, port, held, "-tls1_3", harvested=harvested)
        assert b"s_server" in _s_client(guest, port, held, "-tls1_2", harvested=harvested)


def _randoms(keylog: Path) -> set[str]:
    return {line.split()[1] for line in keylog.read_text().splitlines() if line.strip() and line[0] != "#"}


def _assert_wire_harvest(client: Path, harvested: Path, summary: str, *, held: set[str] = frozenset()) -> set[str]:
    """The wire trigger races with short connections (s_server -www closes right after
    answering; under TCG a search round takes milliseconds): a connection it could not
    see is a counted miss.  Every published key equals the client's; every ClientHello
    is accounted for; connections held open are never missed; one-shot ones are caught
    too (how many is a figure of bench/bench_vmi.py).  Returns the client randoms published."""
    counts = re.search(r"(\d+) connections published of (\d+) searched \((\d+) ClientHellos, 0 sensor requests, "
                       r"0 named twice, 0 dropped at the bound\); misses: (\d+) closed before .*?, "
                       r"(\d+) not found .*?, (\d+) incomplete, (\d+) unfinished", summary)
    assert counts, summary
    published, hellos, seen, *misses = (int(x) for x in counts.groups())
    assert seen == hellos, summary
    connections = _randoms(client)
    assert hellos == len(connections) and published + sum(misses) == hellos, summary
    missing, extra = compare_keylogs(client, harvested)
    assert not extra, (sorted(extra)[:3], summary)  # nothing wrong was published
    got = _randoms(harvested)
    assert len({line[1] for line in missing} - got) == hellos - published  # what is missing is a counted miss
    assert held <= got, summary
    # One-shot connections (s_server -www closes right after answering, ~25 ms under TCG) race
    # the search; the rate caught is a figure of bench/bench_vmi.py, not a property (it was most
    # of them on a quiet host, 3 of 10 at a load average of 6.5): some are, or the search does
    # not reach them at all.  (A build first met in the guest is also confirmed on them.)
    one_shot, caught = hellos - len(held), len(got - held)
    assert one_shot == 0 or caught >= 1, summary
    return got


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
        _assert_exported_symbols(linux)
    finally:
        memory.close()


def _assert_exported_symbols(linux: LinuxGuest) -> None:
    """Exported symbols from the guest's own __ksymtab: jiffies ticks, and
    nr_cpu_ids says what QEMU was told (-smp 1)."""
    jiffies = linux.exported_symbol("jiffies")
    assert jiffies is not None and jiffies >= 0xFFFF_FFFF_8000_0000
    first = linux.jiffies()
    time.sleep(1.0)
    assert 50 <= linux.jiffies() - first <= 1000  # HZ 250 (Debian), TCG slack
    assert int.from_bytes(linux.read(linux.exported_symbol("nr_cpu_ids"), 4), "little") == 1
    assert linux.exported_symbol("no_such_exported_symbol") is None


def test_a_paused_guest_is_noticed_and_the_harvester_carries_on(guest, tmp_path):
    """jiffies standing still (a paused guest, or a kernel's remains after a reboot)
    makes the harvester look for another kernel; there is none: it stays, and
    harvests again when the guest runs."""
    from bridge.harvest.profile import DEFAULT_PROFILE_DIR
    from bridge.harvest.profile import ProfileStore
    from bridge.harvest.wire_search import WireHello
    from bridge.vmi.harvester import VmHarvester

    memory = MemoryFileBackend(guest.memory_path)
    lines: list[str] = []
    published = []
    harvester = VmHarvester(memory, btf_from_kernel_image(guest.image.kernel), [published.append],
                            vm_name="paused", profiles=ProfileStore([DEFAULT_PROFILE_DIR]),
                            comms=("openssl",), clock_stall=1.0, log=lines.append)
    stop = threading.Event()
    try:
        harvester.attach()
        assert harvester.targets
        guest.qmp("stop")
        try:
            runner = threading.Thread(target=harvester.run, args=(_ticks(stop), stop),
                                      kwargs={"rescan_interval": 0.3}, daemon=True)
            runner.start()
            deadline = time.monotonic() + 20
            while harvester.stats.attaches < 2 and time.monotonic() < deadline:  # the stall, then the search
                time.sleep(0.1)
        finally:
            guest.qmp("cont")
        assert harvester.stats.clock_stalls >= 1, lines
        assert any("jiffies has not moved" in line for line in lines), lines
        assert any("no other kernel in guest memory" in line for line in lines), lines
        # running again: a held connection is found through the same kernel
        keylog = tmp_path / "client.keylog"
        proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(4433)}",
                                 "-keylogfile", str(keylog), "-quiet", "-tls1_3"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (keylog.exists() and "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        [random] = {bytes.fromhex(line.split()[1]) for line in keylog.read_text().splitlines()
                    if line.startswith("CLIENT_TRAFFIC_SECRET_0 ")}
        harvester.inbox.put(WireHello(random, (bytes(4), 1), (bytes(4), 2), "request"))
        deadline = time.monotonic() + 20
        while not published and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
        assert [record.client_random for record in published] == [random]
        assert published[0].origin.trigger == "vm-request"
    finally:
        stop.set()
        if "runner" in locals():
            runner.join(10)
        memory.close()


def _ticks(stop: threading.Event):
    while not stop.wait(0.005):
        yield None


def test_harvested_keys_equal_the_clients_and_decrypt_the_mirror(guest, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _harvester(guest, tmp_path, "--comm", "openssl", "--keylog", str(harvested))
    assert "openssl[" in harvester.text() and "libssl.so.3" in harvester.text()
    _clients(guest, client, held := tmp_path / "held.keylog", harvested)
    summary = _stop(harvester)
    for line in held.read_text().splitlines(keepends=True):  # one client key log for the checks
        with open(client, "a") as handle:
            handle.write(line)
    randoms = _assert_wire_harvest(client, harvested, summary, held=_randoms(held))
    # the mirror pcap, decrypted with the harvested keys only
    flows = tmp_path / "flows.jsonl"
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(guest.pcap), "--keylog",
                             str(harvested), "--flows", str(flows)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ours = [json.loads(line) for line in flows.read_text().splitlines()]
    ours = [r for r in ours if r.get("client_random") in randoms]  # (not the summary lines: issue 17)
    assert len(ours) == len(randoms)
    assert all(r["status"] == "decrypted" for r in ours), [(r["status"], r["reason"]) for r in ours]
    origins = {r["server"].rsplit(":", 1)[1] for r in ours}
    assert origins == {"4433", "4434"}


def test_a_sensors_requests_alone_trigger_the_search_in_the_guest(guest, tmp_path):
    """A hypervisor harvester that sees none of the VM's traffic: the live sensor
    (capturing the host side of the guest's port forwards) asks for each connection
    it sees begin over the CurveZMQ feed, and decrypts it with the answer."""
    from tests.support.keyfeed import make_feed_certs

    certs = make_feed_certs(tmp_path / "certs")
    endpoint = f"ipc://{tmp_path}/feed"
    client, harvested, flows = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "flows.jsonl"
    harvester = BridgeProcess(["harvest", "vm", "--memory-file", str(guest.memory_path), "--name", "test-guest",
                               "--comm", "openssl", "--trigger", "requests", "--bind", endpoint,
                               *certs.publisher_args(), "--keylog", str(harvested)], tmp_path / "harvest.err")
    harvester.wait_for("harvesting", timeout=60)
    sensor = BridgeProcess(["decrypt", "-i", "lo", "--keys", endpoint, *certs.sensor_args(), "--flows", str(flows)],
                           tmp_path / "sensor.err")
    try:
        sensor.wait_for("capturing on lo", timeout=30)
        for port in (4433, 4434):
            assert b"s_server" in _s_client(guest, port, client, "-tls1_3")
            assert b"s_server" in _s_client(guest, port, client, "-tls1_2")
        time.sleep(1.0)
    finally:
        sensor_code = sensor.stop()
    summary = _stop(harvester)
    assert sensor_code == 0, sensor.text()
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, summary
    assert re.search(r"4 connections published of 4 searched \(0 ClientHellos, 4 sensor requests, 0 named twice",
                     summary), summary
    # (the sensor also sees the tail of the boot's port probes on lo: no handshake, not ours)
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    records = [r for r in records if r.get("handshake_seen")]  # (not the summary lines: issue 17)
    assert [r["status"] for r in records] == ["decrypted"] * 4, records
    assert {r["key_origin"]["trigger"] for r in records} == {"vm-request"}
    assert {r["key_origin"]["vm"] for r in records} == {"test-guest"}
    assert {r["client_random"] for r in records} == _randoms(client)


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
    # Connections held open a moment: reading RAM through the QEMU process is the
    # point here, not the race with one-shot connections (the RAM-file test has those).
    for suite in TLS13[:2]:
        _s_client(guest, 4433, client, "-tls1_3", "-ciphersuites", suite, harvested=harvested)
    _s_client(guest, 4433, client, "-tls1_2", harvested=harvested)
    _s_client(guest, 4434, client, "-tls1_3", harvested=harvested)
    summary = _stop(process)
    assert len(_assert_wire_harvest(client, harvested, summary, held=_randoms(client))) == 4


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
    _s_client(guest, 4434, client, "-tls1_3", harvested=harvested)  # (a one-shot curl could be missed: a race)
    before = randoms(client)
    held = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(4434)}", "-quiet",
                             "-keylogfile", str(client)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    hold_until_harvested(client, harvested, before, alive=lambda: held.poll() is None)  # open until found
    status, output = guest.shell("for p in $(pidof openssl); do grep -q 4434 /proc/$p/cmdline && kill -9 $p; done; "
                                 "LD_LIBRARY_PATH=/opt/ossl35 openssl s_server -accept 4434 -www -quiet "
                                 "-cert /etc/guest/cert.pem -key /etc/guest/key.pem </dev/null >/dev/null 2>&1 &")
    assert status == 0, output
    held.kill()
    held.wait()
    time.sleep(4)  # the rescan (every 2 s) finds the new process
    _s_client(guest, 4434, client, "-tls1_3", harvested=harvested)
    _s_client(guest, 4434, client, "-tls1_2", harvested=harvested)
    summary = _stop(harvester)
    _assert_wire_harvest(client, harvested, summary, held=_randoms(client))
    assert "Traceback" not in summary


def _hooks_harvester(guest: Guest, tmp: Path, keylog: Path) -> BridgeProcess:
    return _harvester(guest, tmp, "--trigger", "hooks", "--gdb", f"127.0.0.1:{guest.gdb_port}", "--qmp",
                      str(guest.qmp_path), "--comm", "openssl", "--keylog", str(keylog), name="hooks")


def test_gdbstub_breakpoint_hooks(guest, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _hooks_harvester(guest, tmp_path, harvested)
    time.sleep(1.0)  # the breakpoints are in
    connections = 0
    for port in (4433, 4434):
        for args in (("--tlsv1.3", "--tls13-ciphers", TLS13[1]), ("--tlsv1.2", "--tls-max", "1.2")):
            assert b"s_server" in curl_guest(guest, port, client, *args)
            connections += 1
    summary = _stop(harvester)
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, summary
    assert f"{connections} connections published" in summary
    stops = re.search(r"(\d+) stops, (\d+) in targets .* (\d+) first instructions emulated, (\d+) stepped over", summary)
    assert stops and int(stops.group(2)) >= connections and int(stops.group(4)) == 0, summary
    assert "VM status: running" in guest.monitor("info status")


def test_a_killed_hooks_harvester_leaves_the_guest_running_without_breakpoints(guest, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _hooks_harvester(guest, tmp_path, harvested)
    time.sleep(1.0)
    busy = threading.Event()

    def traffic() -> None:
        while not busy.is_set():
            try:
                curl_guest(guest, 4433, client, "--tlsv1.3", timeout=20)
            except Exception:  # noqa: BLE001 - only the guest's state after the kill matters
                pass

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(1.5)
    harvester.stop(signal.SIGKILL)  # breakpoints set, the guest perhaps stopped at one
    busy.set()
    worker.join(60)
    time.sleep(2.0)  # the watchdog: remove the breakpoints, detach
    assert "VM status: running" in guest.monitor("info status")
    started = time.monotonic()
    for _ in range(3):  # a breakpoint left behind would pause the guest at the first of these
        assert b"s_server" in curl_guest(guest, 4433, tmp_path / "after.keylog", "--tlsv1.3", timeout=20)
    assert time.monotonic() - started < 20
    assert "VM status: running" in guest.monitor("info status")


def test_misses_are_counted_and_the_guest_reboot_is_followed(guest, tmp_path):
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    harvester = _harvester(guest, tmp_path, "--comm", "openssl", "--keylog", str(harvested))
    _s_client(guest, 4433, client, "-tls1_3", harvested=harvested)
    guest.reboot()
    time.sleep(3)  # the harvester's rescan finds the moved kernel (KASLR)
    _s_client(guest, 4433, client, "-tls1_3", harvested=harvested)
    _s_client(guest, 4434, client, "-tls1_2", harvested=harvested)
    summary = _stop(harvester)
    _assert_wire_harvest(client, harvested, summary, held=_randoms(client))
    assert "re-located" in summary and int(re.search(r"(\d+) attaches", summary).group(1)) >= 2


def test_the_backports_6_12_kernel_line(tmp_path):
    """A second kernel line (bookworm-backports' 6.12, zstd-compressed image): the same
    harvester, no per-kernel profile."""
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    with _GuestThread("6.12", tmp_path / "guest") as booted:
        memory = MemoryFileBackend(booted.memory_path)
        try:
            _assert_exported_symbols(LinuxGuest(memory, btf_from_kernel_image(booted.image.kernel),
                                                memory.layout.ranges()))
        finally:
            memory.close()
        harvester = _harvester(booted, tmp_path, "--comm", "openssl", "--kernel", str(booted.image.kernel),
                               "--keylog", str(harvested))
        for suite in TLS13[:2]:
            _s_client(booted, 4433, client, "-tls1_3", "-ciphersuites", suite, harvested=harvested)
        _s_client(booted, 4434, client, "-tls1_2", harvested=harvested)
        summary = _stop(harvester)
    _assert_wire_harvest(client, harvested, summary, held=_randoms(client))
    assert "3 connections published" in summary


def test_guest_builds_no_profile_knows_are_harvested_through_confirmed_candidates(guest, tmp_path):
    """The guests' libssl builds (Debian's, and the wheel's 3.5.9) hidden from the
    harvester, as after an apt upgrade inside the guest: a guest's library cannot be
    loaded here, so known layouts of other builds are candidates, confirmed on the
    first live connection of each TLS version from the guest's memory alone; every
    line published equals the clients' own, TLS 1.3 and 1.2, and no action on the host."""
    import shutil

    from bridge.harvest.elf import read_elf
    from bridge.harvest.profile import SHIPPED_DIR

    hidden = {read_elf("/usr/lib/x86_64-linux-gnu/libssl.so.3").build_id, "5bdf6fc593968e3341155c5676bfb8cc9b60c232"}
    profiles = tmp_path / "other-builds"
    profiles.mkdir()
    for path in SHIPPED_DIR.glob("*.json"):
        if path.stem not in hidden:
            shutil.copy(path, profiles / path.name)
    client, harvested, status = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "status.json"
    harvester = _harvester(guest, tmp_path, "--comm", "openssl", "--keylog", str(harvested), "--no-shipped-profiles",
                           "--profiles", str(profiles), "--profile-cache", str(tmp_path / "cache"),
                           "--status", str(status))
    for port in (4433, 4434):
        for args in (("-tls1_3",), ("-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"), ("-tls1_3",), ("-tls1_2",)):
            assert b"s_server" in _s_client(guest, port, client, *args)
    summary = _stop(harvester)
    missing, extra = compare_keylogs(client, harvested)
    assert not extra, sorted(extra)[:3]  # nothing wrong was ever published
    assert not missing, (sorted(missing)[:3], summary)
    layouts = {entry["build_id"]: entry for entry in json.loads(status.read_text())["layouts"]}
    assert hidden <= set(layouts), layouts
    for build_id in hidden:
        assert layouts[build_id]["origin"] == "inferred and confirmed", layouts[build_id]
        assert layouts[build_id]["confirmed"] == ["TLS1.2", "TLS1.3"], layouts[build_id]
        assert (tmp_path / "cache" / f"{build_id}.json").exists()


def _relearn_server(guest: Guest, tmp: Path) -> tuple[int, str]:
    """The 4434 server restarted on a copy of the guest's libssl (the host's Debian build)
    whose build-id is changed, as an apt upgrade inside the guest would leave it: the
    guest's own shell patches the copy (printf | dd).  Returns (its pid, its build-id)."""
    from bridge.harvest.elf import read_elf

    library = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    build_id = bytes.fromhex(read_elf(library).build_id)
    position = library.read_bytes().index(build_id)
    patched = bytes(b ^ 0x5A for b in build_id)
    octal = "".join(f"\\{b:03o}" for b in patched)
    status, output = guest.shell(
        f"mkdir -p /tmp/relearn && cp {library} /tmp/relearn/ && printf '{octal}' | "
        f"dd of=/tmp/relearn/libssl.so.3 bs=1 seek={position} conv=notrunc 2>/dev/null && "
        "for p in $(pidof openssl); do grep -q 4434 /proc/$p/cmdline && kill -9 $p; done; "
        "LD_LIBRARY_PATH=/tmp/relearn openssl s_server -accept 4434 -www -quiet -cert /etc/guest/cert.pem "
        "-key /etc/guest/key.pem </dev/null >/dev/null 2>&1 & echo relearn-pid $!")
    assert status == 0, output
    pid = int(re.search(r"relearn-pid (\d+)", output).group(1))
    deadline = time.monotonic() + 30
    while guest.shell("grep -Eq ':1152 0+:0000 0A' /proc/net/tcp /proc/net/tcp6")[0] != 0:
        assert time.monotonic() < deadline, "the relearn server is not listening"
        time.sleep(0.2)
    return pid, patched.hex()


def _restore_alt_server(guest: Guest) -> None:
    status, output = guest.shell("for p in $(pidof openssl); do grep -q 4434 /proc/$p/cmdline && kill -9 $p; done; "
                                 "LD_LIBRARY_PATH=/opt/ossl35 openssl s_server -accept 4434 -www -quiet "
                                 "-cert /etc/guest/cert.pem -key /etc/guest/key.pem </dev/null >/dev/null 2>&1 &")
    assert status == 0, output


def test_a_guest_build_no_known_layout_shares_is_learned_from_its_connections(guest, tmp_path):
    """A guest server on a libssl whose build-id no profile knows, with no shipped
    profile, an empty cache and candidate layouts off (``--resolve learn``): the
    gdbstub hooks give each connection's ``SSL *`` (the guest stopped in SSL_free),
    the tap names its client random, its secrets are derived from guest memory; the
    layout is learned from TLS 1.3 and 1.2 connections, cached, and every line
    published equals the clients' own, one-shot connections included."""
    from bridge.harvest.profile import Profile
    from bridge.harvest.sandbox import calibrate_sandboxed

    pid, build_id = _relearn_server(guest, tmp_path)
    try:
        client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
        status, cache = tmp_path / "status.json", tmp_path / "cache"
        harvester = _harvester(guest, tmp_path, "--trigger", "hooks,wire", "--gdb", f"127.0.0.1:{guest.gdb_port}",
                               "--qmp", str(guest.qmp_path), "--pid", str(pid), "--keylog", str(harvested),
                               "--no-shipped-profiles", "--resolve", "learn", "--profile-cache", str(cache),
                               "--status", str(status), name="learn")
        assert "learning the layout from live connections" in harvester.text(), harvester.text()
        time.sleep(1.0)  # the breakpoints are in
        # while learning: connections of both versions (one-shot curls and held s_clients)
        assert b"s_server" in curl_guest(guest, 4434, client, "--tlsv1.3")
        assert b"s_server" in _s_client(guest, 4434, client, "-tls1_2")
        assert b"s_server" in curl_guest(guest, 4434, client, "--tlsv1.2", "--tls-max", "1.2")
        assert b"s_server" in _s_client(guest, 4434, client, "-tls1_3")
        deadline = time.monotonic() + 60
        while "layout learned" not in harvester.text() and time.monotonic() < deadline:
            time.sleep(0.2)
        # learned: one-shot connections read through it
        for suite in TLS13[1:]:
            assert b"s_server" in curl_guest(guest, 4434, client, "--tlsv1.3", "--tls13-ciphers", suite)
        assert b"s_server" in curl_guest(guest, 4434, client, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", TLS12[1])
        summary = _stop(harvester)
    finally:
        _restore_alt_server(guest)
    missing, extra = compare_keylogs(client, harvested)
    assert not extra, sorted(extra)[:3]  # nothing wrong was ever published
    assert not missing, (sorted(missing)[:3], summary)
    assert len(_randoms(client)) == 7
    (layout,) = [entry for entry in json.loads(status.read_text())["layouts"] if entry["build_id"] == build_id]
    assert layout["state"] == "ready" and layout["origin"] == "learned", layout
    assert layout["confirmed"] == ["TLS1.2", "TLS1.3"], layout
    learned = Profile.from_json((cache / f"{build_id}.json").read_text())
    assert learned.made["resolution"] == "learned"
    # the oracle: the layout calibration makes for the same code (the host's library, in the sandbox)
    assert learned.fields == calibrate_sandboxed("/usr/lib/x86_64-linux-gnu/libssl.so.3").fields


def test_with_no_hook_the_objects_found_by_the_wire_trigger_teach_the_layout(guest, tmp_path):
    """The same unknown guest build, no hook at all (the wire trigger alone, no gdbstub):
    each named client random is searched in guest memory and the heap block around it
    taken as its object (malloc's chunk headers, the SSL_METHOD pointer); the layout is
    learned from held TLS 1.3 and 1.2 connections, equal to the sandbox's calibration of
    the same code, and every line published equals the clients'."""
    from bridge.harvest.profile import Profile
    from bridge.harvest.sandbox import calibrate_sandboxed

    pid, build_id = _relearn_server(guest, tmp_path)
    try:
        client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
        status, cache = tmp_path / "status.json", tmp_path / "cache"
        harvester = _harvester(guest, tmp_path, "--pid", str(pid), "--keylog", str(harvested), "--no-shipped-profiles",
                               "--resolve", "learn", "--profile-cache", str(cache), "--status", str(status))
        for args in (("-tls1_3",), ("-tls1_2",), ("-tls1_3",), ("-tls1_2", "-cipher", TLS12[1])):
            assert b"s_server" in _s_client(guest, 4434, client, *args, hold=1.0)
        deadline = time.monotonic() + 30
        while "layout learned" not in harvester.text() and time.monotonic() < deadline:
            time.sleep(0.2)
        for args in (("-tls1_3", "-ciphersuites", TLS13[2]), ("-tls1_2", "-cipher", TLS12[0])):
            assert b"s_server" in _s_client(guest, 4434, client, *args)
        summary = _stop(harvester)
    finally:
        _restore_alt_server(guest)
    missing, extra = compare_keylogs(client, harvested)
    assert not extra, sorted(extra)[:3]
    assert not missing, (sorted(missing)[:3], summary)
    assert len(_randoms(client)) == 6
    (layout,) = [entry for entry in json.loads(status.read_text())["layouts"] if entry["build_id"] == build_id]
    assert layout["state"] == "ready" and layout["origin"] == "learned", layout
    learned = Profile.from_json((cache / f"{build_id}.json").read_text())
    assert learned.fields == calibrate_sandboxed("/usr/lib/x86_64-linux-gnu/libssl.so.3").fields
