"""``tls-bridge run`` and ``tls-bridge config``."""

from __future__ import annotations

import argparse
import sys

from bridge.sensor.config import load_config, render_defaults


def run_sensor(args: argparse.Namespace) -> int:
    from bridge.sensor.supervisor import Supervisor

    config = load_config(args.config, args.set or [])
    return Supervisor(config).run()


def run_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.file, args.set or [])
    print(f"{args.file}: OK ({config.capture.workers} workers on {', '.join(config.capture.interfaces)}; "
          f"{len(config.keys.feeds)} key feeds, {len(config.keys.keylogs)} key logs; "
          f"injecting on {config.inject.interface or '(none)'})")
    return 0


def run_config_defaults(args: argparse.Namespace) -> int:
    sys.stdout.write(render_defaults())
    return 0


def add_sensor_parsers(subparsers: argparse._SubParsersAction) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    run = subparsers.add_parser(
        "run", help="run the sensor bridge from a configuration file (workers, metrics)", formatter_class=formatter,
        description="Capture mirrored traffic on the configured interfaces with N worker processes (AF_PACKET "
        "fanout by flow hash), take secrets from the key feed and key logs, decrypt, inject the synthetic "
        "cleartext connections for Suricata/Zeek, write the flow log. Workers that die are restarted. Counters: "
        "a Prometheus endpoint, a periodic log line, a live line in a terminal. Needs CAP_NET_RAW (capture and "
        "injection). Every option: 'tls-bridge config defaults'.",
        epilog="examples:\n  tls-bridge run --config /etc/tls-bridge/sensor.toml\n"
        "  tls-bridge run --config sensor.toml --set capture.workers=4 --set inject.interface=tls1",
    )
    run.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override an option (repeatable)")
    run.set_defaults(handler=run_sensor)
    config = subparsers.add_parser("config", help="check a configuration file, or print the documented defaults")
    commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = commands.add_parser("check", help="validate a configuration file (errors name file and line)")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override an option (repeatable)")
    check.set_defaults(handler=run_config_check)
    defaults = commands.add_parser("defaults", help="print every option with its default and documentation")
    defaults.set_defaults(handler=run_config_defaults)
