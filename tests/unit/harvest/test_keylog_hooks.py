"""Key log lines from hooked key-log functions → one connection's secrets."""

from __future__ import annotations

from bridge.harvest.keylog_hooks import KeyLogAssembler, KeyLogLine, label_from, secret_from
from bridge.secrets import TLS12, TLS13

RANDOM = bytes(range(32))
OTHER = bytes(range(1, 33))


def _line(label: str, random: bytes = RANDOM, fill: int = 1, size: int = 32) -> KeyLogLine:
    return KeyLogLine(label, random, bytes([fill]) * size)


def test_tls13_is_ready_with_both_handshake_and_both_application_secrets():
    assembler = KeyLogAssembler()
    for label in ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0"):
        assert assembler.add(_line(label)) is None
    secrets = assembler.add(_line("SERVER_TRAFFIC_SECRET_0", fill=9))
    assert secrets is not None and secrets.complete and secrets.tls_version == TLS13
    assert secrets.client_random == RANDOM and secrets.get("SERVER_TRAFFIC_SECRET_0") == b"\x09" * 32
    later = assembler.add(_line("EXPORTER_SECRET"))  # GnuTLS logs it last: the record again, with it
    assert later is not None and "EXPORTER_SECRET" in later.secrets and len(later.secrets) == 5


def test_tls12_master_secret_alone_is_ready():
    secrets = KeyLogAssembler().add(_line("CLIENT_RANDOM", size=48))
    assert secrets is not None and secrets.tls_version == TLS12 and secrets.complete


def test_connections_are_kept_apart():
    assembler = KeyLogAssembler()
    assembler.add(_line("CLIENT_HANDSHAKE_TRAFFIC_SECRET"))
    assembler.add(_line("SERVER_HANDSHAKE_TRAFFIC_SECRET", OTHER))
    assert assembler.add(_line("CLIENT_TRAFFIC_SECRET_0")) is None
    assert assembler.add(_line("SERVER_TRAFFIC_SECRET_0")) is None  # RANDOM lacks its server handshake secret


def test_unfinished_connections_are_bounded_and_counted():
    assembler = KeyLogAssembler(limit=3)
    for index in range(10):
        assembler.add(_line("CLIENT_HANDSHAKE_TRAFFIC_SECRET", index.to_bytes(32, "big")))
    assert assembler.stats.evicted == 7 and len(assembler._pending) == 3
    assert assembler.add(None) is None and assembler.stats.undecodable == 1


def test_labels_are_cut_by_length_or_nul_and_must_be_known():
    assert label_from(b"CLIENT_RANDOM\0junk", None) == "CLIENT_RANDOM"
    assert label_from(b"CLIENT_TRAFFIC_SECRET_0xxxxxxx", 23) == "CLIENT_TRAFFIC_SECRET_0"
    assert label_from(b"CLIENT_TRAFFIC_SECRET_0", (23).to_bytes(8, "little")) == "CLIENT_TRAFFIC_SECRET_0"
    assert label_from(b"NOT_A_LABEL\0", None) is None
    assert label_from(b"\xff\xfe\0", None) is None
    assert label_from(b"CLIENT_RANDOM", 200) is None and label_from(None, 3) is None


def test_secrets_only_of_tls_sizes():
    raw = bytes(range(48))
    assert secret_from(raw, 32) == raw[:32] and secret_from(raw, 48) == raw
    assert secret_from(raw, 47) is None and secret_from(raw, 0) is None and secret_from(None, 32) is None
    assert secret_from(raw[:32], 48) is None
