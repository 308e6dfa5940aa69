"""Go's crypto/tls and GnuTLS in a real guest under QEMU (TCG), harvested from the
host with nothing in the guest: a static Go HTTPS server built here by two Go
releases (go1.19, and go1.23 whose pclntab format differs), both stripped, and
``gnutls-serv``, each with no key log configured.  ``harvest vm --trigger hooks``
reads each server's files out of the guest kernel's page cache, finds the
library's key-log function in them (Go's pclntab; GnuTLS's library loaded in the
sandbox from that copy: no profile, an empty cache), sets a gdbstub breakpoint
there and reads each key log line from the stopped vCPU's registers and memory.
The harvested lines must equal curl's SSLKEYLOGFILE (TLS 1.3 and 1.2), and the
guest NIC's mirror must decrypt with the key feed alone, the library and the
hooked function in each flow's ``key_origin``.  One guest boot serves every case."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bridge.vmi.testguest import ALT_GO_SERVER_PORT, GNUTLS_SERVER_PORT, GO_SERVER_PORT
from tests.support.go_builds import build_go_server
from tests.support.guest import Guest, build_keylog_guest_image, curl_guest
from tests.support.harvest import keylog_lines
from tests.support.keyfeed import BridgeProcess, make_feed_certs

pytestmark = pytest.mark.real

WRITE_KEY_LOG = "crypto/tls.(*Config).writeKeyLog"
GNUTLS_KEY_LOG = "_gnutls_nss_keylog_func"
TLS13 = ("TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
TLS12 = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384")


class _GuestThread:
    """QEMU dies with the thread that started it: one thread keeps the module's guest."""

    def __init__(self, image, tmp: Path) -> None:  # type: ignore[no-untyped-def]
        self.image, self.tmp = image, tmp
        self.guest: Guest | None = None
        self.error: BaseException | None = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with Guest(self.image, pcap=self.tmp / "guest.pcap", workdir=self.tmp, gdb_port=0,
                       name="lib-keylog-guest") as guest:
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
    out = tmp_path_factory.mktemp("go-build")
    go119 = build_go_server(out, "gohttps", release="1.19")
    go123 = build_go_server(out, "gohttps-123", release="1.23")
    image = build_keylog_guest_image(go119, go123)
    with _GuestThread(image, tmp_path_factory.mktemp("keylog-guest")) as booted:
        yield booted


def _clients(guest: Guest, keylog: Path) -> dict[int, int]:
    """TLS 1.3 and 1.2 from curl to each server; connections per port."""
    counts = {}
    for port, answer in ((GO_SERVER_PORT, b"hello from go"), (ALT_GO_SERVER_PORT, b"hello from go"),
                         (GNUTLS_SERVER_PORT, b"GnuTLS")):
        for suite in TLS13:
            assert answer in curl_guest(guest, port, keylog, "--http1.1", "--tlsv1.3", "--tls13-ciphers", suite)
        for cipher in TLS12:
            assert answer in curl_guest(guest, port, keylog, "--http1.1", "--tlsv1.2", "--tls-max", "1.2",
                                        "--ciphers", cipher)
        counts[port] = len(TLS13) + len(TLS12)
    return counts


