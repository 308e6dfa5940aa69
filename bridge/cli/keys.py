"""``tls-bridge keys``: gen-cert, publish, dump, broker — the key feed's CLI drivers."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.cli.common import add_client_security_options, client_security, publisher_from_args, say, warn
from bridge.errors import BridgeError, TransportError
from bridge.keyfeed import wire
from bridge.keyfeed.broker import Broker, BrokerConfig, BrokerKeys
from bridge.keyfeed.publisher import Publisher
from bridge.keyfeed.receiver import describe_feed
from bridge.keyfeed.security import INSECURE_WARNING, check_endpoint, generate_certificate, load_server
from bridge.keyfeed.subscriber import Subscriber, SubscriberConfig
from bridge.secrets import FEED_LABELS
from bridge.keys.keylog import KeyLogEntry, KeyLogStats, KeyLogWriter, read_keylog
from bridge.keys.follow import KeyLogFollower


@contextmanager
def _until_signal() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM (restored afterwards)."""
    stop = threading.Event()
    handler = lambda signum, frame: stop.set()  # noqa: E731
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --- gen-cert ---------------------------------------------------------------------------


def run_gen_cert(args: argparse.Namespace) -> int:
    public, secret = generate_certificate(args.name, args.dir, force=args.force)
    print(f"public key (give to the peers' allow-list or --server-key): {public}")
    print(f"secret key (keep here, mode 0600): {secret}")
    return 0


# --- publish ------------------------------------------------------------------------------


def _host() -> str:
    return socket.gethostname()[:255]


class _KeyLogPublisher:
    """Key log entries → records → the publisher, each line once (a re-read file,
    after rotation, is not published twice; the memory of lines is bounded)."""

    def __init__(self, publisher: Publisher, path: str, *, remember: int = 1_000_000) -> None:
        self.publisher = publisher
        self.origin = wire.Origin(host=_host(), trigger="keylog", exe=os.path.abspath(path)[:1024])
        self._seen: OrderedDict[tuple[bytes, str], bytes] = OrderedDict()
        self.remember = remember
        self.records = 0
        #: Lines the feed does not carry (RSA, PMS_CLIENT_RANDOM, *_TRAFFIC_SECRET_N, N > 0).
        self.not_published = 0

    def __call__(self, entries: list[KeyLogEntry]) -> None:
        fresh = []
        for entry in entries:
            if entry.label not in FEED_LABELS:
                self.not_published += 1
                continue
            key = (entry.client_random, entry.label)
            if self._seen.get(key) == entry.secret:
                continue
            self._seen[key] = entry.secret
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
            fresh.append(entry)
        for record in wire.records_from_entries(fresh, self.origin, time.time()):
            self.publisher.publish(record)
            self.records += 1


def run_publish(args: argparse.Namespace) -> int:
    with _until_signal() as stop, publisher_from_args(args) as publisher:
        sink = _KeyLogPublisher(publisher, args.keylog)
        if args.follow:
            follower = KeyLogFollower(args.keylog, sink).start()
        else:
            stats = KeyLogStats()
            try:
                sink(read_keylog(args.keylog, stats))
            except OSError as exc:
                raise BridgeError(f"cannot read key log {args.keylog}: {exc.strerror}") from None
            for warning in stats.warnings:
                say(args, f"warning: {args.keylog}: {warning}")
        endpoint = args.connect or args.bind
        where = (f"to broker {endpoint}" if args.connect else
                 f"on {endpoint} (snapshots on {publisher.snapshot_endpoint})")
        say(args, f"publishing {sink.records} records from {args.keylog} {where}"
                   f"{', following it' if args.follow else ''}; Ctrl-C or SIGTERM to stop")
        if sink.not_published:
            say(args, f"warning: {sink.not_published} lines not published (RSA, PMS_CLIENT_RANDOM or later-epoch "
                       "traffic secrets need the handshake: the feed carries RFC 9850 labels; give this key log "
                       "to the sensor with --keylog)")
        try:
            while not stop.wait(0.5):
                if publisher.failure is not None:
                    raise TransportError(f"the publisher failed: {type(publisher.failure).__name__}")
        finally:
            if args.follow:
                follower.stop()
        say(args, f"published {publisher.stats.published} records (publisher {publisher.publisher_id.hex()[:8]}, "
                   f"last sequence number {publisher.last_seq}); served "
                   f"{publisher.service.stats.records_served if publisher.service else 0} from snapshots")
    return 0


# --- dump -----------------------------------------------------------------------------------


