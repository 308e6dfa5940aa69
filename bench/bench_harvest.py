"""Harvester benchmark: what harvesting costs a TLS server, per trigger and hook mechanism.

In one run, against ``openssl s_server -www`` (Debian's libssl, one process):

* handshakes/s and time per connection (a full TLS 1.3 handshake plus one
  HTTP request, ``openssl s_time -new``, sequential) unhooked, then with the
  harvester's uprobe hooks, with the wire trigger (no hook), and with ptrace
  breakpoints on the same eight functions (a minimal tracer in this file: stop,
  read, restore, step, re-insert — what a debugger-style hook costs);
* the cost of one hooked ``SSL_*`` call (ctypes loop on ``SSL_get_session``);
* the harvester's own figure: time from the trigger to the key published.

The load client runs a private copy of libssl (another inode), so only the
server's calls hit the probes.  Needs root.

    .venv/bin/python bench/bench_harvest.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.harvest.elf import read_elf  # noqa: E402
from bridge.harvest.uprobes import HOOK_FUNCTIONS  # noqa: E402

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
LIBCRYPTO = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
PORT = 44390


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=bench", "-days", "2"],
                   check=True, capture_output=True)
    return cert, key


def _server(cert: Path, key: Path) -> subprocess.Popen:
    server = subprocess.Popen(["openssl", "s_server", "-accept", str(PORT), "-cert", str(cert), "-key", str(key),
                               "-www", "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return server


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(private_lib: Path, seconds: float, server_pid: int) -> tuple[float, float, int]:
    """(connections/s, server CPU µs per connection, connections) of s_time -new
    (a full handshake each), sequential."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(private_lib))
    cpu = _cpu_seconds(server_pid)
    result = subprocess.run(["openssl", "s_time", "-connect", f"127.0.0.1:{PORT}", "-new", "-www", "/",
                             "-time", str(int(seconds))], capture_output=True, text=True, env=env)
    cpu = _cpu_seconds(server_pid) - cpu
    match = re.search(r"(\d+) connections in ([\d.]+) real seconds", result.stdout)
    if not match:
        raise RuntimeError(f"s_time: {result.stdout[-400:]} {result.stderr[-400:]}")
    connections = int(match.group(1))
    return connections / float(match.group(2)), cpu / connections * 1e6, connections


def _harvester(pid: int, *extra: str) -> tuple[subprocess.Popen, Path]:
    log = Path(tempfile.mkstemp(prefix="bench-harvest-", suffix=".err")[1])
    process = subprocess.Popen([sys.executable, "-m", "bridge.cli", "harvest", "process", "--pid", str(pid),
                                "--keylog", os.devnull, *extra], stderr=open(log, "w"), cwd=ROOT)
    deadline = time.monotonic() + 30
    while "harvesting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, log


def _stop_harvester(process: subprocess.Popen, log: Path) -> str:
    """The harvester's own account: connections published, trigger → published latency."""
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    text = log.read_text()
    log.unlink()
    published = re.search(r"(\d+) connections published", text)
    latency = re.search(r"trigger to published p50 ([\d.]+) ms, p99 ([\d.]+) ms", text)
    note = f"{published.group(1) if published else '?'} published"
    if latency:
        note += f", trigger→published p50 {latency.group(1)} ms p99 {latency.group(2)} ms"
    return note


# --- ptrace breakpoints (for comparison only) ---------------------------------------------------

PTRACE_PEEKTEXT, PTRACE_POKETEXT, PTRACE_CONT, PTRACE_GETREGS, PTRACE_SETREGS = 1, 4, 7, 12, 13
PTRACE_SINGLESTEP, PTRACE_ATTACH, PTRACE_DETACH = 9, 16, 17


class _Regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
        "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]


class PtraceHooks:
    """INT3 on each hook function of a single-threaded process; at each hit: read
    ``%rdi`` and 0x1000 bytes of the SSL object, restore the instruction, step over
    it, re-insert the breakpoint, continue."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()

    def _ptrace(self, request: int, address: int = 0, data: int = 0) -> int:
        return self.libc.ptrace(request, self.pid, ctypes.c_void_p(address), ctypes.c_void_p(data))

    def _base(self) -> int:
        for line in open(f"/proc/{self.pid}/maps"):
            if line.rstrip().endswith("libssl.so.3") and " 00000000 " in line:
                return int(line.split("-")[0], 16)
        raise RuntimeError("libssl not mapped")

    def start(self) -> PtraceHooks:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:  # all ptrace calls from one thread (the tracer)
        image = read_elf(LIBSSL, with_version=False)
        base = self._base()
        self._ptrace(PTRACE_ATTACH)
        os.waitpid(self.pid, 0)
        self.original: dict[int, int] = {}
        for name in HOOK_FUNCTIONS:
            offset = image.functions.get(name)
            if offset is None:
                continue
            address = base + offset
            word = self._ptrace(PTRACE_PEEKTEXT, address) & 0xFFFFFFFFFFFFFFFF
            self.original[address] = word
            self._ptrace(PTRACE_POKETEXT, address, (word & ~0xFF) | 0xCC)
        self._ptrace(PTRACE_CONT)
        self._ready.set()
        memory = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY)
        regs = _Regs()
        while True:
            _, status = os.waitpid(self.pid, 0)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                return
            signal_number = os.WSTOPSIG(status)
            if self._stop.is_set():
                break
            if signal_number != signal.SIGTRAP:
                self._ptrace(PTRACE_CONT, 0, signal_number)
                continue
            self.libc.ptrace(PTRACE_GETREGS, self.pid, None, ctypes.byref(regs))
            address = regs.rip - 1
            if address not in self.original:
                self._ptrace(PTRACE_CONT)
                continue
            self.hits += 1
            try:
                os.pread(memory, 0x1000, regs.rdi)
            except OSError:
                pass
            self._ptrace(PTRACE_POKETEXT, address, self.original[address])
            regs.rip = address
            self.libc.ptrace(PTRACE_SETREGS, self.pid, None, ctypes.byref(regs))
            self._ptrace(PTRACE_SINGLESTEP)
            os.waitpid(self.pid, 0)
            self._ptrace(PTRACE_POKETEXT, address, (self.original[address] & ~0xFF) | 0xCC)
            self._ptrace(PTRACE_CONT)
        for address, word in self.original.items():
            self._ptrace(PTRACE_POKETEXT, address, word)
        self._ptrace(PTRACE_DETACH)
        os.close(memory)

    def stop(self) -> None:
        self._stop.set()
        os.kill(self.pid, signal.SIGSTOP)  # wake the tracer in waitpid
        self._thread.join(10)
        os.kill(self.pid, signal.SIGCONT)


# --- one hooked call ------------------------------------------------------------------------------


def _call_cost(calls: int) -> tuple[float, float]:
    """µs per SSL_get_session call, unhooked and with the harvester hooking this process."""
    code = f"""
