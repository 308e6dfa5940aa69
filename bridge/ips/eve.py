"""Suricata's eve.json, as the IPS reads it: alerts that ask for a block.

Pure.  An alert blocks when its rule carries our metadata tag
``tls_bridge_action block`` (see suricata-rules/), or when Suricata itself
reports ``"action": "blocked"`` (a drop/reject rule in IPS mode).  The synthetic
cleartext connection Suricata saw has the original connection's addresses and
ports (unless the bridge rewrote the server port: ``port_map`` maps it back).
"""

from __future__ import annotations

import ipaddress
import json
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


def _time(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except (TypeError, ValueError):
        return 0.0


def block_request(line: str, *, port_map: dict[int, int] | None = None) -> BlockRequest | None:
    """The block an eve line asks for, or None (not an alert, not a blocking one, malformed)."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event_type") != "alert" or event.get("proto") != "TCP":
        return None
    alert = event.get("alert") or {}
    metadata = alert.get("metadata") or {}
    reasons = []
    if "block" in (metadata.get("tls_bridge_action") or []):
        reasons.append("metadata tls_bridge_action block")
    if alert.get("action") == "blocked":
        reasons.append("Suricata action blocked")
    if not reasons:
        return None
    try:
        src, dst = str(ipaddress.ip_address(event["src_ip"])), str(ipaddress.ip_address(event["dest_ip"]))
        sport, dport = int(event["src_port"]), int(event["dest_port"])
    except (KeyError, ValueError, TypeError):
        return None
    ports = port_map or {}
    sport, dport = ports.get(sport, sport), ports.get(dport, dport)
    return BlockRequest(src, sport, dst, dport, int(alert.get("signature_id") or 0), str(alert.get("signature") or ""),
                        _time(str(event.get("timestamp", ""))), tuple(reasons))
