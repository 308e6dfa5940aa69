"""QUIC through the engine, on the committed capture: the QUIC connections'
flow log lines, one synthetic HTTP/1.1 connection per request (the clients'
record as the oracle), the same result whatever the datagrams' order, keys
that come later, key requests, and the flow log's ``synthetic`` list."""

from __future__ import annotations

import hashlib
import io
import json

from hypothesis import given, settings, strategies as st

from bridge.capture.frames import make_frame
from bridge.capture.pcapfile import read_capture
from bridge.engine import Engine, EngineSettings, FlowFinished, FlowStarted, KeysWanted, PlaintextData
from bridge.keys.keylog import read_keylog
from bridge.keys.store import KeyStore
from bridge.outputs import FlowLog, Outputs
from bridge.reinject.sink import ReinjectSink
from bridge.reinject.synthetic import SyntheticFlows
from bridge.tls.state import Direction
from tests.unit.quic.capture import EXPECTED, KEYLOG, PCAP

FRAMES = list(read_capture(PCAP))


def _store() -> KeyStore:
    store = KeyStore()
    for entry in read_keylog(KEYLOG):
        store.add_entry(entry)
    return store


def _run(frames, store=None, **kwargs):  # type: ignore[no-untyped-def]
    events: list = []
    engine = Engine(_store() if store is None else store, EngineSettings(), output=events.append, **kwargs)
    engine.run(frames)
    engine.finish()
    return engine, events


def _requests(events) -> list[tuple[bytes, bytes]]:  # type: ignore[no-untyped-def]
    """Each synthetic connection's (request, response), sorted."""
    data: dict[int, dict[Direction, bytes]] = {}
    for event in events:
        if isinstance(event, PlaintextData):
            assert len(event.data) <= 16384  # as TLS records: the synthetic peer's window is never exceeded
            pieces = data.setdefault(event.flow.flow_id, {})
            pieces[event.direction] = pieces.get(event.direction, b"") + event.data
    children = {e.flow.flow_id for e in events if isinstance(e, FlowFinished) and e.parent is not None}
    return sorted((d.get(Direction.C2S, b""), d.get(Direction.S2C, b"")) for i, d in data.items() if i in children)


def test_quic_connections_and_their_requests():
    engine, events = _run(FRAMES)
    parents = [e for e in events if isinstance(e, FlowFinished) and e.parent is None]
    children = [e for e in events if isinstance(e, FlowFinished) and e.parent is not None]
    assert len(parents) == 2 and len(children) == 6
    for parent, client in zip(sorted(parents, key=lambda e: e.flow.flow_id), EXPECTED["clients"]):
        record = parent.summary.to_record()
        assert record["status"] == "decrypted" and record["sni"] == "quic.example.test" and record["alpn"] == "h3"
        assert record["tls_version"] == "TLSv1.3" and record["cipher_suite"]
        assert record["quic"]["version"] == ("QUICv2" if client["version"] == 2 else "QUICv1")
        assert record["quic"]["requests"] == len(client["requests"])
        assert record["key_updates"] == 2 * client["key_updates"]
        mine = [c for c in children if c.parent == parent.flow.flow_id]
        assert len(mine) == len(client["requests"])
        for child in mine:  # the QUIC connection's addresses and ports
            assert (child.flow.client, child.flow.server) == (parent.flow.client, parent.flow.server)
    # every request as the clients recorded it
    requests = _requests(events)
    seen = {(r.split(b" ")[0].decode(), r.split(b" ")[1].decode(), hashlib.sha256(r.partition(b"\r\n\r\n")[2]).hexdigest(),
             hashlib.sha256(s.partition(b"\r\n\r\n")[2]).hexdigest()) for r, s in requests}
    expected = {(r["method"], r["path"], r["request_sha256"], r["response_sha256"])
                for client in EXPECTED["clients"] for r in client["requests"]}
    assert seen == expected
    assert engine.quic.stats.requests == 6 and engine.quic.stats.not_quic == 0
    # each synthetic connection starts before its data; on one 4-tuple, one after the other in time
    order = {e.flow.flow_id: i for i, e in enumerate(events) if isinstance(e, FlowStarted)}
    last_ns = {}
    for i, event in enumerate(events):
        if isinstance(event, PlaintextData):
            assert order[event.flow.flow_id] < i
            key = (event.flow.client, event.flow.server)
            assert event.timestamp_ns >= last_ns.get(key, 0)
            last_ns[key] = event.timestamp_ns


