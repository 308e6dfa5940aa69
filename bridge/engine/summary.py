"""What the flow log says of one finished connection: a typed summary, and its
JSON form (:meth:`FlowSummary.to_record`; the field names and order are the flow
log's, see the README)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class DirectionSummary:
    """One direction: the decrypted application data (size and SHA-256, never the
    data; no SHA-256 when the engine computes none, ``EngineSettings.digest``), its
    records, and what reassembly saw."""

    bytes: int
    sha256: str | None
    packets: int
    records: int
    decrypted_records: int
    skipped_records: int
    alerts: int
    key_updates: int
    gap_bytes: int
    retransmitted_bytes: int

    def to_record(self) -> dict[str, object]:
        return {
            "bytes": self.bytes,
            "sha256": self.sha256,
            "packets": self.packets,
            "records": self.records,
            "decrypted_records": self.decrypted_records,
            "skipped_records": self.skipped_records,
            "alerts": self.alerts,
            "key_updates": self.key_updates,
            "gap_bytes": self.gap_bytes,
            "retransmitted_bytes": self.retransmitted_bytes,
        }


@dataclass(frozen=True, slots=True)
class FlowSummary:
    flow_id: int
    ts_start: float
    ts_end: float
    client: str
    server: str
    status: str
    reason: str
    ended_by: str
    handshake_seen: bool
    client_random: str | None
    tls_version: str | None
    cipher_suite: str | None
    sni: str | None
    alpn: str | None
    alpn_offered: list[str]
    resumed: bool
    hello_retry_request: bool
    early_data_offered: bool
    early_data_accepted: bool
    encrypt_then_mac: bool
    extended_master_secret: bool
    server_random: str | None
    session_id: bool
    session_ticket: bool
    session_tickets_issued: int
    key_updates: int
    certificates: list[dict[str, Any]]
    key_origin: dict[str, object] | None
    c2s: DirectionSummary
    s2c: DirectionSummary

    def to_record(self, **annotations: object) -> dict[str, object]:
        """The flow log line; ``annotations`` (an output's, e.g. ``synthetic``) come last."""
        record: dict[str, object] = {
            "flow_id": self.flow_id,
            "ts_start": self.ts_start,
            "ts_end": self.ts_end,
            "client": self.client,
            "server": self.server,
            "status": self.status,
            "reason": self.reason,
            "ended_by": self.ended_by,
            "handshake_seen": self.handshake_seen,
            "client_random": self.client_random,
            "tls_version": self.tls_version,
            "cipher_suite": self.cipher_suite,
            "sni": self.sni,
            "alpn": self.alpn,
            "alpn_offered": list(self.alpn_offered),
            "resumed": self.resumed,
            "hello_retry_request": self.hello_retry_request,
            "early_data": {"offered": self.early_data_offered, "accepted": self.early_data_accepted},
            "encrypt_then_mac": self.encrypt_then_mac,
            "extended_master_secret": self.extended_master_secret,
            "server_random": self.server_random,
            "session_id": self.session_id,
            "session_ticket": self.session_ticket,
            "session_tickets_issued": self.session_tickets_issued,
            "key_updates": self.key_updates,
            "certificates": self.certificates,
            "key_origin": self.key_origin,
            "c2s": self.c2s.to_record(),
            "s2c": self.s2c.to_record(),
        }
        record.update(annotations)
        return record
