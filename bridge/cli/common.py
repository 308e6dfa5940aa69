"""What the command modules share: messages, signals, the key feed's options and
security, and the harvesters' outputs and layout options.  Argument parsing and
wiring only; the parts wired live in the product's packages."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from bridge.errors import BridgeError, TransportError
if TYPE_CHECKING:  # imported where used: a command without a key feed does not pay for ZeroMQ's
    from bridge.harvest.profile import ProfileStore
    from bridge.keyfeed.publisher import Publisher
    from bridge.keyfeed.security import CurveClient
from bridge.keys.keylog import KeyLogWriter


def say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(f"tls-bridge: {text}", file=sys.stderr, flush=True)


def warn(text: str) -> None:
    print(f"tls-bridge: warning: {text}", file=sys.stderr, flush=True)


def is_loopback(interface: str) -> bool:
    """A loopback device shows every packet leaving and arriving: captures keep one copy, as libpcap does."""
    try:
        with open(f"/sys/class/net/{interface}/type", encoding="ascii") as handle:
            return handle.read().strip() == "772"  # ARPHRD_LOOPBACK
    except OSError:
        return False


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    return stop


# --- the key feed -----------------------------------------------------------------------------


def add_client_security_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server-key", metavar="FILE", help="the publisher's or broker's public key (NAME.key)")
    parser.add_argument("--client-cert", metavar="FILE", help="this side's certificate (NAME.key_secret)")


def client_security(args: argparse.Namespace, *, insecure: bool) -> CurveClient | None:
    """The connecting side's Curve keys from --server-key/--client-cert, or None with --insecure."""
    from bridge.keyfeed.security import INSECURE_WARNING, load_client

    if insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        return None
    if not args.server_key or not args.client_cert:
        raise TransportError(
            "the key feed is encrypted and authenticated: give --server-key SERVER.key and "
            "--client-cert CLIENT.key_secret (make them with 'tls-bridge keys gen-cert'), or --insecure for a lab"
        )
    return load_client(args.server_key, args.client_cert)


def publisher_from_args(args: argparse.Namespace) -> Publisher:
    """A publisher (not started) from --bind/--connect, the certificates, --insecure and --ttl
    (and --snapshot where the command has it): the key feed end of every harvester command."""
    from bridge.keyfeed.publisher import Publisher, PublisherConfig
    from bridge.keyfeed.security import INSECURE_WARNING, check_endpoint, load_server

    connect = args.connect is not None
    endpoint = check_endpoint(args.connect if connect else args.bind)
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        server = client = None
    elif connect:
        server, client = None, client_security(args, insecure=False)
    else:
        if not args.server_cert or not args.allow:
            raise TransportError(
                "a publisher that binds is the Curve server: give --server-cert NAME.key_secret and "
                "--allow DIR (the sensors' public keys), or --insecure for a lab"
            )
        server, client = load_server(args.server_cert, args.allow), None
    config = PublisherConfig(endpoint=endpoint, connect=connect, snapshot=getattr(args, "snapshot", None),
                             ttl=args.ttl)
    return Publisher(config, server=server, client=client, on_failure=warn)



# --- harvesters ---------------------------------------------------------------------------------


class KeyLogFileSink:
    """Harvested records as RFC 9850 lines appended to a key log (0600), flushed each time."""

    def __init__(self, path: str) -> None:
        self.writer = KeyLogWriter(path, append=True)

    @property
    def lines(self) -> int:
        return self.writer.lines

    def __call__(self, record) -> None:  # type: ignore[no-untyped-def]
        self.writer.write(record.keylog_entries())

    def close(self) -> None:
        self.writer.close()


def profile_store(args: argparse.Namespace) -> ProfileStore:
    from bridge.harvest.profile import ProfileStore, default_profile_cache  # the harvesters' commands only

    cache = getattr(args, "profile_cache", None) or default_profile_cache()
    directories = [cache, *(args.profiles or [])]
    store = ProfileStore(directories, shipped=not getattr(args, "no_shipped_profiles", False))
    for error in store.errors:
        say(args, f"warning: {error}")
    return store


