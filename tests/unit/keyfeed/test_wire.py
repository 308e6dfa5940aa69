"""The key feed's msgpack schema: round trips, strict validation, fuzzing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import FeedMessageError
from bridge.keyfeed import wire
from bridge.secrets import CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, HANDSHAKE_SECRET, SERVER_TRAFFIC_SECRET_0

PUB = bytes(range(16))
CR = bytes(range(32, 64))
SECRET = bytes.fromhex("5ec7e75ec7e7" * 8)  # 48 bytes, easy to find in text


def _record(**changes) -> wire.KeyRecord:
    values = dict(
        client_random=CR,
        secrets={CLIENT_TRAFFIC_SECRET_0: SECRET[:32], SERVER_TRAFFIC_SECRET_0: SECRET[16:48], HANDSHAKE_SECRET: SECRET[:32]},
        captured_at=1_790_000_000.25,
        tls_version=0x0304,
        cipher_suite=0x1301,
        origin=wire.Origin(host="hv1", vm="web-01", pid=4242, comm="nginx", build_id="ab" * 20, trigger="SSL_free"),
        publisher=PUB,
        seq=7,
    )
    values.update(changes)
    return wire.KeyRecord(**values)


def _raw(**fields) -> bytes:
    return msgpack.packb({"v": 1, **fields}, use_bin_type=True)


def _valid_key_map() -> dict:
    return msgpack.unpackb(wire.encode(_record()), raw=False)


@pytest.mark.parametrize(
    "message",
    [
        _record(),
        _record(secrets={CLIENT_RANDOM: SECRET}, tls_version=0x0303, cipher_suite=None, origin=wire.Origin()),
        wire.Heartbeat(PUB, 99, 5, 1_790_000_000.0),
        wire.SnapshotRequest(3, 600.0),
        wire.FetchRequest(4, PUB, 10, 20),
        wire.KeyRequest(CR, (bytes([10, 0, 0, 1]), 51000), (bytes([10, 0, 0, 2]), 443)),
        wire.KeyRequest(CR, (bytes(15) + b"\x01", 0), (bytes(16), 65535)),
        wire.KeyRequest(CR, (bytes([10, 0, 0, 1]), 51000), (bytes([10, 0, 0, 2]), 443), ended=True),
        wire.Batch(5, (_record(seq=1), _record(seq=2))),
        wire.End(6, (wire.PublisherRange(PUB, 1, 9),), (wire.SeqRange(PUB, 3, 4),)),
        wire.ErrorReply(7, "bad_type: not a request"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_message_type_round_trips(message):
    decoded = wire.decode(wire.encode(message))
    if isinstance(message, wire.KeyRecord):
        assert decoded.key == message.key and decoded.client_random == message.client_random
        assert dict(decoded.secrets) == dict(message.secrets) and decoded.origin == message.origin
        assert (decoded.tls_version, decoded.cipher_suite, decoded.captured_at) == (
            message.tls_version, message.cipher_suite, message.captured_at)
    elif isinstance(message, wire.Batch):
        assert [r.key for r in decoded.records] == [r.key for r in message.records]
    else:
        assert decoded == message


def test_a_key_message_is_small():
    assert len(wire.encode(_record())) < 512


def _mutated(**changes) -> bytes:
    body = _valid_key_map()
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "not_msgpack"),
        (b"\xc1", "not_msgpack"),  # never-used msgpack byte
        (b"\x92\x01", "not_msgpack"),  # truncated array
        (msgpack.packb([1, 2, 3]), "bad_field"),
        (msgpack.packb({"type": "key"}), "bad_version"),
        (_raw(type="key2"), "bad_type"),
        (_mutated(v=2), "bad_version"),
        (_mutated(cr=CR[:31]), "bad_field"),
        (_mutated(cr="00" * 32), "bad_field"),
        (_mutated(pub=PUB + b"x"), "bad_field"),
        (_mutated(seq=0), "bad_field"),
        (_mutated(seq=-1), "bad_field"),
        (_mutated(seq=True), "bad_field"),
        (_mutated(seq=1.0), "bad_field"),
        (_mutated(t=float("nan")), "bad_field"),
        (_mutated(t="now"), "bad_field"),
        (_mutated(secrets={}), "bad_field"),
        (_mutated(secrets={"CLIENT_RANDOM": SECRET[:32]}), "bad_field"),  # TLS 1.2 master secret is 48 bytes
        (_mutated(secrets={"CLIENT_TRAFFIC_SECRET_0": SECRET[:20]}), "bad_field"),
        (_mutated(secrets={"SSH_KEY": SECRET[:32]}), "bad_label"),
        (_mutated(secrets=[SECRET]), "bad_field"),
        (_mutated(tls=0x0301), "bad_field"),
        (_mutated(suite=70000), "bad_field"),
        (_mutated(origin={"host": "x" * 300}), "bad_field"),
        (_mutated(origin={"pid": "12"}), "bad_field"),
        (_mutated(origin={"shell": "rm -rf"}), "bad_field"),
        (_mutated(extra=1), "bad_field"),
        (_mutated(secrets=...), "bad_field"),
        (msgpack.packb({"v": 1, "type": "key", 1: 2}), "not_msgpack"),  # non-string map key
        (msgpack.packb({"v": 1, "type": "hb", "pub": PUB, "seq": 1, "first": 1, "t": 1.0, "x": msgpack.ExtType(1, b"")},
                       use_bin_type=True), "not_msgpack"),
        (_raw(type="fetch", id=1, pub=PUB, **{"from": 9, "to": 3}), "bad_field"),
        (_raw(type="batch", id=1, records=[{}] * (wire.MAX_BATCH_RECORDS + 1)), "bad_field"),
        (_raw(type="want", cr=CR[:31], c=[bytes(4), 1], s=[bytes(4), 443]), "bad_field"),
        (_raw(type="want", cr=CR, c=[bytes(5), 1], s=[bytes(4), 443]), "bad_field"),
        (_raw(type="want", cr=CR, c=[bytes(4), 1], s=[bytes(4), 65536]), "bad_field"),
        (_raw(type="want", cr=CR, c=[bytes(4), 1], s=[bytes(16), 443]), "bad_field"),  # mixed families
        (_raw(type="want", cr=CR, c=[bytes(4)], s=[bytes(4), 443]), "bad_field"),
        (_raw(type="want", cr=CR, c=[bytes(4), 1]), "bad_field"),
        (_raw(type="want", cr=CR, c=[bytes(4), 1], s=[bytes(4), 443], id=1), "bad_field"),
        (_raw(type="want", cr=CR, c=[bytes(4), 1], s=[bytes(4), 443], end=1), "bad_field"),
    ],
)
def test_invalid_messages_are_refused_with_a_reason(data, reason):
    with pytest.raises(FeedMessageError) as caught:
        wire.decode(data)
    assert caught.value.reason == reason


def test_oversized_messages_are_refused_before_parsing():
    huge = _raw(type="key", pad=b"x" * 10_000)
    with pytest.raises(FeedMessageError) as caught:
        wire.decode(huge, max_size=wire.MAX_KEY_MESSAGE)
    assert caught.value.reason == "too_large"
    # where a batch-sized message is allowed, a key message still has its own limit
    with pytest.raises(FeedMessageError) as caught:
        wire.decode(_mutated(pad=b"x" * 5000))
    assert caught.value.reason == "too_large"


def test_secrets_never_appear_in_repr_or_errors():
    record = _record()
    text = repr(record) + str(record.origin)
    for secret in record.secrets.values():
        assert secret.hex() not in text and secret.hex()[:16] not in text
    # a malformed message that holds secrets: the error names fields, not values
    bad = _mutated(secrets={"CLIENT_TRAFFIC_SECRET_0": SECRET[:31], "BOGUS_" + SECRET.hex(): SECRET[:32]})
    with pytest.raises(FeedMessageError) as caught:
        wire.decode(bad)
    assert SECRET.hex()[:16] not in str(caught.value)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=64),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_feed_message_errors(data):
    try:
        wire.decode(data)
    except FeedMessageError:
        pass


@settings(max_examples=400, deadline=None)
@given(json_like, st.sampled_from(["key", "hb", "snapshot", "fetch", "want", "batch", "end", "error", None]))
def test_random_msgpack_structures_raise_only_feed_message_errors(value, kind):
    body = dict(value) if isinstance(value, dict) else {"payload": value}
    body.update({"v": 1, "type": kind})
    try:
        wire.decode(msgpack.packb(body, use_bin_type=True))
    except FeedMessageError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_records_raise_only_feed_message_errors(data):
    body = _valid_key_map()
    key = data.draw(st.sampled_from(sorted(body) + ["secrets.label", "origin.pid"]))
    replacement = data.draw(json_like)
    if key == "secrets.label":
        body["secrets"][data.draw(st.text(max_size=40))] = replacement
    elif key == "origin.pid":
        body["origin"]["pid"] = replacement
    else:
        body[key] = replacement
    try:
        message = wire.decode(msgpack.packb(body, use_bin_type=True))
    except FeedMessageError:
        return
    assert isinstance(message, (wire.KeyRecord, wire.Heartbeat, wire.SnapshotRequest, wire.FetchRequest,
                                wire.Batch, wire.End, wire.ErrorReply))
