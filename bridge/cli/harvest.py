"""``tls-bridge profile ...`` and ``tls-bridge harvest process ...``."""

from __future__ import annotations

import argparse
import sys
import threading

from bridge.cli.common import (
    StatusFile,
    add_output_options,
    is_loopback,
    layout_resolver,
    layout_summary,
    open_sinks,
    parse_triggers,
    profile_store,
    say,
    stats_dict,
    stop_on_signals,
)
from bridge.errors import BridgeError
from bridge.harvest.profile import DEFAULT_PROFILE_DIR, SHIPPED_DIR, Profile

# --- profile ------------------------------------------------------------------------------------


def run_calibrate(args: argparse.Namespace) -> int:
    if args.libssl:
        profile = _calibrate_in_subprocess(args.libssl)
    else:
        from bridge.harvest.calibrate_live import calibrate_process

        profile = calibrate_process(args.pid, args.keylog, binary=args.binary, duration=args.duration,
                                    min_connections=args.connections, log=lambda text: say(args, text))
    if args.source:
        profile.made["source"] = args.source
    if args.output == "-":
        sys.stdout.write(profile.to_json())
    else:
        path = profile.save(args.output)
        say(args, f"profile for {profile.library} ({profile.openssl_version}, build-id {profile.build_id}) "
                   f"written to {path} in {profile.made.get('seconds', '?')} s")
    return 0


def _calibrate_in_subprocess(libssl: str) -> Profile:
    """The library is loaded into a fresh, confined process (it meets no other OpenSSL
    loaded here, and a crafted library runs with no privileges and no network)."""
    from bridge.harvest.sandbox import calibrate_sandboxed

    return calibrate_sandboxed(libssl)


def run_show(args: argparse.Namespace) -> int:
    from bridge.harvest.elf import read_elf

    store = profile_store(args)
    status = 0
    for binary in args.binary:
        image = read_elf(binary)
        profile = store.get(image.build_id)
        state = "profile found" if profile else "NO PROFILE"
        print(f"{binary}: build-id {image.build_id}, {image.openssl_version or 'no OpenSSL version string'}, "
              f"{'embeds OpenSSL' if image.embeds_openssl else 'no SSL_* functions'}: {state}")
        if profile:
            for name, path in profile.fields.items():
                print(f"    {name:<28} {' -> '.join(f'{step:#x}' for step in path)}")
        else:
            status = 1
    return status


def run_list(args: argparse.Namespace) -> int:
    store = profile_store(args)
    for profile in sorted(store, key=lambda p: (p.openssl_version or "", p.library)):
        print(f"{profile.build_id}  {profile.openssl_version or '?':<32} {profile.library}")
    return 0


# --- harvest process ------------------------------------------------------------------------