def layout_resolver(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The harvesters' layout resolver: known profiles, calibration here, confirmed candidates, learning."""
    from bridge.harvest.resolve import LayoutResolver

    methods = tuple(m.strip() for m in args.resolve.split(",") if m.strip()) if args.resolve != "none" else ()
    return LayoutResolver(profile_store(args), cache_dir=args.profile_cache or None, methods=methods,
                          log=lambda text: say(args, text))


class StatusFile:
    """``--status FILE``: the harvester's layouts and counters as JSON, rewritten every second."""

    def __init__(self, path: str | None, snapshot) -> None:  # type: ignore[no-untyped-def]
        self.path, self.snapshot = path, snapshot
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="status-file", daemon=True) if path else None
        if self._thread is not None:
            self._thread.start()

    def write(self) -> None:
        if not self.path:
            return
        import json  # the status file is optional: not imported at every start

        temporary = f"{self.path}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.snapshot(), handle, indent=2, default=str)
            handle.write("\n")
        os.replace(temporary, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.write()
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        try:
            self.write()
        except OSError:
            pass


def _publisher(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return publisher_from_args(args).start()


def open_sinks(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Where harvested records go: --keylog and/or the key feed (--bind/--connect)."""
    if not args.keylog and not (args.bind or args.connect):
        raise BridgeError("say where the secrets go: --keylog FILE and/or --bind/--connect (the key feed)")
    sinks = []
    keylog = KeyLogFileSink(args.keylog) if args.keylog else None
    if keylog is not None:
        sinks.append(keylog)
    publisher = _publisher(args) if (args.bind or args.connect) else None
    if publisher is not None:
        sinks.append(publisher.publish)
    return sinks, keylog, publisher


def parse_triggers(text: str, allowed: tuple[str, ...], args: argparse.Namespace) -> set[str]:
    """The --trigger list, checked against ``allowed``; ``requests`` needs a key feed."""
    triggers = {name.strip() for name in text.split(",") if name.strip()}
    if not triggers or not triggers <= set(allowed):
        raise BridgeError(f"--trigger {text!r}: use one or more of {', '.join(allowed)}, separated by commas")
    if "requests" in triggers and not (args.bind or args.connect):
        raise BridgeError("--trigger requests needs the key feed (--bind or --connect): the sensors' requests "
                          "arrive on it")
    return triggers


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keylog", metavar="FILE", help="append the secrets to this RFC 9850 key log (0600; '-': stdout)")
    feed = parser.add_argument_group("key feed (see 'tls-bridge keys --help')")
    place = feed.add_mutually_exclusive_group()
    place.add_argument("--bind", metavar="ENDPOINT", help="publish the secrets here")
    place.add_argument("--connect", metavar="ENDPOINT", help="publish to a broker's frontend")
    feed.add_argument("--server-cert", metavar="FILE", help="with --bind: this harvester's certificate")
    feed.add_argument("--allow", metavar="DIR", help="with --bind: the sensors' public keys")
    add_client_security_options(feed)
    feed.add_argument("--ttl", type=float, default=600.0, metavar="SECONDS", help="keep records for snapshots (default: 600)")
    feed.add_argument("--insecure", action="store_true", help="no CurveZMQ (labs only)")
    add_resolution_options(parser)
    parser.add_argument("--status", metavar="FILE",
                        help="write the harvester's state (each build's layout and where it came from, counters) "
                             "as JSON to FILE every second")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument("-q", "--quiet", action="store_true")


def add_resolution_options(parser: argparse.ArgumentParser) -> None:
    from bridge.harvest.profile import DEFAULT_PROFILE_DIR, PROFILE_CACHE_ENV, default_profile_cache

    layouts = parser.add_argument_group(
        "layouts of OpenSSL builds",
        "A build with no profile is resolved automatically: a libssl this host can load is calibrated at first "
        "sight in a confined child process (no network, no root, no capabilities, a time limit); otherwise the "
        "known layouts (the same version series first) are candidates, and nothing read through one is published "
        "before it is confirmed on a live connection (cryptographic relations between the secrets and what the "
        "process holds); failing that, the layout is learned from live connections (each secret derived and "
        "checked the same way before anything is published). Results are cached by build-id in the profile cache.")
    layouts.add_argument("--profiles", action="append", metavar="DIR", help="more profile directories")
    layouts.add_argument("--profile-cache", default=default_profile_cache(), metavar="DIR",
                         help=f"where profiles calibrated or confirmed here are kept and read (default: "
                              f"${PROFILE_CACHE_ENV} or {DEFAULT_PROFILE_DIR}; '' to keep none)")
    layouts.add_argument("--resolve", default="calibrate,candidates,learn", metavar="METHODS",
                         help="how builds without a profile are resolved, in this order: calibrate, candidates, "
                              "learn (from live connections: needs the wire or sensors' requests to name the "
                              "connections, and hooks for processes; a VM guest's objects are also found by the "
                              "search), separated by commas (default: all three), or none")
    layouts.add_argument("--no-shipped-profiles", action="store_true",
                         help="ignore the profiles shipped with tls-bridge (every build resolved here)")


def layout_summary(resolver) -> list[str]:  # type: ignore[no-untyped-def]
    return [layout.describe() for layout in resolver.layouts.values()]


def stats_dict(harvester) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from dataclasses import asdict

    body = {name: value for name, value in asdict(harvester.stats).items() if name != "latencies"}
    if harvester.wire is not None:
        body["search"] = {name: value for name, value in asdict(harvester.wire.stats).items()}
    return body


