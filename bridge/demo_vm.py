"""``tls-bridge demo --vm``: the headline path, agentless harvesting from a VM.

A real Linux guest boots under QEMU (the test guest of :mod:`bridge.vmi.testguest`:
Debian's kernel with KASLR, a busybox initramfs, ``openssl s_server -www`` on 4433
with the host's OpenSSL), its NIC on a tap in a private network namespace, its RAM
in a file.  Nothing of tls-bridge runs in the guest.  On the host, in that
namespace: ``tls-bridge harvest vm`` reads the guest's memory (its kernel's own
structures, found without profiles), searches the server process for each client
random seen on the tap while the guest runs on, and publishes the secrets on the
CurveZMQ key feed.  s_server answers one request per connection and closes: under
TCG such a connection lives about 25 ms, and the search can lose that race (a
counted miss); a breakpoint on ``SSL_free`` through QEMU's gdbstub (outside the
guest) reads any connection the search has not published when the server frees it.
Then ``tls-bridge decrypt -i <tap> --keys ...`` decrypts the guest's traffic live and
injects the cleartext into ``tls0``; Suricata 7 inspects ``tls0`` with the
project's rules.  curl fetches a few URLs from the guest over TLS 1.3 and 1.2, and
the report is the default demo's (:func:`bridge.demo._report`).

The guest image is built once and cached (``--cache-dir``, rebuilt when what goes
into it changes); each step is shown with the seconds since the start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bridge.demo import (
    DemoError,
    _bridge,
    _Namespace,
    _report,
    _start_suricata,
    _stop_chain,
    _summary_line,
    _wait_for_text,
)
from bridge.errors import BridgeError
from bridge.vmi.testguest import GATEWAY_IP, GUEST_IP, SERVER_PORT, Guest, build_guest_image, require_tool

HOST = "guest.test"  # the guest certificate's name
FLAVOR = "6.1"
TAP = "dvtap0"
VM_NAME = "demo-guest"
TOOLS = ("ip", "curl", "qemu-system-x86_64")  # installed with apt-get when missing (root)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tls-bridge``, else ``~/.cache/tls-bridge``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tls-bridge"


class _Steps:
    """Progress: each step with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {text}", flush=True)


class _VmNamespace(_Namespace):
    def __init__(self, ip: str) -> None:
        super().__init__(ip)
        self.name = f"dv-demo-{os.getpid()}"

    def add_tap(self, name: str) -> None:
        """The guest's NIC: a tap whose host side is the guest's gateway (10.0.2.2)."""
        for command in (["tuntap", "add", "dev", name, "mode", "tap"], ["addr", "add", f"{GATEWAY_IP}/24", "dev", name],
                        ["link", "set", name, "up"]):
            subprocess.run([self.ip, "-n", self.name, *command], check=True)


def _require_tools() -> dict[str, str]:
    if os.geteuid() != 0:
        raise DemoError("the VM demo creates a network namespace and a tap and captures packets: run it as root")
    suricata = shutil.which("suricata") or shutil.which("suricata", path="/usr/sbin:/usr/bin")
    if suricata is None:  # Suricata 7 comes from bookworm-backports: scripts/setup.sh knows how
        raise DemoError("missing tool: suricata (run scripts/demo.sh --vm, which installs it)")
    return {"suricata": suricata, **{name: require_tool(name) for name in TOOLS}}


def _client_requests(ns: _Namespace, curl: str) -> list[str]:
    """One TLS connection per request (s_server -www answers one and closes)."""
    base = [curl, "-sS", "-k", "--max-time", "30", "--resolve", f"{HOST}:{SERVER_PORT}:{GUEST_IP}", "-o", "/dev/null",
            "-w", "%{http_code}"]
    runs = [
        (["--tlsv1.3", "--http1.1"], ["/", "/tls-bridge-test-marker?password=hunter2"]),
        (["--tlsv1.2", "--tls-max", "1.2", "--http1.1", "-u", "admin:s3cret"], ["/login"]),
    ]
    done = []
    for options, paths in runs:
        for path in paths:
            result = ns.run(base + options + [f"https://{HOST}:{SERVER_PORT}{path}"], capture_output=True, text=True,
                            timeout=60)
            if result.returncode != 0 or not result.stdout.startswith("200"):
                raise DemoError(f"curl {path} failed ({result.stdout.strip()}): {result.stderr.strip()}")
            done.append(f"HTTP/1.1 over {options[0][2:]} GET {path}")
    return done


def _boot_suricata(ns: _Namespace, suricata: str, work: Path, result: dict) -> None:
    try:
        result["suricata"] = _start_suricata(ns, suricata, work, "tls0peer")
    except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
        result["error"] = exc


