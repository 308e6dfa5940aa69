"""LibVMI as a backend of the VM harvester and as an independent oracle for our
page walks, against a real guest booted under QEMU (TCG) with its RAM in a file.

LibVMI's file driver (partial init: physical reads only) over the live guest's RAM
file reads what our file and QEMU-process backends read, sees what the running
guest changes, and the harvester on it publishes the same secrets; LibVMI's own
page-table walker lists and translates exactly what ours does.  Required where
LibVMI is installed by the set-up (see tests/support/libvmi_gate.py)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.errors import GuestAccessError
from bridge.vmi import paging
from bridge.vmi.btf import btf_from_kernel_image
from bridge.vmi.linux import LinuxGuest
from bridge.vmi.physmem import GIB, GuestMemoryError, MemoryFileBackend, QemuProcessBackend
from tests.support import libvmi_gate
from tests.support.guest import Guest
from tests.support.harvest import compare_keylogs
from tests.support.keyfeed import BridgeProcess
from tests.test_vmi_guest import _GuestThread, _randoms

pytestmark = pytest.mark.real

USER_END = 1 << 47
KERNEL_START = 0xFFFF_8000_0000_0000


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if libvmi_gate.find() is None:  # the `libvmi` fixture fails or skips each test: boot nothing
        yield None
        return
    with _GuestThread("6.1", tmp_path_factory.mktemp("guest-libvmi")) as booted:
        yield booted


def _libvmi_backend(guest: Guest):
    from bridge.vmi.physmem import LibvmiBackend

    return LibvmiBackend(str(guest.memory_path))


def _linux(memory, guest: Guest) -> LinuxGuest:
    return LinuxGuest(memory, btf_from_kernel_image(guest.image.kernel), memory.layout.ranges())


def _kernel_page_tables(memory, processes) -> list[int]:  # type: ignore[no-untyped-def]
    """Our search for the kernel's own page tables (``init_top_pgt`` and the other
    kernel-only roots): the pages of RAM whose user half is empty and whose kernel half
    is every process's (each process's PGD gets its kernel half from them)."""
    kernel_half = memory.read(processes[0].page_table + 2048, 2048)
    assert all(memory.read(process.page_table + 2048, 2048) == kernel_half for process in processes)
    empty = bytes(2048)
    roots = []
    for first, end in memory.layout.ranges():
        for position in range(first, end, 1 << 20):
            chunk = memory.read(position, min(1 << 20, end - position))
            for offset in range(0, len(chunk), 4096):
                if chunk[offset + 2048 : offset + 4096] == kernel_half and chunk[offset : offset + 2048] == empty:
                    roots.append(position + offset)
    return roots


def test_libvmi_reads_what_the_file_and_qemu_process_backends_read(libvmi, guest):
    """Physical reads through LibVMI's file driver equal the RAM file's and the QEMU
    process's; its page cache is flushed, so the running guest's changes are seen."""
    lv = _libvmi_backend(guest)
    files = MemoryFileBackend(guest.memory_path)
    qemu = QemuProcessBackend(guest.qemu_pid, guest.memory_bytes)
    try:
        if libvmi_gate.SHARED_LIBVMI.is_dir():  # the LibVMI under test is the shared build, not a wheel's copy
            check = subprocess.run([sys.executable, str(libvmi_gate.REPO / "scripts" / "libvmi_bindings.py"), "check",
                                    "/opt/libvmi"], capture_output=True, text=True)
            assert check.returncode == 0 and check.stdout.strip() == "/opt/libvmi/lib/libvmi.so.0.0.15", check
        assert lv.file_mode and lv.layout == files.layout
        assert lv._vmi.get_memsize() == guest.memory_bytes  # noqa: SLF001 - LibVMI's own view of the file
        for physical, size in ((0, 4096), (0x9F000, 4096), (0x100000, 3 * 4096 + 17), (0x1234567, 100_000),
                               (guest.memory_bytes - 4096, 4096)):
            assert lv.read(physical, size) == files.read(physical, size) == qemu.read(physical, size)
        with pytest.raises(GuestMemoryError):
            lv.read(guest.memory_bytes, 8)  # beyond the guest's RAM: an error, never zeros
        # the guest runs: jiffies, read twice through the same LibVMI instance, moves
        linux = _linux(lv, guest)
        jiffies = linux.physical(linux.exported_symbol("jiffies"))
        first = int.from_bytes(lv.read(jiffies, 8), "little")
        time.sleep(0.5)
        second = int.from_bytes(lv.read(jiffies, 8), "little")
        assert 50 <= second - first <= 1000, (first, second)  # HZ 250, TCG slack
        # a page the guest writes after LibVMI cached it: the new bytes are read
        marker = os.urandom(16).hex()
        status, output = guest.shell(f"echo {marker} > /tmp/lv-marker && cat /tmp/lv-marker")
        assert status == 0 and marker in output
        assert _find(lv, marker.encode() + b"\n") == _find(files, marker.encode() + b"\n") is not None
    finally:
        lv.close()
        files.close()
        qemu.close()


def _find(memory, needle: bytes, chunk: int = 1 << 22) -> int | None:
    for first, end in memory.layout.ranges():
        for position in range(first, end, chunk):
            data = memory.read(position, min(chunk + len(needle), end - position))
            index = data.find(needle)
            if index >= 0:
                return position + index
    return None


def test_libvmi_page_walks_equal_ours(libvmi, guest):
    """LibVMI's page-table walker (IA-32e, the guest's DTBs) lists and translates
    exactly what bridge.vmi.paging does: every present page of the guest's processes
    and of the kernel's own page tables (found by both, independently), user and
    kernel, 4 KiB and 2 MiB pages (a 512 MiB guest has no 1 GiB pages), and single
    translations through LibVMI's plain ``vmi_pagetable_lookup`` too once its Linux
    init has set its page mode.  The guest is paused for the comparison."""
    from bridge.vmi.libvmi_paging import LibvmiPageWalker

    lv = _libvmi_backend(guest)
    files = MemoryFileBackend(guest.memory_path)
    guest.qmp("stop")  # one snapshot for both walkers: a running guest changes its page tables between walks
    try:
        walker = LibvmiPageWalker(lv)
        btf = btf_from_kernel_image(guest.image.kernel)
        linux = LinuxGuest(files, btf, files.layout.ranges())
        processes = list(linux.processes())
        servers = [p for p in processes if p.comm == "openssl"]
        assert len(servers) == 2 and {"init", "openssl"} <= {p.comm for p in processes}

        def ours(root: int) -> list[tuple[int, int, int]]:
            return (list(paging.mapped_pages(files, root, 0, USER_END))
                    + list(paging.mapped_pages(files, root, KERNEL_START, 1 << 64)))

        # the kernel's own page tables, found by both: ours by their contents (init_top_pgt is the
        # one in the kernel image, beside init_task); LibVMI's by its Linux init, told where
        # init_task is (our KASLR scan) but not where any page table is: it takes the first page
        # directory in RAM that maps init_task (a kernel-only one, or a process's), whose kernel
        # half must be the kernel's own
        kernel_roots = _kernel_page_tables(files, processes)
        init_task = (linux.kernel.init_task + linux.kernel.image_delta, linux.kernel.init_task)
        init_top_pgt = min(kernel_roots, key=lambda root: abs(root - init_task[1]))
        assert abs(init_top_pgt - init_task[1]) < 32 << 20, [hex(root) for root in kernel_roots]
        kernel_half = ours(init_top_pgt)
        assert kernel_half and all(page[0] >= KERNEL_START for page in kernel_half)
        assert {size for _, _, size in kernel_half} >= {4096, 2 << 20}
        for root in kernel_roots:
            assert sorted(walker.pages(root)) == sorted(ours(root)) == sorted(kernel_half), hex(root)
        offsets = {"linux_tasks": btf.offset("task_struct", "tasks"), "linux_mm": btf.offset("task_struct", "mm"),
                   "linux_pid": btf.offset("task_struct", "pid"), "linux_name": btf.offset("task_struct", "comm"),
                   "linux_pgd": btf.offset("mm_struct", "pgd")}
        kernel_root = walker.find_kernel_page_table(init_task=init_task, offsets=offsets)
        found = sorted(walker.pages(kernel_root))
        assert found == sorted(ours(kernel_root))
        assert [page for page in found if page[0] >= KERNEL_START] == sorted(kernel_half), hex(kernel_root)
        for root in (kernel_root, init_top_pgt):
            assert walker.lookup(root, init_task[0]) == walker.translate(root, init_task[0]) \
                == paging.translate(files, root, init_task[0]) == init_task[1]

        for process in servers + [next(p for p in processes if p.comm == "init")]:
            mine = ours(process.page_table)
            assert sorted(walker.pages(process.page_table)) == sorted(mine), process
            user = [page for page in mine if page[0] < USER_END]
            assert len(user) > 100 and {size for _, _, size in user} == {4096}
            # the kernel half of a process's tables is the kernel's own
            assert [page for page in mine if page[0] >= KERNEL_START] == kernel_half
            # single translations: every VMA's first and last page, mapped or not, and a large page
            for vma in linux.vmas(process):
                for virtual in (vma.start, vma.end - 4096 + 0x123):
                    assert _both(walker, files, process.page_table, virtual), (process, vma)
        large = next(page for page in kernel_half if page[2] == 2 << 20)
        for offset in (0, 0x1234, (2 << 20) - 8):
            assert walker.lookup(init_top_pgt, large[0] + offset) \
                == walker.translate(init_top_pgt, large[0] + offset) == large[1] + offset \
                == paging.translate(files, init_top_pgt, large[0] + offset)
        for unmapped in (0, 0x1000, USER_END - 4096):
            for translate in (walker.lookup, walker.translate, functools.partial(paging.translate, files)):
                with pytest.raises(paging.PageFault):
                    translate(servers[0].page_table, unmapped)
    finally:
        guest.qmp("cont")
        lv.close()
        files.close()


def _both(walker, files, root: int, virtual: int) -> bool:
    """The same physical address, or the same fault, from both walkers (LibVMI's
    through ``vmi_pagetable_lookup`` and through ``vmi_nested_pagetable_lookup``)."""
    results = []
    for translate in (walker.lookup, walker.translate, functools.partial(paging.translate, files)):
        try:
            results.append(translate(root, virtual))
        except paging.PageFault:
            results.append(None)
    return len(set(results)) == 1


def _summary_counts(summary: str) -> tuple[int, int]:
    found = re.search(r"(\d+) connections published of (\d+) searched", summary)
    assert found, summary
    return int(found.group(1)), int(found.group(2))


def test_harvest_vm_libvmi_publishes_what_the_file_and_qemu_process_backends_publish(libvmi, guest, tmp_path):
    """One guest, the same connections, three harvesters at once: the RAM file, the
    QEMU process, LibVMI's file driver.  Each publishes every connection's secrets,
    equal to the clients' key logs and to each other's (each connection is held open
    until all three have published it, or 30 s)."""
    common = ["--wire-pcap", str(guest.pcap), "--comm", "openssl", "--kernel", str(guest.image.kernel)]
    backends = {
        "file": ["--memory-file", str(guest.memory_path)],
        "qemu": ["--qemu-pid", str(guest.qemu_pid), "--ram-size", f"{guest.memory_bytes >> 20}M"],
        "libvmi": ["--libvmi", str(guest.memory_path)],
    }
    harvesters = {}
    try:
        for name, args in backends.items():
            harvesters[name] = BridgeProcess(["harvest", "vm", *args, *common, "--name", f"lv-{name}",
                                              "--keylog", str(tmp_path / f"{name}.keylog")],
                                             tmp_path / f"{name}.err")
        for process in harvesters.values():
            process.wait_for("harvesting", timeout=120)
        client = tmp_path / "client.keylog"
        published = [tmp_path / f"{name}.keylog" for name in backends]
        for port, version in ((4433, "-tls1_3"), (4433, "-tls1_2"), (4434, "-tls1_3"), (4434, "-tls1_2")):
            assert b"s_server" in _held_until_published(guest, port, client, version, published)
    finally:
        codes = {name: process.stop() for name, process in harvesters.items()}
    summaries = {name: process.text() for name, process in harvesters.items()}
    assert codes == dict.fromkeys(backends, 0), summaries
    assert "lv-libvmi: guest kernel found" in summaries["libvmi"], summaries["libvmi"]
    keylogs = {}
    for name in backends:
        assert _summary_counts(summaries[name]) == (4, 4), summaries[name]
        missing, extra = compare_keylogs(client, tmp_path / f"{name}.keylog")
        assert not missing and not extra, (name, summaries[name])
        keylogs[name] = sorted((tmp_path / f"{name}.keylog").read_text().splitlines())
    assert keylogs["libvmi"] == keylogs["file"] == keylogs["qemu"]
    assert len({line.split()[1] for line in keylogs["libvmi"]}) == 4


def _held_until_published(guest: Guest, port: int, keylog: Path, version: str, published: list[Path],
                          timeout: float = 30.0) -> bytes:
    """A connection held open until every harvester has published it (or ``timeout``:
    the comparison then fails), then one request."""
    before = _randoms(keylog) if keylog.exists() else set()
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{guest.host_port(port)}", "-keylogfile",
                             str(keylog), "-quiet", version], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = (_randoms(keylog) if keylog.exists() else set()) - before
        if new and all(path.exists() and new <= _randoms(path) for path in published):
            break
        time.sleep(0.05)
    out, _ = proc.communicate(b"GET / HTTP/1.0\r\n\r\n", timeout=60)
    return out


def test_libvmi_file_driver_above_the_pci_hole(libvmi, tmp_path):
    """LibVMI reads a RAM file flat; QEMU's pc machine puts RAM beyond 3 GiB at
    4 GiB.  A sparse 4 GiB RAM file (on disk, nothing of it resident): the backend
    maps 4 GiB to offset 3 GiB for LibVMI, as the file backend does; the hole is not
    RAM; LibVMI's own page walker, which would read page tables flat, is refused."""
    from bridge.vmi.libvmi_paging import LibvmiPageWalker
    from bridge.vmi.physmem import LibvmiBackend

    path = tmp_path / "lv-4g.ram"
    markers = {0x1000: b"low RAM", 3 * GIB - 4096: b"last page below the hole", 3 * GIB: b"first page at 4 GiB",
               4 * GIB - 4096: b"last page of RAM"}
    with open(path, "wb") as handle:
        handle.truncate(4 * GIB)
        for offset, text in markers.items():
            handle.seek(offset)
            handle.write(text)
    lv = LibvmiBackend(str(path), machine="pc")
    files = MemoryFileBackend(path, machine="pc")
    try:
        assert lv.layout.ranges() == [(0, 3 * GIB), (4 * GIB, 5 * GIB)]
        for offset, text in markers.items():
            physical = offset if offset < 3 * GIB else offset + GIB
            assert lv.read(physical, len(text)) == files.read(physical, len(text)) == text
            assert lv.read_flat(offset, len(text)) == text  # LibVMI's own (flat) view of the file
        for hole in (3 * GIB, 4 * GIB - 8, 5 * GIB):
            with pytest.raises(GuestMemoryError):
                lv.read(hole, 8)
        with pytest.raises(GuestAccessError, match="PCI hole"):
            LibvmiPageWalker(lv)
    finally:
        lv.close()
        files.close()
    q35 = LibvmiBackend(str(path), machine="q35")
    try:
        assert q35.layout.ranges() == [(0, 2 * GIB), (4 * GIB, 6 * GIB)]
        assert q35.read(5 * GIB, 19) == b"first page at 4 GiB"
    finally:
        q35.close()


