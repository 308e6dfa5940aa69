"""``tls-bridge harvest vm``: the VM harvester's CLI driver."""

from __future__ import annotations

import argparse
import threading
import time

from bridge.errors import BridgeError
from bridge.vmi.physmem import GuestPhysicalMemory

_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    text = text.strip().upper().rstrip("B").rstrip("I")
    unit = _SIZE_UNITS.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in _SIZE_UNITS else text
    try:
        return int(float(number) * unit)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512M or 4G") from None


def open_memory(args: argparse.Namespace) -> GuestPhysicalMemory:
    from bridge.vmi.physmem import LibvmiBackend, MemoryFileBackend, QemuProcessBackend

    if args.memory_file:
        return MemoryFileBackend(args.memory_file, machine=args.machine)
    if args.qemu_pid:
        if not args.ram_size:
            raise BridgeError("--qemu-pid needs --ram-size (the guest's -m, e.g. 512M)")
        return QemuProcessBackend(args.qemu_pid, args.ram_size, machine=args.machine, ram_path=args.ram_path)
    return LibvmiBackend(args.libvmi, machine=args.machine, kvmi_socket=args.kvmi_socket)


def _idle(stop: threading.Event):  # type: ignore[no-untyped-def]
    """No traffic to watch: a tick every 5 ms (sensors' requests, searches under way)."""
    while not stop.wait(0.005):
        yield None


def _start_hooks(args: argparse.Namespace, harvester, stop: threading.Event):  # type: ignore[no-untyped-def]
    from bridge.vmi.gdb_hooks import GdbHooks, hook_points, run_hooks
    from bridge.vmi.gdbremote import GdbRemote

    host, _, port = args.gdb.rpartition(":")
    remote = GdbRemote(host or "127.0.0.1", int(port))
    hooks = GdbHooks(remote, harvester.on_hook_hit)
    hooks.start_watchdog(args.qmp)
    functions = tuple(name.strip() for name in args.hooks.split(",") if name.strip())
    symbols: dict[str, dict[str, int]] = {}
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            run_hooks(hooks, lambda: hook_points(harvester.targets, functions, symbols)
                      + harvester.keylog_hook_points(), stop)
        except BaseException as exc:  # reported; the watchdog and close() clean up
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=loop, name="gdb-hooks", daemon=True)
    thread.start()
    return thread, hooks