def _wire_frames(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    if not args.wire:
        return None
    from bridge.capture.afpacket import AfPacketCapture

    return iter(AfPacketCapture(args.wire, ignore_outgoing=is_loopback(args.wire), idle_marker=True,
                                snaplen=4096, poll_interval=0.05))



def run_harvest_process(args: argparse.Namespace) -> int:
    from bridge.harvest.process_harvester import ProcessHarvester, check_privileges
    from bridge.harvest.targets import TargetFinder

    check_privileges()
    triggers = parse_triggers(args.trigger, ("hooks", "wire", "requests"), args)
    if "wire" in triggers and not args.wire:
        raise BridgeError("--trigger wire needs --wire IFACE (where the ClientHellos are seen)")
    finder = TargetFinder(pids=tuple(args.pid or ()), comms=tuple(args.comm or ()), everything=args.all,
                          cache_dir=args.profile_cache or None)
    sinks, keylog, publisher = open_sinks(args)
    stop = stop_on_signals()
    harvester = None
    status = None
    try:
        from bridge.harvest.uprobes import hook_functions

        hooks = hook_functions(args.hooks) if "hooks" in triggers else None
        resolver = layout_resolver(args)
        harvester = ProcessHarvester(finder, resolver, sinks, hooks=hooks,
                                     wire=_wire_frames(args) if "wire" in triggers else None,
                                     requests="requests" in triggers, log=lambda text: say(args, text))
        if publisher is not None and "requests" in triggers:
            publisher.take_key_requests(harvester.request)
        if args.duration:
            threading.Timer(args.duration, stop.set).start()
        harvester.refresh()
        resolver.wait(15.0)  # builds met at start: calibrated before the first connections if at all possible
        harvester.refresh()
        status = StatusFile(args.status, lambda: {"layouts": resolver.status(), "stats": stats_dict(harvester)})
        say(args, f"harvesting {harvester.stats.processes} processes ({', '.join(sorted(triggers))}); "
                   "Ctrl-C or SIGTERM to stop")
        harvester.run(stop)
    finally:
        if status is not None:
            status.close()
        if harvester is not None:
            harvester.close()
            stats = harvester.stats
            wire = harvester.wire
            text = (f"{stats.connections} connections published from {stats.processes} processes; "
                    f"{stats.hook_events} hook events ({stats.events_other_processes} of other processes, "
                    f"{stats.fallback_reads} fields read from memory), {stats.incomplete_at_free} freed incomplete")
            if wire is not None:
                named, found = wire.intake.counts, wire.stats
                text += (f"; searches: {named.named - named.requests} ClientHellos and {named.requests} sensor "
                         f"requests, {named.duplicates} duplicates, {found.published} published, {found.closed_first} "
                         f"closed before found, {found.not_owned} not ours, {found.not_found} not found, "
                         f"{found.incomplete} incomplete, {found.unfinished} unfinished at stop, "
                         f"{named.dropped + harvester.inbox.overflow} dropped")
                if named.hooked:
                    text += f", {named.hooked} not searched (the hooks fetch every target's fields)"
            percentiles = stats.latency_percentiles()
            if percentiles is not None:
                text += f"; trigger to published p50 {percentiles[0] * 1000:.2f} ms, p99 {percentiles[1] * 1000:.2f} ms"
            if stats.unconfirmed:
                text += f"; {stats.unconfirmed} reads not confirmed (held back)"
            if stats.keylog_binaries_hooked:
                text += (f"; {stats.keylog_lines} key log lines from {stats.keylog_binaries_hooked} key-log functions "
                         f"hooked ({stats.keylog_undecodable} hits undecodable, "
                         f"{harvester.keylog.stats.evicted} connections evicted unfinished)")
            say(args, text)
            for line in layout_summary(harvester.resolver):
                say(args, line)
        if keylog is not None:
            keylog.close()
        if publisher is not None:
            publisher.close()
    return 0


# --- parsers ---------------------------------------------------------------------------------


def add_profile_parser(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    profile = subparsers.add_parser(
        "profile", help="OpenSSL struct-offset profiles: calibrate, show, list", formatter_class=formatter,
        description="A profile tells the harvester where one OpenSSL build (identified by its ELF build-id) "
        f"keeps each secret. Profiles shipped with tls-bridge are in {SHIPPED_DIR}; more are read from "
        f"{DEFAULT_PROFILE_DIR} and from --profiles DIR.",
    )
    commands = profile.add_subparsers(dest="profile_command", metavar="SUBCOMMAND", required=True)
    calibrate = commands.add_parser(
        "calibrate", help="derive a profile from real handshakes (no source, no debug symbols)",
        formatter_class=formatter,
        description="With --libssl: load that library (ctypes), run TLS 1.2 and 1.3 handshakes through it over "
        "memory BIOs with its key log callback as ground truth, and find every field; about a second. "
        "With --pid: for a build that cannot be loaded (OpenSSL linked into an executable, such as node): "
        "hook the running process with uprobes while a client that writes a key log (--keylog) connects to it "
        "with TLS 1.2 and TLS 1.3 (a SHA-256 and a SHA-384 suite). Refuses to write an ambiguous profile.",
        epilog="examples:\n  tls-bridge profile calibrate --libssl /usr/lib/x86_64-linux-gnu/libssl.so.3\n"
        "  tls-bridge profile calibrate --pid $(pidof node) --keylog /tmp/client.keylog --duration 30",
    )
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--libssl", metavar="PATH", help="a libssl shared library")
    source.add_argument("--pid", type=int, metavar="PID", help="a running process that embeds or maps OpenSSL")
    calibrate.add_argument("--keylog", metavar="FILE", help="with --pid: the key log the test client writes")
    calibrate.add_argument("--binary", metavar="PATH", help="with --pid: the binary holding OpenSSL (default: found)")
    calibrate.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                           help="with --pid: watch at most this long (default: 60)")
    calibrate.add_argument("--connections", type=int, default=6, metavar="N",
                           help="with --pid: stop once N connections were matched to the key log (default: 6)")
    calibrate.add_argument("-o", "--output", default=DEFAULT_PROFILE_DIR, metavar="DIR",
                           help=f"directory for BUILD-ID.json ('-' for stdout; default: {DEFAULT_PROFILE_DIR})")
    calibrate.add_argument("--source", metavar="TEXT", help="where the build came from, recorded in the profile")
    calibrate.add_argument("-q", "--quiet", action="store_true")
    calibrate.set_defaults(handler=run_calibrate)

    show = commands.add_parser("show", help="build-id, OpenSSL version and profile of binaries")
    show.add_argument("binary", nargs="+", metavar="BINARY")
    show.add_argument("--profiles", action="append", metavar="DIR")
    show.add_argument("-q", "--quiet", action="store_true")
    show.set_defaults(handler=run_show)
    listing = commands.add_parser("list", help="the profiles known")
    listing.add_argument("--profiles", action="append", metavar="DIR")
    listing.add_argument("-q", "--quiet", action="store_true")
    listing.set_defaults(handler=run_list)


def add_harvest_parser(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    harvest = subparsers.add_parser("harvest", help="read TLS secrets out of processes (and VMs)",
                                    formatter_class=formatter)
    commands = harvest.add_subparsers(dest="harvest_command", metavar="SUBCOMMAND", required=True)
    process = commands.add_parser(
        "process", help="harvest the TLS secrets of processes on this host", formatter_class=formatter,
        description="Find the selected processes that map an OpenSSL (libssl, or linked into the executable), "
        "GnuTLS (libgnutls), or are Go programs with crypto/tls (stripped or not), "
        "and read each connection's secrets with that build's profile, once per connection, into an RFC 9850 "
        "key log (--keylog) and/or the key feed (--bind/--connect). Triggers: 'hooks' — kernel uprobes on "
        "SSL_do_handshake, SSL_read(_ex), SSL_write(_ex), SSL_get_session, SSL_shutdown and SSL_free that fetch "
        "the fields at hook time (the process never stops); Go's crypto/tls and GnuTLS are hooked at their own "
        "key-log function instead (crypto/tls.(*Config).writeKeyLog found in the pclntab; GnuTLS's default "
        "key-log function, found by loading the library in a sandbox), whose arguments are the secrets; 'wire' — no hook at all: each ClientHello seen on "
        "--wire IFACE names a connection, whose client random is searched in the owning process's memory; "
        "'requests' — the same search for each connection a sensor asks about on the key feed (a sensor "
        "asks when it sees a ClientHello it has no secrets for). "
        "Processes that start later are picked up within a second. Needs root (or CAP_SYS_PTRACE, "
        "CAP_SYS_ADMIN, CAP_PERFMON).",
        epilog="examples:\n  tls-bridge harvest process --comm nginx --keylog /run/tls-bridge/keys.log\n"
        "  tls-bridge harvest process --all --bind tcp://0.0.0.0:5555 --server-cert certs/harvester.key_secret \\\n"
        "      --allow certs/sensors/\n"
        "  tls-bridge harvest process --pid 1234 --trigger wire --wire eth0 --keylog keys.log\n"
        "  tls-bridge harvest process --comm nginx --trigger hooks,requests --bind tcp://0.0.0.0:5555 \\\n"
        "      --server-cert certs/harvester.key_secret --allow certs/sensors/",
    )
    select = process.add_mutually_exclusive_group(required=True)
    select.add_argument("--pid", type=int, nargs="+", metavar="PID", help="these processes")
    select.add_argument("--comm", nargs="+", metavar="NAME", help="processes with this command name")
    select.add_argument("--all", action="store_true", help="every process that maps OpenSSL or GnuTLS, or runs Go's crypto/tls")
    process.add_argument("--trigger", default="hooks",
                         help="hooks, wire, requests, or several separated by commas (default: hooks)")
    process.add_argument("--hooks", default="early", metavar="SET",
                         help="hook points: 'early' (SSL_do_handshake, SSL_read(_ex), SSL_write(_ex), SSL_get_session, "
                              "SSL_shutdown, SSL_free: keys at the first I/O after the handshake, a hit per I/O call), "
                              "'late' (SSL_shutdown, SSL_free: keys when the connection closes, 2-3 hits per "
                              "connection), or SSL_* names separated by commas (default: early)")
    process.add_argument("--wire", metavar="IFACE", help="interface where the ClientHellos are seen (wire trigger)")
    add_output_options(process)
    process.set_defaults(handler=run_harvest_process)

    from bridge.cli.vm import add_vm_parser

    add_vm_parser(commands)