def _wait_for_lines(harvested: Path, wanted: set, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not wanted <= keylog_lines(harvested) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_go_and_gnutls_servers_in_the_guest_hooked_at_their_key_log_function(guest, tmp_path):
    client, harvested, flows = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "flows.jsonl"
    endpoint, certs = f"ipc://{tmp_path}/feed", make_feed_certs(tmp_path / "certs")
    _print_residency(guest)  # before any TLS traffic: what the Go servers map, against the page cache
    # No --kernel (the BTF found in guest memory), an empty profile cache: nothing known in advance.
    harvester = BridgeProcess(["harvest", "vm", "--memory-file", str(guest.memory_path), "--name", "lib-guest",
                               "--comm", "gohttps", "gohttps-alt", "gnutls-serv", "--trigger", "hooks",
                               "--gdb", f"127.0.0.1:{guest.gdb_port}", "--qmp", str(guest.qmp_path),
                               "--profile-cache", str(tmp_path / "cache"), "--keylog", str(harvested),
                               "--bind", endpoint, *certs.publisher_args()], tmp_path / "harvest.err")
    try:
        harvester.wait_for("harvesting", timeout=90)
        started = harvester.text()
        for comm, library, function in (("gohttps", "go crypto/tls go1.19.", WRITE_KEY_LOG),
                                        ("gohttps-alt", "go crypto/tls go1.23.", WRITE_KEY_LOG),
                                        ("gnutls-serv", "gnutls 3.", GNUTLS_KEY_LOG)):
            assert re.search(rf"{re.escape(comm)}\[\d+\] runs {re.escape(library)}.*: {re.escape(function)} at 0x"
                             r"[0-9a-f]+: hooked at its key-log function through the gdbstub", started), started
        # every file read whole out of the guest's page cache (an initramfs: all of it is there)
        pages = re.findall(r"guest file (\S+) \((\d+)/(\d+) pages from the guest's page cache\)", started)
        assert {path for path, _, _ in pages} == {"/usr/bin/gohttps", "/usr/bin/gohttps-alt",
                                                  "/usr/lib/x86_64-linux-gnu/libgnutls.so.30"}, started
        assert all(resident == total for _, resident, total in pages), pages
        connections = _clients(guest, client)
        # Go never logs the exporter secret (it never calls writeKeyLog for it); GnuTLS logs all curl logs.
        go_randoms = _go_randoms(client, guest)
        theirs = {line for line in keylog_lines(client) if not (line[0] == "EXPORTER_SECRET" and line[1] in go_randoms)}
        _wait_for_lines(harvested, theirs)
        # the guest NIC's mirror, decrypted by the sensor with the live harvester's key feed alone
        result = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(guest.pcap), "--keys",
                                 endpoint, *certs.sensor_args(), "--flows", str(flows), "-q"],
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
    finally:
        code = harvester.stop()
    summary = harvester.text()
    assert code == 0, summary
    ours = keylog_lines(harvested)
    assert ours == theirs, f"missing {sorted(theirs - ours)[:3]}, extra {sorted(ours - theirs)[:3]}\n{summary}"
    randoms = {line[1] for line in theirs}
    assert len(randoms) == sum(connections.values()) == 12
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    records = [r for r in records if r.get("client_random") in randoms]
    assert len(records) == 12 and {r["status"] for r in records} == {"decrypted"}, records
    assert sorted(r["tls_version"] for r in records) == ["TLSv1.2"] * 6 + ["TLSv1.3"] * 6
    origins = {(r["server"].rsplit(":", 1)[1], r["key_origin"]["comm"], r["key_origin"]["trigger"],
                r["key_origin"]["library"][:16], r["key_origin"]["vm"]) for r in records}
    assert origins == {
        ("4435", "gohttps", f"gdb:{WRITE_KEY_LOG}", "go crypto/tls go", "lib-guest"),
        ("4437", "gohttps-alt", f"gdb:{WRITE_KEY_LOG}", "go crypto/tls go", "lib-guest"),
        ("4436", "gnutls-serv", f"gdb:{GNUTLS_KEY_LOG}", "gnutls 3.7.9", "lib-guest"),
    }, origins
    # every stop resumed by emulating the function's first instruction (Go's lea and cmp, GnuTLS's cmpb)
    stops = re.search(r"(\d+) stops, (\d+) in targets .* (\d+) first instructions emulated, (\d+) stepped over", summary)
    assert stops and int(stops.group(2)) == int(stops.group(3)) >= 4 * 4 + 2 * 5 + 6 and stops.group(4) == "0", summary
    assert re.search(r"(\d+) stops at key-log functions \(0 not a key log line\)", summary), summary
    assert "VM status: running" in guest.monitor("info status")  # no breakpoint left behind


