"""Suricata's eve.json, as the IPS reads it: alerts that ask for a block.

Pure.  An alert blocks when its rule carries our metadata tag
``tls_bridge_action block`` (see suricata-rules/), when Suricata itself reports
``"action": "blocked"`` (a reject rule, or a drop rule in IPS mode), or when the
rule is a drop/reject rule: Suricata inspecting the injection interface runs in
IDS mode, where a drop rule's alert says ``"allowed"``, so its action is read
from the rule text in the alert (eve-log alert ``metadata: {rule: {raw: yes}}``) or from the
rule files (:func:`blocking_rules`).  The synthetic
cleartext connection Suricata saw has the original connection's addresses and
ports (unless the bridge rewrote the server port: ``port_map`` maps it back).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class BlockRequest:
    """One alert that asks to cut a connection."""

    src: str
    sport: int
    dst: str
    dport: int
    signature_id: int
    signature: str
    alerted_at: float  # the alerting packet's time (unix seconds)
    reasons: tuple[str, ...] = field(default=())

    @property
    def key(self) -> tuple[str, int, str, int]:
        """The connection, the same whichever direction alerted."""
        a, b = (self.src, self.sport), (self.dst, self.dport)
        return (*min(a, b), *max(a, b))  # type: ignore[return-value]


def _int(value: object, default: int) -> int:
    try:
        return int(value) if value is not None else default  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def _time(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except (TypeError, ValueError):
        return 0.0


BLOCKING_ACTIONS = frozenset({"drop", "reject", "rejectsrc", "rejectdst", "rejectboth"})
_RULE = re.compile(r"^\s*(?P<action>[a-z]+)\s.*?\(.*\)\s*$")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_OPTION = re.compile(r"(?:^|;)\s*(?P<name>sid|gid)\s*:\s*(?P<value>\d+)\s*(?=;)")


def rule_action(rule: str) -> str | None:
    """The action of one rule's text (``drop http any any -> ...``), or None."""
    match = _RULE.match(rule)
    return match["action"] if match else None


def blocking_rules(text: str) -> set[tuple[int, int]]:
    """(gid, sid) of the drop and reject rules in a rules file's text; disabled
    (commented) rules do not count."""
    found = set()
    for line in text.splitlines():
        if rule_action(line) not in BLOCKING_ACTIONS:
            continue
        body = _QUOTED.sub('""', line[line.index("(") + 1:])  # a msg may say "sid:1;"
        options = {m["name"]: int(m["value"]) for m in _OPTION.finditer(body)}
        if "sid" in options:
            found.add((options.get("gid", 1), options["sid"]))
    return found


def block_request(line: str, *, port_map: dict[int, int] | None = None,
                  blocking: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset()) -> BlockRequest | None:
    """The block an eve line asks for, or None (not an alert, not a blocking one, malformed)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event_type") != "alert" or event.get("proto") != "TCP":
        return None
    alert = event.get("alert")
    if not isinstance(alert, dict):
        return None
    metadata = alert.get("metadata")
    tags = metadata.get("tls_bridge_action") if isinstance(metadata, dict) else None
    reasons = []
    if isinstance(tags, list) and "block" in tags:
        reasons.append("metadata tls_bridge_action block")
    if alert.get("action") == "blocked":
        reasons.append("Suricata action blocked")
    action = rule_action(str(alert.get("rule") or ""))
    if action in BLOCKING_ACTIONS:
        reasons.append(f"{action} rule")
    elif (_int(alert.get("gid"), 1), _int(alert.get("signature_id"), 0)) in blocking:
        reasons.append("drop/reject rule in the rule files")
    if not reasons:
        return None
    try:
        src, dst = str(ipaddress.ip_address(event["src_ip"])), str(ipaddress.ip_address(event["dest_ip"]))
        sport, dport = int(event["src_port"]), int(event["dest_port"])
    except (KeyError, ValueError, TypeError):
        return None
    ports = port_map or {}
    sport, dport = ports.get(sport, sport), ports.get(dport, dport)
    return BlockRequest(src, sport, dst, dport, _int(alert.get("signature_id"), 0), str(alert.get("signature") or ""),
                        _time(str(event.get("timestamp", ""))), tuple(reasons))
