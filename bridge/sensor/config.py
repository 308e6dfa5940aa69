"""The sensor bridge's configuration: one TOML file, every option with its default.

The schema is declared once, below, as dataclasses whose fields carry their
documentation; :func:`render_defaults` prints the documented default file
(``tls-bridge config defaults``, and ``deploy/sensor.toml``), :func:`load_config`
reads a file, applies ``--set section.key=value`` overrides and validates —
errors name the file and line (``sensor.toml:12: [capture] workers: expected an
integer from 1 to 64, got "two"``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bridge.engine.decryptor import budget_problem
from bridge.engine.settings import EngineSettings
from bridge.errors import BridgeError
from bridge.options import check, default_of, option
from bridge.outputs.flowlog import FlowLogSettings


class ConfigError(BridgeError):
    """The configuration is invalid; ``problems`` lists each with its place."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass
class CaptureConfig:
    """Where the mirrored TLS traffic comes from."""

    interfaces: list[str] = option([], "AF_PACKET capture interfaces (the SPAN/TAP ports); at least one")
    workers: int = option(1, "worker processes; packets are spread by flow (PACKET_FANOUT_HASH, both "
                          "directions of a connection to the same worker)", low=1, high=64)
    buffer_mb: int = option(64, "capture ring per worker socket (TPACKET_V3, kernel memory taken when the "
                            "worker starts; the receive buffer if no ring can be set up), MiB", low=1, high=4096)
    snaplen: int = option(262144, "bytes kept per packet", low=1514, high=262144)


@dataclass
class KeysConfig:
    """Where the TLS secrets come from: key feed endpoints and/or key log files."""

    feeds: list[str] = option([], "key feed endpoints (tcp://HOST:PORT, ipc://PATH) of harvesters or brokers")
    server_key: str = option("", "the publisher's or broker's public key (NAME.key)")
    client_cert: str = option("", "this sensor's certificate (NAME.key_secret, mode 0600)")
    insecure: bool = option(False, "subscribe without CurveZMQ (labs only: secrets cross the network in clear)")
    window: float = option(600.0, "history fetched from the feed on start, seconds", low=0)
    ttl: float = option(600.0, "feed secrets unused by a connection are dropped after this long, seconds", low=1)
    request: bool = option(True, "ask the feed's harvesters for the secrets of each new connection not in the store "
                                 "(a harvester that does not watch the traffic itself searches on request)")
    keylogs: list[str] = option([], "RFC 9850 key log files (SSLKEYLOGFILE), followed as they grow")


@dataclass
class InjectConfig:
    """The synthetic cleartext connections for Suricata and Zeek."""

    interface: str = option("tls0", "injection interface ('' for none): a dummy interface in deployment "
                            "(deploy/create-injection-interface.sh)")
    pcap: str = option("", "also write the synthetic frames to this pcap file ('' for none; one per worker: "
                       "NAME.WORKER.pcap)")
    mtu: int = option(1500, "IP MTU of the synthetic segments", low=68, high=65535)
    mark_mac: str = option("02:00:00:00:00:01", "source MAC of client-side synthetic frames (a marker; the "
                           "server side uses the next address)")
    vlan: int = option(0, "802.1Q VLAN id tag on synthetic frames (0: none)", low=0, high=4094)
    server_port: int = option(0, "rewrite the server port of synthetic connections (0: keep)", low=0, high=65535)


@dataclass
class OutputConfig(FlowLogSettings):
    """Logs."""

    flows: str = option("/var/log/tls-bridge/flows.jsonl", "the flow log: one JSON object per connection "
                        "(appended by every worker)")


@dataclass
class MetricsConfig:
    """Counters."""

    listen: str = option("127.0.0.1:9814", "Prometheus text endpoint, HOST:PORT ('' for none): /metrics")
    log_interval: float = option(60.0, "seconds between counter lines on stderr (0: never)", low=0)


