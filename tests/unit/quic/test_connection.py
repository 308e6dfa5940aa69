"""One QUIC connection on the committed capture (aioquic, QUIC v1 with a key
update, and QUIC v2): stream data against tshark's decryption of the same
capture; the handshake facts; no keys, wrong keys, late keys; any datagram order."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings, strategies as st

from bridge.quic.connection import QuicConnection, QuicSettings
from bridge.secrets import CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0
from tests.unit.quic.capture import EXPECTED, Replay, datagrams, secrets, tshark_streams

DATAGRAMS = datagrams()


def _digests(replay: Replay) -> dict[tuple[int, int, int], tuple[int, str]]:
    return {key: (len(data), hashlib.sha256(data).hexdigest()) for key, data in replay.streams.items()
            if key[2] % 4 == 0}


def test_request_streams_match_tshark():
    replay = Replay().feed(DATAGRAMS).finish()
    assert _digests(replay) == tshark_streams()
    for connection in replay.connections.values():
        assert connection.status() == ("decrypted", "")


def test_handshake_facts_versions_and_the_key_update():
    replay = Replay().feed(DATAGRAMS).finish()
    v1, v2 = replay.connections[0], replay.connections[1]
    assert v1.version.name == "QUICv1" and v2.version.name == "QUICv2"
    for connection in (v1, v2):
        assert connection.client_hello.sni == "quic.example.test"
        assert connection.client_hello.alpn == ["h3"] and connection.alpn == "h3"
        assert connection.suite.name.startswith("TLS_") and len(connection.certificates) == 1
        assert connection.handshake_done and connection.close is not None
    assert EXPECTED["clients"][0]["key_updates"] == 1
    assert v1.stats[0].key_updates == 1 and v1.stats[1].key_updates == 1
    assert v2.stats[0].key_updates == 0
    # every packet authenticated: none failed, none left waiting
    for connection in (v1, v2):
        assert all(s.failed_packets == 0 and s.undecrypted_packets == 0 for s in connection.stats)


def test_without_keys_nothing_is_decrypted_and_the_status_says_why():
    replay = Replay(keys=False).feed(DATAGRAMS).finish()
    assert not replay.streams
    for connection in replay.connections.values():
        assert connection.status()[0] == "no_keys"
        assert connection.client_hello is not None  # the Initial needs no secrets
        assert sum(s.undecrypted_packets for s in connection.stats) > 0


def test_wrong_keys_are_reported():
    wrong = {random_: {label: bytes(len(secret)) for label, secret in labels.items()}
             for random_, labels in secrets().items()}
    replay = Replay()
    replay.secrets = wrong
    replay.feed(DATAGRAMS).finish()
    assert not any(key[2] % 4 == 0 for key in replay.streams)
    assert all(c.status()[0] == "wrong_key" for c in replay.connections.values())


def test_secrets_that_arrive_after_the_packets():
    replay = Replay(keys=False).feed(DATAGRAMS)
    for number, connection in replay.connections.items():
        replay.take(number, connection.give_secrets(secrets()[connection.client_random]))
    replay.finish()
    assert _digests(replay) == tshark_streams()


def test_only_the_application_secrets():
    only = {r: {k: v for k, v in labels.items() if k in (CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0)}
            for r, labels in secrets().items()}
    replay = Replay()
    replay.secrets = only
    replay.feed(DATAGRAMS).finish()
    assert _digests(replay) == tshark_streams()
    assert replay.connections[0].alpn is None  # EncryptedExtensions is in the Handshake space
    assert replay.connections[0].status()[0] == "partial"  # Handshake packets never decrypted


def test_pending_packets_are_bounded():
    replay = Replay(keys=False, max_pending=5000).feed(DATAGRAMS).finish()
    for connection in replay.connections.values():
        assert connection.pending_dropped > 0 and connection.waiting == 0


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 40))
def test_reordered_and_duplicated_datagrams_give_the_same_streams(rnd, duplicates):
    items = list(DATAGRAMS)
    items += [rnd.choice(DATAGRAMS) for _ in range(duplicates)]
    # a mirror reorders within a window, not across the whole capture
    keyed = sorted(((i + rnd.uniform(-30, 30), d) for i, d in enumerate(items)), key=lambda pair: pair[0])
    replay = Replay().feed([d for _, d in keyed]).finish()
    assert _digests(replay) == tshark_streams()


def test_garbage_and_truncated_datagrams_do_not_crash():
    rnd = random.Random(3)
    connection = QuicConnection(QuicSettings())
    for d in DATAGRAMS[:40]:
        payload = bytearray(d.payload)
        for _ in range(3):
            payload[rnd.randrange(len(payload))] ^= 1 << rnd.randrange(8)
        connection.feed(d.side, bytes(payload[:rnd.randrange(1, len(payload) + 1)]), d.timestamp_ns)
    connection.finish()
    assert connection.status()[0] in {"no_handshake", "no_keys", "partial", "wrong_key", "gap", "unsupported"}