@settings(max_examples=15, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 30))
def test_reordered_and_duplicated_datagrams_give_the_same_requests(rnd, duplicates):
    reference = _requests(_run(FRAMES)[1])
    frames = FRAMES + [rnd.choice(FRAMES) for _ in range(duplicates)]
    keyed = sorted(((i + rnd.uniform(-25, 25), f) for i, f in enumerate(frames)), key=lambda pair: pair[0])
    assert _requests(_run([f for _, f in keyed])[1]) == reference


def test_keys_that_come_later_and_key_requests():
    store = KeyStore()
    events: list = []
    engine = Engine(store, EngineSettings(), output=events.append, request_keys=True)
    engine.run(FRAMES)
    wanted = [e for e in events if isinstance(e, KeysWanted)]
    assert len(wanted) == 2 and not any(isinstance(e, PlaintextData) for e in events)
    for entry in read_keylog(KEYLOG):
        store.add_entry(entry)
    engine.keys_arrived()
    engine.finish()
    assert _requests(events) == _requests(_run(FRAMES)[1])


def test_no_keys_at_all():
    engine, events = _run(FRAMES, store=KeyStore(), request_keys=True)
    parents = [e for e in events if isinstance(e, FlowFinished)]
    assert [p.summary.status for p in parents] == ["no_keys", "no_keys"]
    assert sum(1 for e in events if isinstance(e, KeysWanted) and e.ended) == 2


def test_the_flow_log_lists_the_synthetic_connections():
    log = io.StringIO()
    sink = ReinjectSink(SyntheticFlows(), [])
    outputs = Outputs(flow_log=FlowLog(stream=log), reinject=sink)
    engine = Engine(_store(), EngineSettings(), output=outputs)
    engine.run(FRAMES)
    engine.finish()
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    outputs.close()
    assert len(lines) == 2  # the request streams have no line of their own
    # the requests' synthetic connections combined (same form as a TCP connection's, and how many)
    assert [line["synthetic"]["connections"] for line in lines] == [len(c["requests"]) for c in EXPECTED["clients"]]
    for line in lines:
        synthetic = line["synthetic"]
        assert (synthetic["client"], synthetic["server"]) == (line["client"], line["server"])
        assert synthetic["bytes_s2c"] > line["s2c"]["bytes"] // 2 and synthetic["segments"] > 0


def test_other_udp_is_counted_and_left_alone():
    udp = (53000).to_bytes(2, "big") + (53).to_bytes(2, "big") + (20).to_bytes(2, "big") + bytes(2) + bytes(12)
    dns = bytes.fromhex("4500002800010000401100007f0000017f000001") + udp
    frames = [make_frame(FRAMES[0].timestamp_ns, 228, dns, len(dns))] + FRAMES
    engine, _ = _run(frames)
    assert engine.quic.stats.not_quic == 1 and engine.quic.stats.flows == 2


def test_a_connection_that_moves_to_another_client_port():
    """NAT rebinding / migration (RFC 9000 §9): after the handshake, the client's
    datagrams come from another port (the capture rewritten: UDP checksums are not
    checked); the connection is found by its connection IDs, nothing is lost."""
    client_port = 0
    moved = []
    for index, frame in enumerate(FRAMES):
        data = bytearray(frame.data)
        sport, dport = int.from_bytes(data[34:36], "big"), int.from_bytes(data[36:38], "big")
        if index == 0:
            client_port = sport
        if index > 30 and client_port in (sport, dport):
            at = 34 if sport == client_port else 36
            data[at:at + 2] = (client_port + 1).to_bytes(2, "big")
        moved.append(make_frame(frame.timestamp_ns, frame.linktype, bytes(data), frame.orig_len))
    engine, events = _run(moved)
    assert _requests(events) == _requests(_run(FRAMES)[1])
    first = min((e for e in events if isinstance(e, FlowFinished) and e.parent is None), key=lambda e: e.flow.flow_id)
    assert first.summary.to_record()["quic"]["paths"] == 2 and first.summary.status == "decrypted"
    assert engine.quic.stats.migrations == 1 and engine.quic.stats.flows == 2