def run_dump(args: argparse.Namespace) -> int:
    client = client_security(args, insecure=args.insecure)
    endpoints = [check_endpoint(e) for e in args.connect]
    config = SubscriberConfig(endpoints=endpoints, snapshots=args.snapshot or None, window=args.window)
    try:
        writer = KeyLogWriter(args.output, append=False, once=True)
    except OSError as exc:
        raise BridgeError(f"cannot write {args.output}: {exc.strerror}") from None
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    try:
        with _until_signal() as stop, Subscriber(config, client=client,
                                                 on_record=lambda record: writer.write(record.keylog_entries()),
                                                 on_failure=warn) as subscriber:
            say(args, f"subscribed to {', '.join(endpoints)}; writing {args.output}")
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                subscriber.poll(0.1)
            say(args, f"{writer.lines} key log lines written; {describe_feed(subscriber)}")
    finally:
        writer.close()
    return 0


# --- broker ---------------------------------------------------------------------------------


def run_broker(args: argparse.Namespace) -> int:
    frontend, backend = check_endpoint(args.frontend), check_endpoint(args.backend)
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
        keys = None
    else:
        if not (args.server_cert and args.allow_publishers and args.allow_subscribers):
            raise TransportError(
                "the broker is the Curve server on both sides: give --server-cert NAME.key_secret, "
                "--allow-publishers DIR and --allow-subscribers DIR, or --insecure for a lab"
            )
        keys = BrokerKeys(
            publishers=load_server(args.server_cert, args.allow_publishers),
            subscribers=load_server(args.server_cert, args.allow_subscribers),
        )
    broker = Broker(BrokerConfig(frontend=frontend, backend=backend, snapshot=args.snapshot, ttl=args.ttl), keys,
                    on_failure=warn)
    try:
        say(args, f"broker: publishers connect to {frontend}, sensors to {backend} "
                   f"(snapshots on {broker.snapshot_endpoint}); Ctrl-C or SIGTERM to stop")
        with _until_signal() as stop:
            broker.run(stop)
        stats = broker.stats
        say(args, f"broker: {stats.records} records and {stats.heartbeats} heartbeats forwarded, "
                   f"{stats.duplicates} duplicates, {stats.malformed} malformed dropped, "
                   f"{broker.service.stats.records_served} served from snapshots")
    finally:
        broker.close()
    return 0


# --- parsers ---------------------------------------------------------------------------------

_SECURITY_NOTE = """\
security:
  The feed carries TLS session secrets. It is encrypted and authenticated with
  CurveZMQ by default: the side that binds holds a server certificate
  (NAME.key_secret) and admits only the public keys (*.key) in its allow-list
  directory; the side that connects needs the server's public key and its own
  certificate. --insecure turns this off, for labs only, and says so loudly.
"""


