"""``tls-bridge ips``: the reactive IPS (:mod:`bridge.ips.service`) and, with ``--inline``,
the inline IPS (:mod:`bridge.ips.inline_service`) from the command line."""

from __future__ import annotations

import argparse
import sys

from bridge.cli.common import add_client_security_options
from bridge.engine import EngineSettings
from bridge.errors import BridgeError
from bridge.ips import service
from bridge.ips.inline import POLICIES, InlineSettings
from bridge.ips.service import IpsSettings
from bridge.options import add_arguments, from_arguments


def _mac(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise BridgeError(f"--mark-mac {text!r}: expected six hex octets, e.g. 02:00:00:00:00:01")
    return bytes.fromhex("".join(parts))


def run_inline(args: argparse.Namespace) -> int:
    from bridge.ips import inline_service

    missing = [flag for flag, value in (("-q/--queue-num", args.queue_num), ("--suricata-in", args.suricata_in),
                                        ("--suricata-out", args.suricata_out)) if value is None]
    if missing:
        print(f"tls-bridge: error: ips --inline needs {', '.join(missing)}", file=sys.stderr)
        return 2
    if not args.keylog and not args.keys:
        print("tls-bridge: error: ips --inline needs secrets: --keylog FILE or --keys ENDPOINT", file=sys.stderr)
        return 2
    try:
        source = _mac(args.mark_mac)
        inline = InlineSettings(
            hold_budget=args.hold_budget, verdict_timeout=args.verdict_timeout,
            keys_policy=args.missing_keys_policy or args.exception_policy,
            verdict_policy=args.verdict_policy or args.exception_policy,
            memcap_policy=args.memcap_policy or args.exception_policy,
            decrypt_policy=args.decrypt_error_policy or args.exception_policy,
            flow_memcap=args.flow_memcap, memcap=args.memcap, resets=not args.no_reset,
            verdict_retries=args.verdict_retries)
        return inline_service.serve(inline_service.InlineServiceSettings(
            queue=args.queue_num, suricata_in=args.suricata_in, suricata_out=args.suricata_out,
            keylogs=tuple(args.keylog), feeds=tuple(args.keys), server_key=args.server_key or "",
            client_cert=args.client_cert or "", keys_insecure=args.keys_insecure, keys_window=args.keys_window,
            keys_ttl=args.keys_ttl, keys_timeout=args.keys_timeout, key_requests=args.key_requests,
            flows=args.flows, log=args.log, log_releases=args.log_releases, metrics=args.metrics,
            queue_max_len=args.queue_maxlen, queue_gso=args.queue_gso, inline=inline, engine=from_arguments(EngineSettings, args),
            source_mac=source, server_mac=source[:5] + bytes([(source[5] + 1) & 0xFF])))
    except BridgeError as exc:
        print(f"tls-bridge: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"tls-bridge: error: {exc.filename or 'ips --inline'}: {exc.strerror}", file=sys.stderr)
        return 1


def run_ips(args: argparse.Namespace) -> int:
    if args.inline:
        return run_inline(args)
    if not args.eve and not args.eve_socket:
        print("tls-bridge: error: ips needs --eve FILE or --eve-socket PATH (or --inline)", file=sys.stderr)
        return 2
    return service.serve(IpsSettings(
        eve=args.eve, eve_socket=args.eve_socket, eve_socket_type=args.eve_socket_type,
        interfaces=tuple(args.interface or ()), flows=args.flows, nft_table=args.nft_table, nft_set=args.nft_set,
        nft_timeout=args.nft_timeout, nft=not args.no_nft, resets=not args.no_reset, rules=tuple(args.rules or ()),
        port_map=tuple(args.port_map or ()), from_start=args.from_start, log=args.log))


INLINE_HELP = """\
inline mode (--inline):
  The gateway forwards; iptables' NFQUEUE target queues the monitored servers'
  traffic to this process.  Per TLS record, the segment carrying its last byte is
  held (the segments before it, and handshake records, pass at once; later
  segments of the same direction wait behind it); the record is decrypted with the
  secrets of --keys/--keylog and its plaintext sent, as synthetic cleartext TCP, on
  --suricata-in to a Suricata 7 in af-packet IPS mode (copy-mode: ips; the overlay
  deploy/suricata/tls-bridge-inline.yaml, the veths made by
  deploy/create-inline-interfaces.sh).  What Suricata passes comes back on
  --suricata-out and the held packets are released; what a drop or reject rule
  matches does not (a segment missing behind its probe is sent again, up to
  --verdict-retries times, as it may have been lost in a full ring), and the held
  packets are dropped, both ends get a RST and the connection's later packets are
  dropped.  Secrets missing after --hold-budget,
  no verdict within --verdict-timeout, secrets that do not decrypt (wrong_key), or
  held bytes over --flow-memcap/--memcap (and the kernel's queue full) follow their
  policy: pass-flow (released; the connection is not inspected any
  more, "uninspected" in the flow log) or drop-flow (cut).  Connections that are
  not TLS, or started before this process, pass untouched.

  Flow log (--flows): the engine's line plus "ips": verdict (passed, dropped,
  uninspected, unmonitored), reason, policies, held/released/dropped packets,
  records passed/dropped, max_hold_ms.  --log: cuts and policies (and with
  --log-releases every release with its verdicts).

exit status:
  0  stopped by SIGINT/SIGTERM;  1  the queue, an interface or the key sources
  could not be opened;  2  bad command line
"""


def add_ips_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ips", help="cut the original encrypted connections Suricata's verdicts on the decrypted copy ask to block",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(service.__doc__ or "").split("\n\n", 1)[1].split("\n\nThe command line")[0],
        epilog="examples (on the gateway the encrypted traffic crosses):\n"
        "  tls-bridge ips --eve /var/log/suricata/eve-tls-bridge.json --interface eth0 --interface eth1 \\\n"
        "      --nft-table 'inet tls_bridge' --nft-set blocked --log /var/log/tls-bridge/blocked.jsonl\n"
        "  # inline: iptables -A FORWARD -p tcp -d 10.0.2.2 --dport 443 -j NFQUEUE --queue-num 13\n"
        "  #         iptables -A FORWARD -p tcp -s 10.0.2.2 --sport 443 -j NFQUEUE --queue-num 13\n"
        "  tls-bridge ips --inline -q 13 --suricata-in ipsin0 --suricata-out ipsout0 \\\n"
        "      --keys tcp://harvester:5555 --server-key certs/harvester.key --client-cert certs/gw.key_secret \\\n"
        "      --exception-policy drop-flow --flows /var/log/tls-bridge/flows.jsonl\n\n"
        + INLINE_HELP,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--eve", metavar="FILE", help="Suricata's eve.json for the injection interface (followed "
                        "like tail -F: rotation and truncation are handled)")
    source.add_argument("--eve-socket", metavar="PATH", help="create a unix socket at PATH for an eve-log output "
                        "with filetype unix_stream (or unix_dgram, see --eve-socket-type) and filename PATH")
    parser.add_argument("--eve-socket-type", choices=("stream", "dgram"), default="stream",
                        help="unix_stream (default) or unix_dgram, as in Suricata's eve-log filetype")
    parser.add_argument("--interface", action="append", metavar="IFACE",
                        help="a gateway interface the encrypted connections cross (sequence numbers for the resets)")
    parser.add_argument("--flows", metavar="FILE", help="the bridge's flow log: when a cut connection's line is "
                        "written, its TLS facts (SNI, version, cipher, key origin) are logged beside the cut")
    parser.add_argument("--nft-table", default="inet tls_bridge", metavar="'FAMILY NAME'")
    parser.add_argument("--nft-set", default="blocked", metavar="NAME", help="sets NAME4 and NAME6 (default: blocked)")
    parser.add_argument("--nft-timeout", default="1h", metavar="DURATION", help="how long a cut connection stays "
                        "dropped (nftables syntax; default: 1h)")
    parser.add_argument("--no-nft", action="store_true", help="resets only")
    parser.add_argument("--no-reset", action="store_true", help="nftables only")
    parser.add_argument("--rules", action="append", metavar="FILE",
                        help="a rules file Suricata loads: its drop and reject rules block (needed unless the eve "
                        "alerts carry the rule text, eve-log alert metadata: {rule: {raw: yes}})")
    parser.add_argument("--port-map", action="append", metavar="SYNTHETIC=ORIGINAL",
                        help="the bridge rewrote the server port (--server-port): map it back")
    parser.add_argument("--from-start", action="store_true", help="act on the alerts already in the eve file too")
    parser.add_argument("--log", metavar="FILE", help="one JSON line per cut connection (default: stdout); inline: "
                        "cuts and policies decided (default: none)")
    inline = parser.add_argument_group(
        "inline mode", "The encrypted packets of monitored connections wait in the kernel's queue (iptables NFQUEUE) "
        "until Suricata, in IPS mode, has judged their plaintext.")
    inline.add_argument("--inline", action="store_true", help="hold packets from the queue until Suricata's verdict "
                        "(instead of following eve alerts)")
    inline.add_argument("-q", "--queue-num", type=int, metavar="N", help="the NFQUEUE queue number, as in iptables' "
                        "--queue-num and Suricata's -q")
    inline.add_argument("--queue-maxlen", type=int, default=4096, metavar="N",
                        help="packets the kernel keeps waiting for us (default: 4096; over it: dropped, or accepted "
                        "with --memcap-policy pass-flow)")
    inline.add_argument("--no-queue-gso", dest="queue_gso", action="store_false",
                        help="have the kernel cut segmentation-offload super-packets into MTU-sized packets before "
                        "queueing them (by default they are queued whole, NFQA_CFG_F_GSO: up to 64 KiB, one verdict "
                        "for up to ~45 segments; several times the throughput)")
    inline.add_argument("--suricata-in", metavar="IFACE", help="where plaintext goes: the veth whose peer is Suricata's "
                        "af-packet interface (copy-mode: ips)")
    inline.add_argument("--suricata-out", metavar="IFACE", help="where what Suricata passed comes back: the veth whose "
                        "peer is that interface's copy-iface")
    inline.add_argument("--keylog", action="append", default=[], metavar="FILE",
                        help="RFC 9850 key log, followed; may be repeated")
    inline.add_argument("--keys", action="append", default=[], metavar="ENDPOINT",
                        help="the key feed (a harvester or broker), as for decrypt; may be repeated")
    add_client_security_options(inline)
    inline.add_argument("--keys-window", type=float, default=600.0, metavar="SECONDS", help=argparse.SUPPRESS)
    inline.add_argument("--keys-ttl", type=float, default=600.0, metavar="SECONDS", help=argparse.SUPPRESS)
    inline.add_argument("--keys-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to wait for the feed's snapshot on start (default: 10)")
    inline.add_argument("--keys-insecure", action="store_true", help="the key feed without CurveZMQ (labs only)")
    inline.add_argument("--no-key-requests", dest="key_requests", action="store_false",
                        help="do not ask the feed's harvesters for the secrets of new connections")
    inline.add_argument("--exception-policy", choices=POLICIES, default="drop-flow",
                        help="what a connection that cannot be judged in time gets, as Suricata's exception "
                        "policies: pass-flow (released, not inspected any more: fail-open) or drop-flow (dropped "
                        "and cut: fail-closed; the default)")
    inline.add_argument("--missing-keys-policy", choices=POLICIES, help="its secrets did not come within "
                        "--hold-budget (default: --exception-policy)")
    inline.add_argument("--verdict-policy", choices=POLICIES, help="Suricata did not judge within --verdict-timeout "
                        "(default: --exception-policy)")
    inline.add_argument("--memcap-policy", choices=POLICIES, help="over --flow-memcap or --memcap, or the kernel's "
                        "queue full (default: --exception-policy)")
    inline.add_argument("--decrypt-error-policy", choices=POLICIES, help="its secrets came but a record failed to "
                        "decrypt (wrong_key, a record the engine cannot read, an unsupported cipher): it cannot be "
                        "judged (default: --exception-policy)")
    inline.add_argument("--hold-budget", type=float, default=InlineSettings.hold_budget, metavar="SECONDS",
                        help="how long held packets wait for their connection's secrets (default: %(default)s)")
    inline.add_argument("--verdict-timeout", type=float, default=InlineSettings.verdict_timeout, metavar="SECONDS",
                        help="how long Suricata has to judge (default: %(default)s)")
    inline.add_argument("--verdict-retries", type=int, default=InlineSettings.verdict_retries, metavar="N",
                        help="plaintext missing when its probe came back is sent to Suricata again, up to N times, "
                        "before it counts as dropped: a frame lost in a full ring or queue is not a verdict, and "
                        "what a drop rule matched stays missing, as Suricata drops the whole flow (default: "
                        "%(default)s)")
    inline.add_argument("--flow-memcap", type=int, default=InlineSettings.flow_memcap, metavar="BYTES",
                        help="bytes of packets held per connection (default: %(default)s)")
    inline.add_argument("--memcap", type=int, default=InlineSettings.memcap, metavar="BYTES",
                        help="bytes of packets held in all (default: %(default)s)")
    inline.add_argument("--mark-mac", default="02:00:00:00:00:01", metavar="MAC",
                        help="source MAC of client-side synthetic frames (server side: the next address)")
    inline.add_argument("--log-releases", action="store_true",
                        help="also log every release, with the verdicts that allowed it (audit; verbose)")
    inline.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics (held, released, dropped, "
                        "fail-open, hold time histogram)")
    tuning = parser.add_argument_group("decryptor (inline)", "Bounds and timers of the engine, as for decrypt.")
    add_arguments(tuning, EngineSettings)
    parser.set_defaults(handler=run_ips)