def test_the_quic_connections_hold_at_most_memory_limit():
    """Without keys every packet waits: with a small budget the older connection is
    evicted (finished, counted) when the newer one needs room; nothing stays charged."""
    settings = EngineSettings()
    settings.memory_limit = 60_000
    settings.max_pending_per_direction = 40_000  # one connection's own bound (packets waiting for keys)
    events: list = []
    engine = Engine(KeyStore(), settings, output=events.append)
    engine.run(FRAMES)
    assert engine.quic.stats.evicted_for_memory >= 1
    assert engine.quic.stats.memory_peak <= settings.memory_limit
    engine.finish()
    finished = [e for e in events if isinstance(e, FlowFinished)]
    assert "evicted" in {e.ended_by for e in finished}
    assert engine.quic.charged == 0
    # with the keys and the default budget, what is held goes back to nothing as exchanges complete
    engine, _ = _run(FRAMES)
    assert engine.quic.charged == 0 and 0 < engine.quic.stats.memory_peak < 1 << 20


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_damaged_datagrams_never_crash_the_engine(rnd):
    """Bit flips and truncation in UDP payloads (an attacker's datagrams on a QUIC
    4-tuple): counted, reported in the flow log, never an exception."""
    frames = []
    for frame in FRAMES:
        data = bytearray(frame.data)
        if rnd.random() < 0.3 and len(data) > 43:
            for _ in range(rnd.randint(1, 4)):
                data[rnd.randrange(42, len(data))] ^= 1 << rnd.randrange(8)
            if rnd.random() < 0.3:
                del data[rnd.randrange(43, len(data)):]
        frames.append(make_frame(frame.timestamp_ns, frame.linktype, bytes(data), len(data)))
    engine, events = _run(frames)
    for event in events:
        if isinstance(event, FlowFinished):
            assert event.summary.to_record()["status"] in {
                "decrypted", "partial", "gap", "no_keys", "wrong_key", "no_handshake", "unsupported"}


def test_forged_initials_start_nothing():
    """Datagrams that look like v1 Initials but do not authenticate under the keys of
    their DCID (random bytes, a server's Initial on its own) start no connection."""
    import os

    from bridge.quic.connection import opens_connection
    from tests.unit.quic import rfc9001 as A

    assert opens_connection(A.CLIENT_INITIAL) and not opens_connection(A.SERVER_INITIAL)
    forged = bytearray(A.CLIENT_INITIAL)
    forged[-1] ^= 1
    assert not opens_connection(bytes(forged))
    header = bytes.fromhex("c000000001088394c8f03e5157080000449e")
    frames = []
    for i in range(50):
        payload = header + os.urandom(1182)
        udp = (40000 + i).to_bytes(2, "big") + (443).to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") \
            + bytes(2) + payload
        ip = bytes.fromhex("45000000000100004011" + "0000" + "c0000201" + "c6336402")
        ip = ip[:2] + (20 + len(udp)).to_bytes(2, "big") + ip[4:]
        frames.append(make_frame(FRAMES[0].timestamp_ns + i, 228, ip + udp, 20 + len(udp)))
    engine, events = _run(frames)
    assert engine.quic.stats.flows == 0 and engine.quic.stats.not_quic == 50 and not events


def test_without_the_digest_quic_and_its_requests_have_no_sha256():
    events: list = []
    engine = Engine(_store(), EngineSettings(digest=False), output=events.append)
    engine.run(FRAMES)
    engine.finish()
    finished = [e for e in events if isinstance(e, FlowFinished)]
    assert len(finished) == 8  # the QUIC connections and their requests, as with the digest
    for event in finished:
        record = event.summary.to_record()
        assert record["c2s"]["sha256"] is None and record["s2c"]["sha256"] is None
    assert _requests(events) == _requests(_run(FRAMES)[1])