def run_demo_vm(args: argparse.Namespace) -> int:
    step = _Steps()
    try:
        tools = _require_tools()
        work = Path(args.workdir).resolve()
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        cache = Path(args.cache_dir or default_cache_dir()).resolve()
        step(f"tls-bridge demo --vm: work dir {work}, guest image cache {cache}")
        image = build_guest_image(FLAVOR, directory=cache / f"guest-{FLAVOR}", keep_modules=False,
                                  progress=lambda text: step(f"  {text}"))
        flows, synthetic, feed = work / "flows.jsonl", work / "synthetic.pcap", f"ipc://{work}/keyfeed"
        certs = work / "certs"
        for name, directory in (("harvester", certs), ("sensor", certs / "sensors")):
            subprocess.run(_bridge(["keys", "gen-cert", name, "--dir", str(directory)]), check=True,
                           capture_output=True)
        logs = {name: work / f"{name}.log" for name in ("harvester", "bridge")}
        with _VmNamespace(tools["ip"]) as ns, open(logs["harvester"], "wb") as hlog, \
                open(logs["bridge"], "wb") as blog:
            ns.add_tap(TAP)
            ns.add_injection_pair("tls0", "tls0peer")
            started: dict = {}
            suricata_thread = threading.Thread(target=_boot_suricata, args=(ns, tools["suricata"], work, started))
            suricata_thread.start()
            step(f"booting the guest ({image.kernel_version}, QEMU TCG, 512 MiB RAM in a file, NIC on tap {TAP} "
                 f"in namespace {ns.name}); Suricata 7 starts meanwhile")
            try:
                guest = Guest(image, name=VM_NAME, tap=TAP, netns=ns.name, workdir=work / "guest", boot_timeout=180,
                              gdb_port=0, progress=lambda text: step(f"  guest: {text}"))
                with guest:
                    step(f"guest up in {guest.boot_seconds:.1f} s: {HOST} ({GUEST_IP}) serves HTTPS on {SERVER_PORT} "
                         f"(openssl s_server, {image.openssl_version.split(' (')[0]}); nothing of tls-bridge inside")
                    harvester = ns.start(_bridge([
                        "harvest", "vm", "--memory-file", str(guest.memory_path), "--kernel", str(image.kernel),
                        "--comm", "openssl", "--name", VM_NAME, "--trigger", "wire,hooks", "--wire", TAP,
                        "--hooks", "SSL_free", "--gdb", f"127.0.0.1:{guest.gdb_port}", "--qmp", str(guest.qmp_path),
                        "--bind", feed, "--server-cert", str(certs / "harvester.key_secret"),
                        "--allow", str(certs / "sensors")]), stdout=hlog, stderr=hlog)
                    _wait_for_text(logs["harvester"], "harvesting", 120, "the VM harvester")
                    step(f"the harvester found the guest's kernel and its openssl process from the host (RAM file "
                         f"{guest.memory_path}): it searches the process's memory for each ClientHello seen on {TAP} "
                         "(the guest runs on); a breakpoint on SSL_free (QEMU's gdbstub) reads any connection the "
                         "search has not published when the server frees it")
                    suricata_thread.join(120)
                    if "error" in started or "suricata" not in started:
                        raise started.get("error") or DemoError("suricata did not start")
                    suricata, eve = started["suricata"]
                    step("Suricata 7 inspects the injection interface tls0")
                    bridge = ns.start(_bridge(["decrypt", "-i", TAP, "--keys", feed, "--server-key",
                                               str(certs / "harvester.key"), "--client-cert",
                                               str(certs / "sensors" / "sensor.key_secret"), "--inject", "tls0", "-w",
                                               str(synthetic), "--flows", str(flows)]), stdout=blog, stderr=blog)
                    _wait_for_text(logs["bridge"], f"capturing on {TAP}", 30, "tls-bridge decrypt")
                    step(f"tls-bridge decrypts {TAP} live with the harvested keys; curl fetches from the guest over "
                         "TLS 1.3 and TLS 1.2 ...")
                    requests = _client_requests(ns, tools["curl"])
                    _stop_chain(bridge, harvester, suricata, eve, logs["bridge"])
            finally:
                suricata_thread.join(130)  # before the namespace goes
            step("guest shut down")
        print(_summary_line(logs["harvester"], "connections published"), flush=True)
        print(_summary_line(logs["bridge"], "decrypted"), flush=True)
        status = _report(flows, eve, requests, connections=3)
        print(f"\nLogs: flow log {flows}\n      synthetic cleartext pcap {synthetic}\n"
              f"      Suricata eve.json {eve}\n      harvester {logs['harvester']}\n      bridge {logs['bridge']}\n"
              f"      guest console {work / 'guest' / 'console.log'}", flush=True)
        step("done")
        return status
    except (DemoError, BridgeError, subprocess.SubprocessError, OSError) as exc:
        print(f"tls-bridge demo --vm: error: {exc}", file=sys.stderr, flush=True)
        return 1