def run_harvest_vm(args: argparse.Namespace) -> int:
    from bridge.capture.follow import follow_capture
    from dataclasses import asdict

    from bridge.cli.common import StatusFile, layout_resolver, layout_summary, open_sinks, parse_triggers, say, stop_on_signals
    from bridge.vmi.btf import btf_from_kernel_image, find_btf_in_memory
    from bridge.vmi.harvester import VmHarvester

    triggers = parse_triggers(args.trigger, ("wire", "hooks", "requests"), args)
    if "wire" in triggers and not (args.wire_pcap or args.wire):
        raise BridgeError("the wire trigger needs --wire-pcap FILE or --wire IFACE (the VM's traffic)")
    if "hooks" in triggers and not args.gdb:
        raise BridgeError("the hooks trigger needs --gdb HOST:PORT (QEMU's gdbstub)")
    sinks, keylog, publisher = open_sinks(args)
    stop = stop_on_signals()
    memory = open_memory(args)
    harvester = None
    status = None
    try:
        started = time.monotonic()
        btf = (btf_from_kernel_image(args.kernel) if args.kernel
               else find_btf_in_memory(memory.read, memory.layout.ranges()))
        harvester = VmHarvester(memory, btf, sinks, vm_name=args.name, profiles=layout_resolver(args),
                                comms=tuple(args.comm or ()), pids=tuple(args.pid or ()), everything=args.all,
                                named=bool({"wire", "requests"} & set(triggers)),
                                keylog_hooks="hooks" in triggers,
                                log=lambda text: say(args, text))
        harvester.attach()
        status = StatusFile(args.status, lambda: {"vm": args.name, "layouts": harvester.resolver.status(),
                                                  "stats": {k: v for k, v in asdict(harvester.stats).items()
                                                            if k != "latencies"}})
        if "requests" in triggers:
            publisher.take_key_requests(harvester.request)
        kernel = harvester.guest.kernel  # type: ignore[union-attr]
        say(args, f"{args.name}: guest kernel found in {time.monotonic() - started:.2f} s (BTF {len(btf)} types, "
                   f"direct map {kernel.direct_map:#x}, {kernel.levels}-level paging); harvesting "
                   f"{harvester.stats.processes} processes: "
                   + ", ".join([f"{t.process.comm}[{t.process.pid}] {t.library}" for t in harvester.targets]
                               + [f"{t.process.comm}[{t.process.pid}] {t.library}" for t in harvester.keylog_targets]))
        if args.duration:
            threading.Timer(args.duration, stop.set).start()
        hooks = _start_hooks(args, harvester, stop) if "hooks" in triggers else None
        if "wire" in triggers:
            if args.wire_pcap:
                frames = follow_capture(args.wire_pcap, stop)
            else:
                from bridge.capture.afpacket import AfPacketCapture

                frames = iter(AfPacketCapture(args.wire, idle_marker=True, snaplen=4096, poll_interval=0.005,
                                              stop_event=stop))
        else:
            frames = _idle(stop)
        try:
            harvester.run(frames, stop, wire="wire" in triggers)
        finally:
            if hooks is not None:
                stop.set()
                hooks_thread, gdb_hooks = hooks
                hooks_thread.join(30)
                gdb_hooks.close()
                stats = gdb_hooks.stats
                say(args, f"{args.name}: gdbstub hooks: {stats.stops} stops, {stats.hits} in targets "
                           f"({stats.other_processes} other processes), {stats.emulated} first instructions "
                           f"emulated, {stats.stepped_over} stepped over; the guest paused "
                           f"{stats.stop_seconds / max(stats.stops, 1) * 1000:.2f} ms per stop in our hands")
    finally:
        if harvester is not None:
            stats = harvester.stats
            latency = sorted(stats.latencies)
            intake = harvester.intake.counts
            text = (f"{args.name}: {stats.published} connections published of {intake.searched} searched "
                    f"({intake.named - intake.requests} ClientHellos, {intake.requests} sensor requests, "
                    f"{intake.duplicates} named twice, {intake.dropped + harvester.inbox.overflow} dropped at the "
                    f"bound); misses: "
                    f"{stats.closed_first} closed before the search found them, {stats.not_found} not found in any "
                    f"target (another process?), {stats.incomplete} incomplete, {stats.unfinished} unfinished at "
                    f"stop; {stats.searches} searches, "
                    f"{stats.bytes_searched / max(stats.searches, 1) / 1e6:.1f} MB and "
                    f"{stats.search_seconds / max(stats.searches, 1) * 1000:.2f} ms each; "
                    f"{stats.attaches} attaches")
            if latency:
                text += (f"; trigger to published p50 {latency[len(latency) // 2] * 1000:.1f} ms, "
                         f"p99 {latency[min(len(latency) - 1, int(len(latency) * 0.99))] * 1000:.1f} ms")
            if stats.unconfirmed:
                text += f"; {stats.unconfirmed} reads not confirmed (held back)"
            if stats.keylog_hits:
                text += (f"; {stats.keylog_hits} stops at key-log functions ({stats.keylog_undecodable} "
                         "not a key log line)")
            say(args, text)
            harvester.close()
            for line in layout_summary(harvester.resolver):
                say(args, f"{args.name}: {line}")
        if status is not None:
            status.close()
        memory.close()
        if keylog is not None:
            keylog.close()
        if publisher is not None:
            publisher.close()
    return 0


