"""Confirming a layout before anything read through it is published: TLS 1.2 by
decrypting the client's Finished record captured on the wire (the committed
captures, their clients' key logs as the oracle), and the resolver taking that
record whether the connection is alive or not."""

from __future__ import annotations

import pytest

from bridge.harvest.confirm import Evidence, confirm, confirm_tls12_record
from bridge.harvest.first_record import FirstRecords
from bridge.harvest.profile import Profile, ProfileStore
from bridge.harvest.resolve import CONFIRMING, FAILED, INFERRED, LEARNING, READY, LayoutResolver
from bridge.harvest.wire_search import WireHello, hellos
from bridge.secrets import CLIENT_RANDOM, TLS12, ConnectionSecrets
from tests.support.fixtures import FIXTURES

TLS12_FIXTURES = [f for f in FIXTURES if f.name.startswith("tls12")]


def _captured(fixture):  # type: ignore[no-untyped-def]
    """(first records, [(client random, master secret)]) of a committed capture."""
    records = FirstRecords()
    randoms = [e.client_random for e in hellos(fixture.frames(), first_records=records) if isinstance(e, WireHello)]
    masters = {e.client_random: e.secret for e in fixture.entries() if e.label == CLIENT_RANDOM}
    return records, [(random, masters[random]) for random in randoms]


def _no_memory() -> Evidence:
    raise AssertionError("the record decides: the connection's memory is not read")


@pytest.mark.parametrize("fixture", TLS12_FIXTURES, ids=lambda f: f.name)
def test_the_finished_record_confirms_the_right_master_secret_and_refuses_any_other(fixture):
    records, connections = _captured(fixture)
    for random, master in connections:
        captured = records.get(random)
        right = ConnectionSecrets(random, {CLIENT_RANDOM: master}, TLS12, captured.cipher_suite)
        verdict = confirm(right, Evidence(b"", None, None, lambda needles: set(), captured))
        assert verdict.ok and "Finished record decrypted" in verdict.reason
        for wrong_master in (master[:-1] + bytes([master[-1] ^ 0x80]), bytes(48), master[16:] + master[:16]):
            verdict = confirm_tls12_record(ConnectionSecrets(random, {CLIENT_RANDOM: wrong_master}, TLS12,
                                                             captured.cipher_suite), captured)
            assert not verdict.ok and verdict.conclusive and "does not decrypt" in verdict.reason
        # the layout's cipher suite must be the one the ServerHello chose; unread decides nothing
        other = 0xC02F if captured.cipher_suite != 0xC02F else 0xC030
        verdict = confirm_tls12_record(ConnectionSecrets(random, {CLIENT_RANDOM: master}, TLS12, other), captured)
        assert not verdict.ok and verdict.conclusive and "ServerHello chose" in verdict.reason
        verdict = confirm_tls12_record(ConnectionSecrets(random, {CLIENT_RANDOM: master}, TLS12, None), captured)
        assert not verdict.ok and not verdict.conclusive


def _resolver(*candidates: Profile, methods=("candidates",)) -> LayoutResolver:  # type: ignore[no-untyped-def]
    store = ProfileStore(shipped=False)
    for profile in candidates:
        store.add(profile)
    return LayoutResolver(store, methods=methods, calibrator=lambda path: None)  # type: ignore[arg-type,return-value]


def test_a_candidate_confirmed_by_a_record_of_a_connection_long_gone():
    fixture = TLS12_FIXTURES[0]
    records, [(random, master), *_] = _captured(fixture)
    candidate = Profile("c" * 40, "OpenSSL 3.0.19", "libssl.so.3", {"client_random": (0x100,)})
    resolver = _resolver(candidate)
    resolver.first_records = records
    layout = resolver.layout("a" * 40, "libssl.so.3", None)
    assert layout.state == CONFIRMING
    suite = records.get(random).cipher_suite
    wrong = ConnectionSecrets(random, {CLIENT_RANDOM: bytes(48)}, TLS12, suite)
    assert resolver.vouch(layout, candidate, wrong, _no_memory) is False  # a strike, nothing published
    assert layout.state == CONFIRMING and "does not decrypt" in layout.rejected[candidate.build_id][1]
    right = ConnectionSecrets(random, {CLIENT_RANDOM: master}, TLS12, suite)
    assert resolver.vouch(layout, candidate, right, _no_memory) is True
    assert layout.state == READY and layout.origin == INFERRED and layout.confirmed_versions == {TLS12}
    assert "Finished record decrypted" in layout.profile.made["confirmed_by"]


def test_without_a_record_the_memory_decides_and_an_undecided_one_is_tried_again():
    fixture = TLS12_FIXTURES[0]
    records, [(random, master), *_] = _captured(fixture)
    candidate = Profile("c" * 40, "OpenSSL 3.0.19", "libssl.so.3", {"client_random": (0x100,)})
    resolver = _resolver(candidate)  # its FirstRecords were never fed: no wire
    layout = resolver.layout("a" * 40, "libssl.so.3", None)
    right = ConnectionSecrets(random, {CLIENT_RANDOM: master}, TLS12, records.get(random).cipher_suite)
    asked = []

    def memory() -> Evidence:
        asked.append(True)
        return Evidence(b"", None, bytes(32), lambda needles: set())  # keys not (yet) live

    assert resolver.vouch(layout, candidate, right, memory) is None and asked
    assert layout.state == CONFIRMING and not layout.rejected


def test_learning_needs_what_the_harvester_lacks_is_an_error_state_that_says_so():
    resolver = _resolver(methods=("learn",))
    resolver.learning_needs = "breakpoint hooks (--trigger hooks,wire with --gdb)"
    layout = resolver.layout("b" * 40, "libssl.so.3", None)
    assert layout.state == FAILED and "learning its layout needs breakpoint hooks" in layout.reason
    resolver = _resolver(methods=("learn",))
    assert resolver.layout("b" * 40, "libssl.so.3", None).state == LEARNING