def _harvest(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge.cli", "harvest", "vm", *args, "--all", "--wire-pcap",
                           str(tmp / "lv.pcap"), "--keylog", str(tmp / "lv.keylog")],
                          capture_output=True, text=True, timeout=60)


def test_libvmi_errors_say_what_is_missing(libvmi, tmp_path):
    """Missing LibVMI, a missing driver, a missing domain or RAM file: a clear error each."""
    # a domain: this LibVMI has the file driver only, and this host runs neither Xen nor KVMi
    result = _harvest(tmp_path, "--libvmi", "lv-no-such-domain")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "LibVMI could not open domain 'lv-no-such-domain'" in result.stderr
    assert "Xen: no working driver" in result.stderr and "KVM (KVMi): no working driver" in result.stderr
    assert "--libvmi /dev/shm/NAME" in result.stderr
    # a RAM file that is not there, or empty (LibVMI's file driver would crash the process)
    result = _harvest(tmp_path, "--libvmi", str(tmp_path / "lv-missing.ram"))
    assert result.returncode == 1 and "LibVMI: cannot open guest memory" in result.stderr, result.stderr
    assert "No such file" in result.stderr
    (tmp_path / "lv-empty.ram").touch()
    result = _harvest(tmp_path, "--libvmi", str(tmp_path / "lv-empty.ram"))
    assert result.returncode == 1 and "is empty" in result.stderr, result.stderr
    # no LibVMI at all: its bindings cannot be imported (as on a host without it)
    absent = subprocess.run([sys.executable, "-c", "import sys; sys.modules['libvmi'] = None; "
                             "from bridge.cli import main; sys.exit(main(sys.argv[1:]))", "harvest", "vm", "--libvmi",
                             "web01", "--all", "--wire-pcap", str(tmp_path / "lv.pcap"), "--keylog",
                             str(tmp_path / "lv.keylog")],
                            capture_output=True, text=True, timeout=60)
    assert absent.returncode == 1 and "Traceback" not in absent.stderr, absent.stderr
    assert "needs LibVMI and its Python bindings" in absent.stderr and "pip install libvmi" in absent.stderr
    assert "--memory-file or --qemu-pid" in absent.stderr