import ctypes, sys, time
lib = ctypes.CDLL("{LIBSSL}")
lib.TLS_method.restype = ctypes.c_void_p
lib.SSL_CTX_new.restype = ctypes.c_void_p; lib.SSL_CTX_new.argtypes = [ctypes.c_void_p]
lib.SSL_new.restype = ctypes.c_void_p; lib.SSL_new.argtypes = [ctypes.c_void_p]
lib.SSL_get_session.argtypes = [ctypes.c_void_p]; lib.SSL_get_session.restype = ctypes.c_void_p
ssl = lib.SSL_new(lib.SSL_CTX_new(lib.TLS_method()))
print("ready", flush=True)
for _ in range(2):
    sys.stdin.readline()
    started = time.perf_counter()
    for _ in range({calls}):
        lib.SSL_get_session(ssl)
    print((time.perf_counter() - started) / {calls} * 1e6, flush=True)
"""
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    child.stdin.write("\n")
    child.stdin.flush()
    unhooked = float(child.stdout.readline())
    harvester, log = _harvester(child.pid)
    child.stdin.write("\n")
    child.stdin.flush()
    hooked = float(child.stdout.readline())
    _stop_harvester(harvester, log)
    child.stdin.close()
    child.wait()
    return unhooked, hooked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_harvest: needs root (uprobes, ptrace)")
    with tempfile.TemporaryDirectory(prefix="bench-harvest-") as tmp:
        directory = Path(tmp)
        cert, key = _certificate(directory)
        private = directory / "lib"
        private.mkdir()
        shutil.copy(LIBSSL, private / "libssl.so.3")
        shutil.copy(LIBCRYPTO, private / "libcrypto.so.3")
        server = _server(cert, key)
        rows = []
        try:
            rows.append(("unhooked", _load(private, args.seconds, server.pid), ""))
            for name, extra in (("uprobes, --hooks early (8 functions)", ("--hooks", "early")),
                                ("uprobes, --hooks late (SSL_shutdown, SSL_free)", ("--hooks", "late")),
                                ("wire trigger (no hook; memory search)", ("--trigger", "wire", "--wire", "lo"))):
                harvester, log = _harvester(server.pid, *extra)
                load = _load(private, args.seconds, server.pid)
                rows.append((name, load, _stop_harvester(harvester, log)))
            tracer = PtraceHooks(server.pid).start()
            load = _load(private, args.seconds, server.pid)
            tracer.stop()
            rows.append(("ptrace breakpoints (the 8 early functions)", load, f"{tracer.hits} stops"))
        finally:
            server.terminate()
            server.wait()
    print(f"openssl s_server -www, TLS 1.3 full handshake + 1 request per connection (s_time -new, sequential), "
          f"{args.seconds:g} s each, {os.cpu_count()} CPUs")
    header = (f"{'trigger':<48} {'conn/s':>7} {'µs/conn':>8} {'added':>6} {'server CPU':>11} {'added':>6}  harvester")
    print(header)
    print("-" * (len(header) + 40))
    base_rate, base_cpu, _ = rows[0][1]
    for name, (rate, cpu, connections), note in rows:
        print(f"{name:<48} {rate:>7.0f} {1e6 / rate:>8.0f} {1e6 / rate - 1e6 / base_rate:>6.0f} "
              f"{cpu:>9.0f}µs {cpu - base_cpu:>6.0f}  {note.replace(' published', f'/{connections} published')}")
    unhooked, hooked = _call_cost(args.calls)
    print(f"\none SSL_get_session call (ctypes loop, {args.calls} calls): {unhooked:.2f} µs unhooked, "
          f"{hooked:.2f} µs hooked: {hooked - unhooked:.2f} µs per uprobe hit")


if __name__ == "__main__":
    main()
