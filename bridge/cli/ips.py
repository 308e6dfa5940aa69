"""``tls-bridge ips``: the reactive IPS (:mod:`bridge.ips.service`) from the command line."""

from __future__ import annotations

import argparse

from bridge.ips import service
from bridge.ips.service import IpsSettings


def run_ips(args: argparse.Namespace) -> int:
    return service.serve(IpsSettings(
        eve=args.eve, eve_socket=args.eve_socket, eve_socket_type=args.eve_socket_type,
        interfaces=tuple(args.interface or ()), flows=args.flows, nft_table=args.nft_table, nft_set=args.nft_set,
        nft_timeout=args.nft_timeout, nft=not args.no_nft, resets=not args.no_reset, rules=tuple(args.rules or ()),
        port_map=tuple(args.port_map or ()), from_start=args.from_start, log=args.log))


def add_ips_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ips", help="cut the original encrypted connections Suricata's verdicts on the decrypted copy ask to block",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(service.__doc__ or "").split("\n\n", 1)[1].split("\n\nThe command line")[0],
        epilog="example (on the gateway the encrypted traffic crosses):\n"
        "  tls-bridge ips --eve /var/log/suricata/eve-tls-bridge.json --interface eth0 --interface eth1 \\\n"
        "      --nft-table 'inet tls_bridge' --nft-set blocked --log /var/log/tls-bridge/blocked.jsonl",
    )
    source = parser.add_mutually_exclusive_group(required=True)
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
    parser.add_argument("--log", metavar="FILE", help="one JSON line per cut connection (default: stdout)")
    parser.set_defaults(handler=run_ips)
