"""The key store: TTL for feed secrets, forgetting secrets when their connection is logged."""

from __future__ import annotations

from bridge.engine.decryptor import Decryptor
from bridge.secrets import CLIENT_TRAFFIC_SECRET_0, HANDSHAKE_SECRET, SERVER_TRAFFIC_SECRET_0
from bridge.keys.store import KeyStore
from bridge.engine.packets import ACK, FIN, SYN, TcpSegment
from bridge.tls.state import Direction
from tests.support.decrypt import Collector
from tests.support.rfc8448 import CLIENT_RANDOM, HANDSHAKE_SECRET as RFC_HANDSHAKE_SECRET
from tests.unit.tls.test_connection import FLIGHTS

C2S, S2C = Direction.C2S, Direction.S2C

A, B = b"a" * 32, b"b" * 32


def test_feed_secrets_expire_after_their_ttl_and_key_log_secrets_do_not():
    store = KeyStore()
    store.add_secrets(A, {CLIENT_TRAFFIC_SECRET_0: bytes(32)}, now=100.0, ttl=10.0)
    store.add(B, CLIENT_TRAFFIC_SECRET_0, bytes(32), now=100.0)  # from a key log file: no TTL
    assert store.expire(now=109.0) == 0 and store.lookup(A) is not None
    assert store.expire(now=111.0) == 1
    assert store.lookup(A) is None and store.lookup(B) is not None
    assert store.stats.expired == 1


def test_a_refreshed_key_set_keeps_its_later_expiry():
    store = KeyStore()
    store.add_secrets(A, {CLIENT_TRAFFIC_SECRET_0: bytes(32)}, now=0.0, ttl=10.0)
    store.add_secrets(A, {SERVER_TRAFFIC_SECRET_0: bytes(32)}, now=8.0, ttl=10.0)
    assert store.expire(now=12.0) == 0
    assert set(store.lookup(A).secrets) == {CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0}
    assert store.expire(now=19.0) == 1


def test_the_expiry_queue_is_bounded_when_a_publisher_repeats_itself():
    store = KeyStore(max_entries=10)
    for index in range(1000):
        store.add_secrets(A, {CLIENT_TRAFFIC_SECRET_0: bytes([index % 256]) * 32}, now=float(index), ttl=1e9)
    assert max(len(queue) for queue in store._expiries.values()) <= 20


def test_origin_is_kept_and_repr_shows_no_secret():
    store = KeyStore()
    secret = bytes.fromhex("ab" * 32)
    store.add_secrets(A, {CLIENT_TRAFFIC_SECRET_0: secret}, origin={"vm": "web-01", "pid": 7})
    keyset = store.lookup(A)
    assert keyset.origin == {"vm": "web-01", "pid": 7}
    assert "abab" not in repr(keyset) + repr(store)


def _conversation() -> list[TcpSegment]:
    """RFC 8448 §3's records as one TCP connection: handshake, the records, FINs."""
    client, server = (b"\x0a\x00\x00\x01", 50000), (b"\x0a\x00\x00\x02", 443)
    seq = {C2S: 1000, S2C: 5000}
    segments = [TcpSegment(1, 4, client[0], server[0], client[1], server[1], 999, 0, SYN, 0, b""),
                TcpSegment(2, 4, server[0], client[0], server[1], client[1], 4999, 1000, SYN | ACK, 0, b"")]
    for index, (direction, record) in enumerate(FLIGHTS + [(C2S, b""), (S2C, b"")]):
        src, dst = (client, server) if direction is C2S else (server, client)
        flags = ACK | (FIN if not record else 0)
        segments.append(TcpSegment(10 + index, 4, src[0], dst[0], src[1], dst[1], seq[direction], 0, flags, 0, record))
        seq[direction] += len(record)
    return segments


def test_the_decryptor_forgets_a_connections_secrets_once_it_is_logged():
    store = KeyStore()
    store.add(CLIENT_RANDOM, HANDSHAKE_SECRET, RFC_HANDSHAKE_SECRET)
    store.add(B, CLIENT_TRAFFIC_SECRET_0, bytes(32))  # another connection's: kept
    collector = Collector()
    decryptor = Decryptor(store)
    for segment in _conversation():
        for event in decryptor.process(segment):
            collector(event)
    for event in decryptor.finish():
        collector(event)
    assert [(f.record["status"], f.record["ended_by"]) for f in collector.result.flows] == [("decrypted", "fin")]
    assert store.lookup(CLIENT_RANDOM) is None and store.lookup(B) is not None
    assert store.stats.forgotten == 1
