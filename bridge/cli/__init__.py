"""The ``tls-bridge`` command: one module per command family parses its
arguments and wires the product's parts (:mod:`bridge.cli.decrypt`, ...);
nothing here is needed by the service or the tests."""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
from pathlib import Path

import importlib

from bridge import __version__
from bridge.errors import BridgeError

#: Each command's module and the function that adds its parser, in the order of the help.
#: Only the module of the command being run is imported (with what it needs): the
#: others' imports (the key feed, the harvesters, the IPS) cost a command that does not
#: use them a fifth of a second at every start.
_COMMANDS = {
    "run": ("bridge.cli.run", "add_sensor_parsers"),
    "config": ("bridge.cli.run", "add_sensor_parsers"),
    "decrypt": ("bridge.cli.decrypt", "add_decrypt_parser"),
    "keys": ("bridge.cli.keys", "add_keys_parser"),
    "harvest": ("bridge.cli.harvest", "add_harvest_parser"),
    "ips": ("bridge.cli.ips", "add_ips_parser"),
    "profile": ("bridge.cli.harvest", "add_profile_parser"),
}


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
    parser.add_argument("--workdir", default=str(Path(__file__).resolve().parents[2] / "build" / "demo"),
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


def _import_command(module: str):  # type: ignore[no-untyped-def]
    """A command's module, imported with the cyclic garbage collector off; what the
    import made is then frozen (:func:`gc.freeze`).

    Importing ``decrypt`` makes some 19,000 objects (modules, classes, functions) that
    live as long as the process, and next to no garbage. With the collector on, about
    40 collections walked them while importing, and every later full collection,
    the one at exit included, walked them again: about 4 % of ``decrypt -r`` on a
    200 MB capture (``perf``), all of it at start and exit. The price: the few
    hundred objects in reference cycles that importing leaves as garbage (those 40
    collections found 256) stay frozen, some tens of KB for the process's life.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command``, only that command's parser (the others'
    modules are not imported)."""
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
    adders = [_COMMANDS[command]] if command in _COMMANDS else list(dict.fromkeys(_COMMANDS.values()))
    for module, function in adders:
        getattr(_import_command(module), function)(subparsers)
    if command not in _COMMANDS:
        _demo_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except BridgeError as exc:
        print(f"tls-bridge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130