def _go_randoms(client: Path, guest: Guest) -> set[str]:
    """The client randoms of the connections to the Go servers: curl's key log does not
    say the port, the guest's mirror does (its ClientHellos)."""
    result = subprocess.run(["tshark", "-r", str(guest.pcap), "-Y", "tls.handshake.type == 1", "-T", "fields",
                             "-e", "tcp.dstport", "-e", "tls.handshake.random"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    go_ports = {str(GO_SERVER_PORT), str(ALT_GO_SERVER_PORT)}
    randoms = {fields[1].replace(":", "").lower() for fields in (line.split("\t") for line in result.stdout.splitlines())
               if len(fields) == 2 and fields[0] in go_ports}
    return randoms & {line[1] for line in keylog_lines(client)}


def _s_client(guest: Guest, port: int, keylog: Path, *args: str, hold: float = 0.6) -> bytes:
    """A client that connects, waits, then sends its request (the connection lives a while)."""
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(port)}", "-keylogfile",
                             str(keylog), "-quiet", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    time.sleep(hold)
    out, _ = proc.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
    return out


def test_gnutls_in_the_guest_with_no_hook_its_sessions_found_from_the_wire(guest, tmp_path):
    """No breakpoint: each ClientHello on the guest's mirror names a client random, searched
    in gnutls-serv's memory; the session around it (its heap block's size and the random's
    offset, both from the sandbox's calibration of the guest's own library) gives the
    secrets.  Connections held a moment are all harvested; one-shot curls race the search
    (a miss is counted, never a wrong line).  The mirror decrypts with the harvested keys."""
    client, held, harvested = tmp_path / "client.keylog", tmp_path / "held.keylog", tmp_path / "harvested.keylog"
    harvester = BridgeProcess(["harvest", "vm", "--memory-file", str(guest.memory_path), "--name", "lib-guest",
                               "--kernel", str(guest.image.kernel), "--comm", "gnutls-serv", "--trigger", "wire",
                               "--wire-pcap", str(guest.pcap), "--profile-cache", str(tmp_path / "cache"),
                               "--keylog", str(harvested)], tmp_path / "harvest.err")
    try:
        harvester.wait_for("harvesting", timeout=90)
        assert "its sessions searched for the client randoms the wire or sensors name (no hook)" in harvester.text()
        for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"):
            assert b"GnuTLS" in _s_client(guest, GNUTLS_SERVER_PORT, held, "-tls1_3", "-ciphersuites", suite)
        for cipher in TLS12:
            assert b"GnuTLS" in _s_client(guest, GNUTLS_SERVER_PORT, held, "-tls1_2", "-cipher", cipher)
        for args in (("--tlsv1.3",), ("--tlsv1.2", "--tls-max", "1.2")):
            assert b"GnuTLS" in curl_guest(guest, GNUTLS_SERVER_PORT, client, *args)
        _wait_for_lines(harvested, keylog_lines(held))
        time.sleep(1.0)  # the one-shot connections' searches end
    finally:
        code = harvester.stop()
    summary = harvester.text()
    assert code == 0, summary
    ours, theirs = keylog_lines(harvested), keylog_lines(held) | keylog_lines(client)
    assert keylog_lines(held) <= ours and ours <= theirs, summary  # every held one; nothing wrong
    counts = re.search(r"(\d+) connections published of 6 searched \(6 ClientHellos.*?misses: (\d+) closed before "
                       r"the search found them, 0 not found .*?, 0 incomplete", summary)
    assert counts and int(counts.group(1)) + int(counts.group(2)) == 6, summary
    assert "stops" not in summary  # no breakpoint
    randoms = {line[1] for line in ours}
    flows = tmp_path / "flows.jsonl"
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(guest.pcap), "--keylog",
                             str(harvested), "--flows", str(flows), "-q"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    records = [r for r in map(json.loads, flows.read_text().splitlines()) if r.get("client_random") in randoms]
    assert len(records) == len(randoms) >= 4 and {r["status"] for r in records} == {"decrypted"}, records


LIBGNUTLS = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30"


def _rebuilt_gnutls_server(guest: Guest) -> str:
    """gnutls-serv on 4436 restarted on a copy of the guest's libgnutls whose build-id the
    guest's own shell changed (printf | dd, in the guest's /tmp: tmpfs), as a security
    update inside the guest would leave it: a build never met.  Returns its build-id."""
    from bridge.harvest.elf import read_elf

    library = Path(LIBGNUTLS)
    build_id = bytes.fromhex(read_elf(library).build_id)
    position = library.read_bytes().index(build_id)
    patched = bytes(b ^ 0x5A for b in build_id)
    octal = "".join(f"\\{b:03o}" for b in patched)
    status, output = guest.shell(
        f"mkdir -p /tmp/gnutls-update && cp {library} /tmp/gnutls-update/ && printf '{octal}' | "
        f"dd of=/tmp/gnutls-update/libgnutls.so.30 bs=1 seek={position} conv=notrunc 2>/dev/null && "
        "kill -9 $(pidof gnutls-serv); sleep 0.5; "
        "LD_LIBRARY_PATH=/tmp/gnutls-update gnutls-serv --http --x509certfile /etc/guest/cert.pem "
        f"--x509keyfile /etc/guest/key.pem -p {GNUTLS_SERVER_PORT} </dev/null >/dev/null 2>&1 & echo update-pid $!")
    assert status == 0, output
    deadline = time.monotonic() + 30
    while guest.shell(f"grep -Eq ':{GNUTLS_SERVER_PORT:04X} 0+:0000 0A' /proc/net/tcp /proc/net/tcp6")[0] != 0:
        assert time.monotonic() < deadline, "the updated gnutls-serv is not listening"
        time.sleep(0.2)
    return patched.hex()


def test_a_gnutls_build_never_met_in_the_guest_is_probed_from_its_page_cache_copy(guest, tmp_path):
    """A libgnutls with another build-id, written by the guest into its tmpfs: read out
    of the page cache, loaded in the sandbox at first sight (an empty cache), hooked;
    what it taught is kept by its build-id."""
    build_id = _rebuilt_gnutls_server(guest)
    client, harvested, cache = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "cache"
    harvester = BridgeProcess(["harvest", "vm", "--memory-file", str(guest.memory_path), "--name", "lib-guest",
                               "--kernel", str(guest.image.kernel), "--comm", "gnutls-serv", "--trigger", "hooks",
                               "--gdb", f"127.0.0.1:{guest.gdb_port}", "--qmp", str(guest.qmp_path),
                               "--profile-cache", str(cache), "--keylog", str(harvested)], tmp_path / "harvest.err")
    try:
        harvester.wait_for("harvesting", timeout=90)
        started = harvester.text()
        # (the path as the dentries give it: relative to its mount, the guest's /tmp)
        assert re.search(r"guest file /gnutls-update/libgnutls\.so\.30 \((\d+)/\1 pages from the guest's page "
                         r"cache\): _gnutls_nss_keylog_func", started), started
        assert curl_guest(guest, GNUTLS_SERVER_PORT, client, "--tlsv1.3").count(b"GnuTLS")
        assert curl_guest(guest, GNUTLS_SERVER_PORT, client, "--tlsv1.2", "--tls-max", "1.2").count(b"GnuTLS")
        theirs = keylog_lines(client)
        _wait_for_lines(harvested, theirs)
    finally:
        code = harvester.stop()
    assert code == 0, harvester.text()
    assert keylog_lines(harvested) == theirs and len({line[1] for line in theirs}) == 2, harvester.text()
    assert (cache / f"gnutls-{build_id}.json").is_file()  # learned once, kept by the build-id never met before


def _print_residency(guest: Guest) -> None:
    """How much of each Go server's pclntab its own page tables map, against the page
    cache (printed: a fact of this guest, not a property); the page cache holds it all."""
    from bridge.harvest.elf import read_elf
    from bridge.vmi.btf import btf_from_kernel_image
    from bridge.vmi.linux import LinuxGuest
    from bridge.vmi.pagecache import PageCache
    from bridge.vmi.physmem import MemoryFileBackend

    memory = MemoryFileBackend(guest.memory_path)
    try:
        btf = btf_from_kernel_image(guest.image.kernel)
        linux = LinuxGuest(memory, btf, memory.layout.ranges())
        cache = PageCache(linux, btf)
        for process in linux.processes():
            if process.comm not in ("gohttps", "gohttps-alt"):
                continue
            file = cache.exe_file(process.mm)
            image = cache.read_file(file)
            copy = Path(f"/tmp/lib-residency-{process.pid}")
            copy.write_bytes(image.data)
            try:
                address, offset, size = read_elf(copy).sections[".gopclntab"]
            finally:
                copy.unlink()
            vmas = [v for v in linux.vmas(process) if v.file == file]
            mapped = {virtual + step for virtual, _, length in
                      (page for vma in vmas for page in linux.address_space(process).pages(vma.start, vma.end))
                      for step in range(0, length, 4096)}
            pclntab = set(range(address & ~0xFFF, address + size, 4096))
            in_cache = {index for index in range(offset // 4096, (offset + size + 4095) // 4096)}
            print(f"{process.comm}: pclntab {len(pclntab)} pages: {len(pclntab & mapped)} mapped by the process, "
                  f"{len(in_cache & image.resident_pages)} in the page cache; the file: {len(mapped)} pages "
                  f"mapped, {image.resident}/{image.pages} in the page cache")
            assert image.complete and len(in_cache & image.resident_pages) == len(pclntab)
    finally:
        memory.close()
