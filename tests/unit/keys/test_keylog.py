"""The key log parser (RFC 9850 and every other line Wireshark reads): forms,
round trips, garbage, and which labels may travel on the key feed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import KeyLogFormatError
from bridge.keyfeed import wire
from bridge.keyfeed.wire import records_from_entries
from bridge.secrets import CLIENT_RANDOM, FEED_LABELS, PMS_CLIENT_RANDOM, RSA, RSA_SESSION_ID, is_known_label, traffic_secret_epoch
from bridge.keys.keylog import KeyLogEntry, KeyLogStats, parse_line, parse_lines
from bridge.keys.store import KeyStore
from bridge.secrets import rsa_handle, session_handle

CR = bytes(range(32))


def test_openssls_rsa_line_is_found_by_the_encrypted_pre_master_prefix():
    line = "RSA 8b2c5e7a1f0d9e33 " + "03" * 2 + "ab" * 46
    entry = parse_line(line)
    assert entry == KeyLogEntry(RSA, b"", bytes.fromhex("0303" + "ab" * 46), bytes.fromhex("8b2c5e7a1f0d9e33"))
    assert entry.to_line() == line
    store = KeyStore()
    store.add_entry(entry)
    assert store.lookup_handle(rsa_handle(bytes.fromhex("8b2c5e7a1f0d9e33") + b"rest of the ciphertext")) == entry.secret
    assert store.take_arrivals() == [rsa_handle(entry.handle)]
    store.forget(b"", (rsa_handle(entry.handle),))
    assert store.lookup_handle(rsa_handle(entry.handle)) is None


def test_nss_session_id_form():
    line = f"RSA Session-ID:{'5a' * 32} Master-Key:{'11' * 48}"
    entry = parse_line(line)
    assert (entry.label, entry.handle, entry.secret) == (RSA_SESSION_ID, b"\x5a" * 32, b"\x11" * 48)
    assert entry.to_line() == line
    store = KeyStore()
    store.add_entry(entry)
    assert store.lookup_handle(session_handle(b"\x5a" * 32)) == b"\x11" * 48


def test_pre_master_by_client_random_of_any_plausible_length():
    for size in (32, 48, 66, 256):  # X25519, RSA, P-521, ffdhe2048
        entry = parse_line(f"PMS_CLIENT_RANDOM {CR.hex()} {'42' * size}")
        assert (entry.label, entry.client_random, len(entry.secret)) == (PMS_CLIENT_RANDOM, CR, size)


def test_traffic_secrets_of_later_epochs_are_known():
    assert traffic_secret_epoch("CLIENT_TRAFFIC_SECRET_1") == ("CLIENT", 1)
    assert traffic_secret_epoch("SERVER_TRAFFIC_SECRET_12") == ("SERVER", 12)
    assert traffic_secret_epoch("SERVER_TRAFFIC_SECRET_01") is None
    assert is_known_label("SERVER_TRAFFIC_SECRET_7") and not is_known_label("CLIENT_TRAFFIC_SECRET_X")
    entry = parse_line(f"SERVER_TRAFFIC_SECRET_3 {CR.hex()} {'77' * 48}")
    assert entry.label == "SERVER_TRAFFIC_SECRET_3"


@pytest.mark.parametrize("line, message", [
    ("RSA 8b2c5e7a1f0d9e " + "ab" * 48, "prefix has 7 bytes, expected 8"),
    ("RSA 8b2c5e7a1f0d9e33 " + "ab" * 47, "RSA: secret has 47 bytes"),
    ("RSA Session-ID: Master-Key:" + "11" * 48, "session ID has 0 bytes"),
    ("RSA Session-ID:abc Master-Key:" + "11" * 48, "not hex"),
    ("RSA Session-ID:aa Master:" + "11" * 48, "expected 'Session-ID:<hex> Master-Key:<hex>'"),
    ("PMS_CLIENT_RANDOM " + "00" * 31 + " " + "11" * 48, "client random has 31 bytes"),
    ("PMS_CLIENT_RANDOM " + "00" * 32 + " " + "11" * 1025, "pre-master secret has 1025 bytes"),
    ("CLIENT_TRAFFIC_SECRET_2 " + "00" * 32 + " " + "11" * 20, "secret has 20 bytes"),
    ("CLIENT_RANDOM " + "00" * 32 + " " + "11" * 32, "secret has 32 bytes"),
])
def test_malformed_lines_say_what_is_wrong_without_the_secret(line, message):
    with pytest.raises(KeyLogFormatError) as caught:
        parse_line(line)
    assert message in str(caught.value)
    assert "1111" not in str(caught.value) and "abab" not in str(caught.value)


def test_a_mixed_file_counts_each_kind():
    stats = KeyLogStats()
    lines = [
        "# comment",
        f"RSA 0011223344556677 {'ab' * 48}",
        f"PMS_CLIENT_RANDOM {CR.hex()} {'cd' * 48}",
        f"CLIENT_RANDOM {CR.hex()} {'ef' * 48}",
        f"CLIENT_TRAFFIC_SECRET_1 {CR.hex()} {'01' * 32}",
        f"ECH_SECRET {CR.hex()} {'02' * 32}",  # read by Wireshark 4.4+, not used here: counted as unknown
        "RSA 00 11",
    ]
    entries = list(parse_lines(lines, stats))
    assert [e.label for e in entries] == [RSA, PMS_CLIENT_RANDOM, CLIENT_RANDOM, "CLIENT_TRAFFIC_SECRET_1"]
    assert (stats.comments, stats.unknown_labels, stats.malformed, stats.entries) == (1, 1, 1, 4)


def test_the_feed_carries_rfc_9850_labels_only():
    assert not {RSA, RSA_SESSION_ID, PMS_CLIENT_RANDOM, "CLIENT_TRAFFIC_SECRET_1"} & FEED_LABELS
    entries = [parse_line(line) for line in (
        f"RSA 0011223344556677 {'ab' * 48}",
        f"RSA Session-ID:{'5a' * 32} Master-Key:{'11' * 48}",
        f"PMS_CLIENT_RANDOM {CR.hex()} {'cd' * 48}",
        f"CLIENT_TRAFFIC_SECRET_1 {CR.hex()} {'01' * 32}",
        f"CLIENT_RANDOM {CR.hex()} {'ef' * 48}",
    )]
    [record] = records_from_entries(entries, wire.Origin(), 1.0)
    assert dict(record.secrets) == {CLIENT_RANDOM: b"\xef" * 48}
    assert records_from_entries(entries[:4], wire.Origin(), 1.0) == []


_hex = st.binary
_entries = st.one_of(
    st.builds(lambda h, s: KeyLogEntry(RSA, b"", s, h), _hex(min_size=8, max_size=8), _hex(min_size=48, max_size=48)),
    st.builds(lambda h, s: KeyLogEntry(RSA_SESSION_ID, b"", s, h), _hex(min_size=1, max_size=32), _hex(min_size=48, max_size=48)),
    st.builds(lambda c, s: KeyLogEntry(PMS_CLIENT_RANDOM, c, s), _hex(min_size=32, max_size=32), _hex(min_size=1, max_size=300)),
    st.builds(lambda c, s: KeyLogEntry(CLIENT_RANDOM, c, s), _hex(min_size=32, max_size=32), _hex(min_size=48, max_size=48)),
    st.builds(lambda side, n, c, s: KeyLogEntry(f"{side}_TRAFFIC_SECRET_{n}", c, s),
              st.sampled_from(["CLIENT", "SERVER"]), st.integers(0, 10**9), _hex(min_size=32, max_size=32),
              st.sampled_from([b"\x01" * 32, b"\x02" * 48])),
)


@given(_entries, st.sampled_from(["", "\r", "  "]))
def test_every_form_round_trips(entry, ending):
    assert parse_line(entry.to_line() + ending) == entry


@given(st.text(alphabet=st.sampled_from("RSAPM_CLIENTDOM-:SesiodKy 0123456789abcdefxz#\t"), max_size=200))
def test_garbage_raises_only_the_key_log_error(line):
    try:
        entry = parse_line(line)
    except KeyLogFormatError:
        return
    if entry is not None:
        assert isinstance(entry.secret, bytes) and (len(entry.client_random) == 32 or entry.handle)


@pytest.mark.parametrize("label", [RSA, RSA_SESSION_ID, PMS_CLIENT_RANDOM, "SERVER_TRAFFIC_SECRET_1"])
def test_a_feed_record_with_a_key_log_only_label_is_refused_by_the_receiver(label):
    record = wire.KeyRecord(client_random=CR, secrets={label: bytes(48)}, captured_at=1.0, publisher=bytes(16), seq=1)
    with pytest.raises(wire.FeedMessageError, match="bad_label|unknown label"):
        wire.decode(wire.encode(record))