def add_keys_parser(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser(
        "keys",
        help="the key feed: certificates, publisher, broker, dump to a key log",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Move TLS secrets from harvesters to sensors over ZeroMQ (msgpack records, CurveZMQ). "
        "Records of the last minutes are kept by publishers and brokers; a sensor that starts, restarts "
        "or misses records fetches them, and heartbeats reveal what was lost.",
        epilog=_SECURITY_NOTE,
    )
    commands = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)

    gen = commands.add_parser("gen-cert", help="make a CurveZMQ certificate pair",
                              description="Write DIR/NAME.key (public key) and DIR/NAME.key_secret (secret key, "
                              "mode 0600) in pyzmq's zmq.auth format.")
    gen.add_argument("name", metavar="NAME")
    gen.add_argument("--dir", required=True, metavar="DIR")
    gen.add_argument("--force", action="store_true", help="replace existing files")
    gen.set_defaults(handler=run_gen_cert)

    formatter = argparse.RawDescriptionHelpFormatter
    pub = commands.add_parser(
        "publish", help="publish an RFC 9850 key log (SSLKEYLOGFILE) on the feed", formatter_class=formatter,
        description="Publish every line of an RFC 9850 key log as key feed records (one per client random), "
        "and with --follow every line appended later (tail -f; rotation handled). Runs until Ctrl-C or SIGTERM, "
        "serving snapshots of the last --ttl seconds to sensors that start late.",
        epilog="examples:\n"
        "  tls-bridge keys publish --keylog /run/app/sslkeys.log --follow --bind tcp://0.0.0.0:5555 \\\n"
        "      --server-cert certs/harvester.key_secret --allow certs/sensors/\n"
        "  tls-bridge keys publish --keylog keys.log --connect tcp://broker:5556 \\\n"
        "      --server-key certs/broker.key --client-cert certs/harvester.key_secret\n\n" + _SECURITY_NOTE,
    )
    pub.add_argument("--keylog", required=True, metavar="FILE", help="the key log to publish")
    pub.add_argument("--follow", action="store_true", help="keep publishing lines appended to FILE")
    place = pub.add_mutually_exclusive_group(required=True)
    place.add_argument("--bind", metavar="ENDPOINT", help="bind the feed here (tcp://HOST:PORT or ipc://PATH); "
                       "the snapshot service binds beside it (port + 1, or PATH.snapshot)")
    place.add_argument("--connect", metavar="ENDPOINT", help="connect to a broker's frontend instead")
    pub.add_argument("--server-cert", metavar="FILE", help="with --bind: this publisher's certificate (NAME.key_secret)")
    pub.add_argument("--allow", metavar="DIR", help="with --bind: directory of the public keys (*.key) admitted")
    add_client_security_options(pub)
    pub.add_argument("--snapshot", metavar="ENDPOINT", help="bind the snapshot service here instead")
    pub.add_argument("--ttl", type=float, default=600.0, metavar="SECONDS",
                     help="keep records this long for snapshots and repairs (default: 600)")
    pub.add_argument("--insecure", action="store_true", help="no encryption, no authentication (labs only)")
    pub.add_argument("-q", "--quiet", action="store_true")
    pub.set_defaults(handler=run_publish)

    dump = commands.add_parser(
        "dump", help="write the feed as an RFC 9850 key log (for Wireshark)", formatter_class=formatter,
        description="Subscribe to a publisher or broker, fetch the records of the last --window seconds, and "
        "write every record as RFC 9850 key log lines (each line once) as they arrive. Runs until --timeout "
        "or Ctrl-C/SIGTERM.",
        epilog="example:\n  tls-bridge keys dump --connect tcp://10.0.0.5:5555 --server-key certs/harvester.key \\\n"
        "      --client-cert certs/sensor.key_secret -o sslkeys.log --timeout 60\n\n" + _SECURITY_NOTE,
    )
    dump.add_argument("--connect", required=True, action="append", metavar="ENDPOINT",
                      help="publisher or broker endpoint; may be repeated")
    add_client_security_options(dump)
    dump.add_argument("-o", "--output", required=True, metavar="KEYLOG", help="key log to write ('-' for stdout); mode 0600")
    dump.add_argument("--timeout", type=float, metavar="SECONDS", help="stop after SECONDS (default: run until stopped)")
    dump.add_argument("--window", type=float, default=600.0, metavar="SECONDS",
                      help="on start, fetch the records of the last SECONDS (default: 600)")
    dump.add_argument("--snapshot", action="append", metavar="ENDPOINT",
                      help="snapshot service of each --connect endpoint (default: beside it)")
    dump.add_argument("--insecure", action="store_true", help="no encryption, no authentication (labs only)")
    dump.add_argument("-q", "--quiet", action="store_true")
    dump.set_defaults(handler=run_dump)

    broker = commands.add_parser(
        "broker", help="forward many publishers to many sensors (XSUB/XPUB) with snapshots",
        formatter_class=formatter,
        description="Harvesters connect their publishers to --frontend, sensors subscribe at --backend. Every "
        "message is validated before it is forwarded; records are kept --ttl seconds and served to sensors "
        "by the snapshot service beside --backend.",
        epilog="example:\n  tls-bridge keys broker --frontend tcp://0.0.0.0:5556 --backend tcp://0.0.0.0:5558 \\\n"
        "      --server-cert certs/broker.key_secret --allow-publishers certs/harvesters/ \\\n"
        "      --allow-subscribers certs/sensors/\n\n" + _SECURITY_NOTE,
    )
    broker.add_argument("--frontend", required=True, metavar="ENDPOINT", help="where publishers connect")
    broker.add_argument("--backend", required=True, metavar="ENDPOINT", help="where sensors connect")
    broker.add_argument("--server-cert", metavar="FILE", help="the broker's certificate (NAME.key_secret)")
    broker.add_argument("--allow-publishers", metavar="DIR", help="public keys (*.key) of admitted publishers")
    broker.add_argument("--allow-subscribers", metavar="DIR", help="public keys (*.key) of admitted sensors")
    broker.add_argument("--snapshot", metavar="ENDPOINT", help="bind the snapshot service here instead")
    broker.add_argument("--ttl", type=float, default=600.0, metavar="SECONDS", help="keep records this long (default: 600)")
    broker.add_argument("--insecure", action="store_true", help="no encryption, no authentication (labs only)")
    broker.add_argument("-q", "--quiet", action="store_true")
    broker.set_defaults(handler=run_broker)
