"""The engine over the committed captures: every connection decrypted as tshark
decrypted it, whatever the order in which secrets and packets arrive; the
events each connection produces, in their order.  No root, no tools."""

from __future__ import annotations

import hashlib

import pytest

from bridge.engine import Engine, EngineSettings, FlowFinished, FlowStarted, KeysWanted, PlaintextData
from bridge.keys.store import KeyStore
from bridge.tls.state import Direction
from tests.support.fixtures import FIXTURES, Fixture


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    def __call__(self, event) -> None:  # type: ignore[no-untyped-def]
        self.events.append(event)

    def finished(self) -> list[FlowFinished]:
        return [e for e in self.events if isinstance(e, FlowFinished)]

    def plaintext(self, flow_id: int, direction: Direction) -> bytes:
        return b"".join(e.data for e in self.events
                        if isinstance(e, PlaintextData) and e.flow.flow_id == flow_id and e.direction is direction)


def _run(fixture: Fixture, store: KeyStore, **options) -> Recorder:  # type: ignore[no-untyped-def]
    recorder = Recorder()
    engine = Engine(store, EngineSettings(**options), output=recorder)
    engine.run(fixture.frames())
    engine.finish()
    return recorder


def _assert_as_tshark(fixture: Fixture, recorder: Recorder) -> None:
    finished = recorder.finished()
    assert len(finished) == len(fixture.expected)
    by_endpoints = {(f.summary.client, f.summary.server): f for f in finished}
    for expected in fixture.expected:
        flow = by_endpoints[(expected["client"], expected["server"])]
        assert flow.summary.status == "decrypted", flow.summary
        for direction, name in ((Direction.C2S, "c2s"), (Direction.S2C, "s2c")):
            data = recorder.plaintext(flow.flow.flow_id, direction)
            assert hashlib.sha256(data).hexdigest() == expected[name]["sha256"]
            summary = getattr(flow.summary, name)
            assert summary.bytes == expected[name]["bytes"] and summary.sha256 == expected[name]["sha256"]


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_every_connection_decrypts_as_tshark_decrypts_it(fixture):
    _assert_as_tshark(fixture, _run(fixture, fixture.store()))


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_secrets_that_come_after_the_packets(fixture):
    """Secrets in the store only after the whole capture: the records wait, then decrypt."""
    store, recorder = KeyStore(), Recorder()
    engine = Engine(store, EngineSettings(key_wait=3600), output=recorder)
    engine.run(fixture.frames())
    assert not [e for e in recorder.events if isinstance(e, PlaintextData)]
    for entry in fixture.entries():
        store.add_entry(entry)
    engine.keys_arrived()
    engine.finish()
    _assert_as_tshark(fixture, recorder)


def test_the_events_of_a_connection_in_their_order():
    fixture = FIXTURES[0]
    recorder = Recorder()
    engine = Engine(KeyStore(), EngineSettings(key_wait=3600), output=recorder, request_keys=True)
    engine.run(fixture.frames())
    engine.finish()
    kinds = [type(e) for e in recorder.events]
    assert kinds[0] is FlowStarted and kinds[1] is KeysWanted and kinds[-1] is FlowFinished
    ended = [e for e in recorder.events if isinstance(e, KeysWanted) and e.ended]
    assert len(ended) == 1 and recorder.finished()[0].summary.status == "no_keys"
    assert engine.counters.frames == len(fixture.frames()) and engine.counters.tcp_segments > 0


def test_no_key_request_when_the_secrets_are_there():
    fixture = FIXTURES[0]
    recorder = Recorder()
    engine = Engine(fixture.store(), output=recorder, request_keys=True)
    engine.run(fixture.frames())
    engine.finish()
    assert not [e for e in recorder.events if isinstance(e, KeysWanted)]
    assert engine.decryptor.stats.key_lag.count == 1  # the secrets were there at the hello: lag 0


def test_secrets_are_forgotten_once_logged_unless_kept():
    fixture = FIXTURES[0]
    store = fixture.store()
    _run(fixture, store)
    assert len(store) == 0
    store = fixture.store()
    _run(fixture, store, forget_keys=False)
    assert len(store) == 1


