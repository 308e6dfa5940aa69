"""The ``tls-bridge`` command."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from bridge import __version__
from bridge.errors import BridgeError
from bridge.harvest.commands import add_harvest_parser, add_profile_parser
from bridge.keyfeed.commands import add_client_security_options, add_keys_parser
from bridge.ips.commands import add_ips_parser
from bridge.sensor.commands import add_sensor_parsers


def _decrypt_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decrypt",
        help="decrypt the TLS connections of a capture or a live interface",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(
            """\
            Reassemble every TCP connection of a capture file (-r) or a live
            interface (-i), decrypt its TLS 1.2/1.3 records with the secrets of an
            RFC 9850 key log (--keylog, the SSLKEYLOGFILE format), and write one
            JSON object per connection to the flow log (--flows).

            Every record is authenticated before its plaintext is used; a wrong
            secret is reported as status "wrong_key", never emitted as garbage.
            Records whose secrets have not arrived yet wait (bounded, at most
            --key-wait seconds of capture time).

            Flow log fields: flow_id, client, server ("ip:port", "[v6]:port"),
            status (decrypted, no_keys, wrong_key, gap, not_tls, unsupported,
            partial, no_handshake), reason, tls_version, cipher_suite, sni, alpn,
            resumed, key_updates, certificates, and per direction c2s/s2c
            {bytes, sha256, records, ...} over the decrypted application data.
            """
        ),
        epilog=textwrap.dedent(
            """\
            examples:
              tls-bridge decrypt -r https.pcapng --keylog sslkeys.log --flows -
              tls-bridge decrypt -i eth1 --keylog /run/app/sslkeys.log --flows flows.jsonl
              tls-bridge decrypt -i eth1 --keys tcp://harvester:5555 --server-key certs/harvester.key \
                  --client-cert certs/sensor.key_secret --inject tls0 --flows flows.jsonl

            exit status:
              0  the input was read (connections that could not be decrypted are
                 reported in the flow log, not as an error)
              1  unusable input: unreadable or malformed capture, unreadable key log
              2  bad command line
            """
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-r", "--read", metavar="CAPTURE", help="read packets from a pcap/pcapng file ('-' for stdin)")
    source.add_argument("-i", "--interface", metavar="IFACE", help="capture live from IFACE (AF_PACKET; needs CAP_NET_RAW)")
    parser.add_argument("--keylog", metavar="KEYLOG", action="append", default=[],
                        help="RFC 9850 key log file (SSLKEYLOGFILE format); may be repeated")
    parser.add_argument("--flows", metavar="FILE", help="write the flow log (JSON lines) to FILE, '-' for stdout")
    feed = parser.add_argument_group(
        "key feed",
        "Secrets from harvesters over ZeroMQ (see 'tls-bridge keys --help'), alongside or instead of --keylog. "
        "On start the records of the last --keys-window seconds are fetched; with -r the file is read once "
        "they are in, and at its end connections still waiting get --keys-timeout seconds for their secrets.",
    )
    feed.add_argument("--keys", metavar="ENDPOINT", action="append", default=[],
                      help="subscribe to a publisher or broker (tcp://HOST:PORT, ipc://PATH); may be repeated")
    add_client_security_options(feed)
    feed.add_argument("--keys-window", metavar="SECONDS", type=float, default=600.0,
                      help="history fetched on start (default: 600)")
    feed.add_argument("--keys-ttl", metavar="SECONDS", type=float, default=600.0,
                      help="feed secrets not used by a connection are dropped after this long (default: 600)")
    feed.add_argument("--keys-timeout", metavar="SECONDS", type=float, default=10.0,
                      help="how long to wait for the feed's snapshot, and with -r for late secrets (default: 10)")
    feed.add_argument("--keys-insecure", action="store_true",
                      help="subscribe without CurveZMQ (labs only: secrets cross the network in clear)")
    feed.add_argument("--no-key-requests", dest="key_requests", action="store_false",
                      help="do not ask the feed's harvesters for the secrets of new connections (by default, "
                           "when a ClientHello is seen and no secrets for it are here, its client random and "
                           "endpoints are sent, so a harvester that does not watch the traffic itself searches "
                           "for it; and once more if the connection ends before its secrets came)")
    reinject = parser.add_argument_group(
        "re-injection",
        "Every decrypted connection is re-emitted as a synthetic cleartext TCP connection "
        "(handshake, every segment ACKed, FIN/RST as the original ended) for Suricata/Zeek. "
        "Undecryptable connections are not emitted; the flow log's 'synthetic' field names "
        "the synthetic connection.",
    )
    reinject.add_argument("-w", "--write", metavar="FILE", help="write synthetic cleartext frames to a pcap FILE")
    reinject.add_argument("--inject", metavar="IFACE",
                          help="send synthetic frames on IFACE (deployment default: a dummy interface, "
                               "'ip link add tls0 type dummy'; any interface works)")
    reinject.add_argument("--pcap-over-ip", metavar="HOST:PORT",
                          help="serve synthetic frames as PCAP-over-IP (pcap header, then records) to TCP clients")
    reinject.add_argument("--mtu", type=int, default=1500, help="IP MTU of the synthetic segments (default: 1500; jumbo allowed)")
    reinject.add_argument("--server-port", type=int, metavar="PORT", help="rewrite the server port (e.g. 443 to 80)")
    reinject.add_argument("--mark-mac", metavar="MAC", default="02:00:00:00:00:01",
                          help="source MAC of client-side synthetic frames, a marker (default: 02:00:00:00:00:01, "
                               "locally administered; server-side frames use the next address)")
    reinject.add_argument("--vlan", type=int, metavar="ID", help="tag synthetic frames with this 802.1Q VLAN id (a marker)")
    parser.add_argument("--plaintext-dir", metavar="DIR",
                        help="write each connection's decrypted data to DIR/<flow_id>.c2s and .s2c")
    parser.add_argument("--key-wait", metavar="SECONDS", type=float, default=30.0,
                        help="how long records wait for their secrets (capture time; default: 30)")
    parser.add_argument("--max-flows", metavar="N", type=int, default=200_000,
                        help="connections tracked at once; the least recently active is evicted (default: 200000)")
    parser.add_argument("--idle-timeout", metavar="SECONDS", type=float, default=300.0,
                        help="a connection with no packet for this long is finished (default: 300)")
    parser.add_argument("-c", "--count", metavar="N", type=int, help="stop after N packets")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    parser.set_defaults(handler=_run_decrypt)


def _run_decrypt(args: argparse.Namespace) -> int:
    from bridge.decrypt_command import run_decrypt

    return run_decrypt(args)


def _demo_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole sensor path on this machine and show what Suricata saw inside TLS",
        description="In a private network namespace: nginx serves HTTPS; the process harvester reads each "
        "connection's secrets out of nginx's memory (uprobes) and publishes them on the CurveZMQ key feed; "
        "'tls-bridge decrypt -i lo --keys ...' decrypts live and injects the cleartext into tls0; Suricata 7 "
        "inspects tls0 with suricata-rules/. curl fetches URLs over TLS 1.3 and 1.2; the demo prints what "
        "Suricata saw inside the TLS. Needs root. With --vm, the same from a virtual machine: a Linux guest "
        "boots under QEMU and serves HTTPS; 'tls-bridge harvest vm' reads its secrets out of the guest's memory "
        "from the host (nothing in the guest) and the guest's traffic is decrypted on its tap.",
    )
    parser.add_argument("--workdir", default=str(Path(__file__).resolve().parent.parent / "build" / "demo"),
                        help="where logs and captures go (default: build/demo in the checkout)")
    parser.add_argument("--vm", action="store_true",
                        help="harvest from a VM: boot the test guest (QEMU TCG; its image is built on the first run, "
                             "then cached), serve HTTPS inside it, harvest from the host (about a minute)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="with --vm: where the guest image is cached (default: $XDG_CACHE_HOME/tls-bridge or "
                             "~/.cache/tls-bridge); rebuilt when what goes into it changes")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    if args.vm:
        from bridge.demo_vm import run_demo_vm

        return run_demo_vm(args)
    from bridge.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tls-bridge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent(
            """\
            tls-ids-bridge: let Suricata and Zeek see inside TLS without a proxy.
            Session secrets harvested from memory (or any SSLKEYLOGFILE) decrypt
            mirrored traffic; the plaintext is re-injected as cleartext TCP.
            """
        ),
        epilog="Run 'tls-bridge COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"tls-bridge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_sensor_parsers(subparsers)
    _decrypt_parser(subparsers)
    add_keys_parser(subparsers)
    add_harvest_parser(subparsers)
    add_ips_parser(subparsers)
    add_profile_parser(subparsers)
    _demo_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except BridgeError as exc:
        print(f"tls-bridge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