@dataclass
class Config:
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    decrypt: EngineSettings = field(default_factory=EngineSettings)
    inject: InjectConfig = field(default_factory=InjectConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {section.name: dict(vars(getattr(self, section.name))) for section in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Config:
        config = cls()
        for section, values in data.items():
            for key, value in values.items():
                setattr(getattr(config, section), key, value)
        return config


SECTIONS = {f.name: f.default_factory for f in fields(Config)}  # type: ignore[misc]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_defaults() -> str:
    """The documented configuration file with every option at its default."""
    lines = ["# tls-ids-bridge sensor configuration (tls-bridge run --config FILE)",
             "# Every option, at its default. Override one on the command line with",
             "# --set section.key=value; check a file with 'tls-bridge config check FILE'.", ""]
    for section, factory in SECTIONS.items():
        instance = factory()
        lines.append(f"[{section}]")
        lines.append(f"# {type(instance).__doc__}")
        for spec in fields(instance):
            lines.append(f"# {spec.metadata['doc']}")
            lines.append(f"{spec.name} = {_toml_value(default_of(spec))}")
        lines.append("")
    return "\n".join(lines)


# --- validation -------------------------------------------------------------------------------


def _line_numbers(text: str) -> dict[tuple[str, str], int]:
    """(section, key) → line, for messages (tomllib keeps no positions)."""
    places: dict[tuple[str, str], int] = {}
    section = ""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([A-Za-z0-9_.-]+)\s*\]", stripped)
        if header:
            section = header.group(1)
            places[(section, "")] = number
            continue
        key = re.match(r'^"?([A-Za-z0-9_-]+)"?\s*=', stripped)
        if key and section:
            places[(section, key.group(1))] = number
    return places


def _parse_override(text: str) -> tuple[str, str, Any]:
    match = re.fullmatch(r"([A-Za-z_]+)\.([A-Za-z_]+)=(.*)", text.strip(), re.DOTALL)
    if not match:
        raise ConfigError([f"--set {text!r}: expected section.key=value"])
    section, key, raw = match.groups()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word: a string
    return section, key, value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:  # type: ignore[assignment]
    """Read, override, validate; raises :class:`ConfigError` with every problem found."""
    source = str(path) if path is not None else "<defaults>"
    text = ""
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{source}: not UTF-8 text"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        number = found.group(1) if found else str(max(1, text.count("\n") + (not text.endswith("\n"))))
        raise ConfigError([f"{source}:{number}: {str(exc).split(' (at')[0]}"]) from None
    places = _line_numbers(text)
    problems: list[str] = []
    for text_override in overrides:
        section, key, value = _parse_override(text_override)
        data.setdefault(section, {})[key] = value
        places[(section, key)] = -1
    config = Config()

    def where(section: str, key: str = "") -> str:
        line = places.get((section, key), places.get((section, ""), 0))
        return "--set" if line == -1 else f"{source}:{line}" if line else source

    for section, values in data.items():
        factory = SECTIONS.get(section)
        if factory is None:
            problems.append(f"{where(section)}: unknown section [{section}] (sections: {', '.join(SECTIONS)})")
            continue
        if not isinstance(values, dict):
            problems.append(f"{where(section)}: {section} must be a [section]")
            continue
        specs = {spec.name: spec for spec in fields(factory())}
        for key, value in values.items():
            spec = specs.get(key)
            if spec is None:
                problems.append(f"{where(section, key)}: [{section}] has no option {key!r} "
                                f"(options: {', '.join(specs)})")
                continue
            converted, error = check(spec, value)
            if error:
                problems.append(f"{where(section, key)}: [{section}] {key}: {error}")
            else:
                setattr(getattr(config, section), key, converted)
    problems += _semantic(config, where)
    if problems:
        raise ConfigError(problems)
    return config


def _semantic(config: Config, where) -> list[str]:  # type: ignore[no-untyped-def]
    problems = []
    if not config.capture.interfaces:
        problems.append(f"{where('capture', 'interfaces')}: [capture] interfaces: name at least one interface")
    if not config.keys.feeds and not config.keys.keylogs:
        problems.append(f"{where('keys')}: [keys]: no source of secrets: give feeds and/or keylogs")
    if config.keys.feeds and not config.keys.insecure and not (config.keys.server_key and config.keys.client_cert):
        problems.append(f"{where('keys', 'feeds')}: [keys] feeds need server_key and client_cert "
                        "(or insecure = true for a lab)")
    for endpoint in config.keys.feeds:
        if not re.match(r"^(tcp://[^:]+:\d+|ipc://.+|inproc://.+)$", endpoint):
            problems.append(f"{where('keys', 'feeds')}: [keys] feeds: {endpoint!r} is not tcp://HOST:PORT or ipc://PATH")
    if not re.fullmatch(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}", config.inject.mark_mac):
        problems.append(f"{where('inject', 'mark_mac')}: [inject] mark_mac: {config.inject.mark_mac!r} is not a MAC")
    if config.metrics.listen and not re.fullmatch(r"[^\s]*:\d+", config.metrics.listen):
        problems.append(f"{where('metrics', 'listen')}: [metrics] listen: expected HOST:PORT")
    if not config.output.flows:
        problems.append(f"{where('output', 'flows')}: [output] flows: a path is needed")
    budget = budget_problem(config.decrypt, rings=len(config.capture.interfaces) * (config.capture.buffer_mb << 20))
    if budget is not None:
        problems.append(f"{where('decrypt', 'memory_limit')}: [decrypt] {budget}")
    return problems