def test_without_libvmi_the_suite_says_loudly_what_did_not_run(tmp_path):
    """The gate itself, in a copy of the test tree with no ``../shared/libvmi`` beside
    it and LibVMI's bindings made unimportable: the LibVMI tests are skipped, named
    and counted in a loud report with the way to install LibVMI, never passed, and the
    exit status is 1; with CI=true they fail instead."""
    repo = tmp_path / "repo"
    (repo / "tests" / "support").mkdir(parents=True)
    shutil.copy(Path(__file__).parent / "conftest.py", repo / "tests")
    for module in (Path(__file__).parent / "support").glob("*.py"):
        shutil.copy(module, repo / "tests" / "support")
    (repo / "tests" / "test_lv_gate.py").write_text(
        "def test_one(libvmi):\n    assert libvmi\n\n\ndef test_two(libvmi):\n    assert libvmi\n\n\n"
        "def test_other():\n    pass\n")
    (tmp_path / "lv_block.py").write_text("import sys\nsys.modules['libvmi'] = None  # as on a host without it\n")
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(libvmi_gate.REPO)])
    command = [sys.executable, "-m", "pytest", "-p", "lv_block", "-p", "no:cacheprovider", "-q",
               "tests/test_lv_gate.py"]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout
    assert "2 LIBVMI TESTS DID NOT RUN (LibVMI not installed)" in result.stdout, result.stdout
    assert "NOT RUN: tests/test_lv_gate.py::test_one" in result.stdout
    assert "NOT RUN: tests/test_lv_gate.py::test_two" in result.stdout
    assert "They are not passed. To run them: build LibVMI" in result.stdout
    assert "1 passed, 2 skipped" in result.stdout
    result = subprocess.run(command, cwd=repo, env={**env, "CI": "true"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stdout
    assert "LibVMI is required here (CI=true)" in result.stdout and "1 passed, 2 errors" in result.stdout, \
        result.stdout
    assert "DID NOT RUN" not in result.stdout
