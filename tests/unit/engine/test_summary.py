"""The flow log line: its fields in the order the README documents, the outputs'
annotations last."""

from __future__ import annotations

import json

from bridge.engine import Engine
from tests.support.fixtures import FIXTURES

FIELDS = ["flow_id", "ts_start", "ts_end", "client", "server", "status", "reason", "ended_by", "handshake_seen",
          "client_random", "tls_version", "cipher_suite", "sni", "alpn", "alpn_offered", "resumed",
          "hello_retry_request", "early_data", "encrypt_then_mac", "extended_master_secret", "server_random",
          "session_id", "session_ticket", "session_tickets_issued", "key_updates", "certificates", "key_origin",
          "c2s", "s2c"]
DIRECTION_FIELDS = ["bytes", "sha256", "packets", "records", "decrypted_records", "skipped_records", "alerts",
                    "key_updates", "gap_bytes", "retransmitted_bytes"]


def _summaries(fixture):  # type: ignore[no-untyped-def]
    finished = []
    engine = Engine(fixture.store(), output=lambda e: finished.append(e) if hasattr(e, "summary") else None)
    engine.run(fixture.frames())
    engine.finish()
    return [e.summary for e in finished]


def test_record_fields_and_order():
    (summary,) = _summaries(FIXTURES[0])
    record = summary.to_record()
    assert list(record) == FIELDS
    assert list(record["c2s"]) == DIRECTION_FIELDS
    assert json.loads(json.dumps(record)) == record
    assert list(summary.to_record(synthetic=None))[-1] == "synthetic"
    assert record["tls_version"] == "TLSv1.3" and record["early_data"] == {"offered": False, "accepted": False}
    assert record["certificates"] and record["certificates"][0]["subject"]


def test_key_updates_are_counted():
    fixture = next(f for f in FIXTURES if f.name == "tls13-keyupdate")
    (summary,) = _summaries(fixture)
    assert summary.key_updates == 1 and summary.status == "decrypted"