def test_a_resumed_tls12_connection_takes_the_master_secret_of_the_first():
    """The key log names only the first connection (the second resumed its session)."""
    fixture = next(f for f in FIXTURES if f.name == "tls12-cbc-resumed")
    store, entries = KeyStore(), fixture.entries()
    assert len({entry.client_random for entry in entries}) == 2
    store.add_entry(entries[0])
    finished = _run(fixture, store).finished()
    assert [f.summary.status for f in finished] == ["decrypted", "decrypted"]
    assert [f.summary.resumed for f in finished] == [False, True]


def test_the_flow_table_is_bounded():
    fixture = next(f for f in FIXTURES if f.name == "tls12-cbc-resumed")
    recorder = Recorder()
    engine = Engine(fixture.store(), EngineSettings(max_flows=16), output=recorder)
    engine.run(fixture.frames())
    assert engine.decryptor.active_flows <= 16
    engine.finish()
    assert len(recorder.finished()) == 2


@pytest.mark.parametrize("fast_path", [True, False])
def test_without_the_digest_the_same_plaintext_and_no_sha256(fast_path: bool) -> None:
    """``digest=False`` (--no-digest): the flow log's sha256 fields are None, nothing
    else changes (the events compared with the default's, on every fixture)."""
    for fixture in FIXTURES:
        reference = _run(fixture, fixture.store(), fast_path=fast_path)
        recorder = _run(fixture, fixture.store(), fast_path=fast_path, digest=False)
        for got, expected in zip(recorder.events, reference.events, strict=True):
            if isinstance(got, FlowFinished):
                record, expected_record = got.summary.to_record(), expected.summary.to_record()
                assert record["c2s"]["sha256"] is None and record["s2c"]["sha256"] is None
                for name in ("c2s", "s2c"):
                    expected_record[name]["sha256"] = None
                assert record == expected_record
            elif isinstance(got, PlaintextData):
                assert (got.flow.flow_id, got.direction, got.data) == (expected.flow.flow_id, expected.direction,
                                                                      expected.data)


def test_quic_is_loaded_at_the_first_udp_datagram_only() -> None:
    """A capture of TCP alone never imports QUIC's modules (a tenth of a small run's
    time); the QUIC capture does, and its counters are there."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from bridge.engine import Engine\n"
        "from tests.support.fixtures import FIXTURES\n"
        "from bridge.capture.pcapfile import read_capture\n"
        "fixture = FIXTURES[0]\n"
        "engine = Engine(fixture.store())\n"
        "engine.run(fixture.frames()); engine.finish()\n"
        "assert engine.quic_stats is None, engine.quic_stats\n"
        "assert not [m for m in sys.modules if m.startswith(('bridge.quic', 'bridge.engine.quic'))]\n"
        "from tests.unit.quic.capture import PCAP\n"
        "engine.run(read_capture(PCAP)); engine.finish()\n"
        "assert engine.quic_stats is not None and engine.quic_stats.flows == 2, engine.quic_stats\n"
    )
    root = __import__("pathlib").Path(__file__).resolve().parents[3]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root)
    assert result.returncode == 0, result.stderr


class _BatchRecorder:
    """An output with ``batch``: the engine hands it each run's events in one call."""

    def __init__(self) -> None:
        self.calls: list[list] = []  # type: ignore[type-arg]
        self.single: list = []  # type: ignore[type-arg]

    def __call__(self, event) -> None:  # type: ignore[no-untyped-def]
        self.single.append(event)

    def batch(self, events) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(list(events))


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("fixture", FIXTURES[:3], ids=lambda f: f.name)
def test_an_output_with_batch_gets_each_run_s_events_at_once(fixture, fast_path: bool) -> None:  # type: ignore[no-untyped-def]
    """The same events in the same order as an output called on each, in fewer calls,
    and none of them one by one."""
    each, batched = Recorder(), _BatchRecorder()
    for output in (each, batched):
        engine = Engine(fixture.store(), EngineSettings(fast_path=fast_path), output=output)
        engine.run(fixture.frames())
        engine.finish()
    flattened = [event for call in batched.calls for event in call]
    assert any(isinstance(event, FlowFinished) for event in flattened)
    assert [(type(e).__name__, getattr(e, "data", None)) for e in flattened] == \
        [(type(e).__name__, getattr(e, "data", None)) for e in each.events]
    assert batched.single == [] and all(batched.calls)
    assert len(batched.calls) <= len(flattened)