def add_vm_parser(commands: argparse._SubParsersAction) -> None:
    from bridge.cli.common import add_output_options

    vm = commands.add_parser(
        "vm", help="harvest the TLS secrets of processes in a running QEMU/KVM guest (agentless)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read guest memory from the host (nothing runs in the guest), find the guest's processes "
        "through its kernel's own structures (types from its BTF, KASLR found by scanning), and publish the "
        "TLS secrets of the selected ones: each ClientHello seen on the VM's traffic (--wire-pcap, e.g. QEMU's "
        "filter-dump file, or --wire IFACE, its tap) names a client random, searched in the targets' memory; "
        "the secrets are read as soon as they are complete: the guest never pauses. Or the same search for each "
        "connection a sensor asks about on the key feed (--trigger requests: no access to the VM's traffic "
        "needed). Or breakpoint hooks through QEMU's gdbstub (--trigger hooks).",
        epilog="examples:\n"
        "  tls-bridge harvest vm --memory-file /dev/shm/web01.ram --wire tap-web01 --comm nginx --name web01 \\\n"
        "      --bind tcp://0.0.0.0:5555 --server-cert certs/harvester.key_secret --allow certs/sensors/\n"
        "  tls-bridge harvest vm --qemu-pid $(pidof qemu-system-x86_64) --ram-size 4G --kernel vmlinuz-6.1 \\\n"
        "      --wire-pcap /var/lib/qemu/web01.pcap --all --keylog keys.log\n"
        "  tls-bridge harvest vm --memory-file /dev/shm/web01.ram --trigger requests --comm nginx --name web01 \\\n"
        "      --bind tcp://0.0.0.0:5555 --server-cert certs/harvester.key_secret --allow certs/sensors/",
    )
    memory = vm.add_mutually_exclusive_group(required=True)
    memory.add_argument("--memory-file", metavar="PATH",
                        help="the guest RAM file (-object memory-backend-file,mem-path=PATH,share=on)")
    memory.add_argument("--qemu-pid", type=int, metavar="PID", help="read the RAM inside this QEMU process")
    memory.add_argument("--libvmi", metavar="DOMAIN|PATH",
                        help="LibVMI's physical reads: a guest RAM file (a path: LibVMI's file driver) or a "
                             "Xen/KVMi domain name (LibVMI's domain mode)")
    vm.add_argument("--ram-size", type=_size, metavar="SIZE", help="with --qemu-pid: the guest's RAM size (e.g. 512M)")
    vm.add_argument("--ram-path", metavar="PATH", help="with --qemu-pid: the RAM backing file, if any")
    vm.add_argument("--kvmi-socket", metavar="PATH", help="with --libvmi DOMAIN on KVMi: QEMU's KVMi socket")
    vm.add_argument("--machine", default="pc", choices=("pc", "q35"), help="QEMU machine type (RAM above the PCI hole)")
    vm.add_argument("--kernel", metavar="IMAGE", help="the guest's vmlinux/vmlinuz, for its BTF (default: found in memory)")
    select = vm.add_mutually_exclusive_group(required=True)
    select.add_argument("--comm", nargs="+", metavar="NAME", help="guest processes with this command name")
    select.add_argument("--pid", type=int, nargs="+", metavar="PID", help="guest processes with these pids")
    select.add_argument("--all", action="store_true", help="every guest process that maps libssl")
    vm.add_argument("--trigger", default="wire",
                    help="wire (default), requests, hooks, or several separated by commas")
    wire = vm.add_mutually_exclusive_group()
    wire.add_argument("--wire-pcap", metavar="FILE", help="follow this capture of the VM's traffic as it grows")
    wire.add_argument("--wire", metavar="IFACE", help="capture the VM's traffic on this interface (its tap)")
    hooks = vm.add_argument_group(
        "breakpoint hooks (--trigger hooks)",
        "Breakpoints through QEMU's gdbstub on functions each connection calls (hardware breakpoints where "
        "the stub takes them; hits filtered on CR3; the first instruction emulated instead of a step-over). "
        "The guest pauses at each hit. A watchdog removes the breakpoints and resumes the guest if the "
        "harvester dies.",
    )
    hooks.add_argument("--gdb", metavar="HOST:PORT", help="QEMU's gdbstub (-gdb tcp:HOST:PORT)")
    hooks.add_argument("--hooks", default="SSL_get_session,SSL_free", metavar="FUNCTIONS",
                       help="SSL_* functions to hook (default: SSL_get_session,SSL_free: once per connection "
                            "each, in openssl s_server)")
    hooks.add_argument("--qmp", metavar="SOCKET", help="QEMU's QMP socket: the watchdog's last resort ('cont')")
    vm.add_argument("--name", default="vm", help="the VM's name in the records (default: vm)")
    add_output_options(vm)
    vm.set_defaults(handler=run_harvest_vm)
