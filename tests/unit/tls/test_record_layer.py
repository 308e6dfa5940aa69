"""One direction's record layer: bounded waiting, the shared budget, keys and phases."""

from __future__ import annotations

import pytest

from bridge.errors import DecryptionError
from bridge.tls.ciphersuites import cipher_suite
from bridge.tls.protection import RecordDecryptor13
from bridge.tls.record_layer import KeyUpdateGap, PendingBudget, RecordLayer
from bridge.tls.records import Record
from bridge.tls.state import Move, Phase


def _record(size: int) -> Record:
    return Record(23, 0x0303, bytes(size))


def test_records_wait_within_the_direction_s_bound_and_the_shared_budget():
    budget = PendingBudget(limit=1000)
    a, b = RecordLayer(), RecordLayer()
    assert a.enqueue(_record(395), budget, max_pending=500)  # 400 bytes with its header
    assert not a.enqueue(_record(195), budget, max_pending=500)  # over the direction's bound
    assert b.enqueue(_record(495), budget, max_pending=1000)
    assert not b.enqueue(_record(195), budget, max_pending=1000)  # over the shared budget
    assert budget.used == 900
    assert a.pop(budget).fragment == bytes(395) and budget.used == 500
    assert b.release(budget) == 1 and budget.used == 0 and not b.pending


def test_phases_move_only_through_the_table():
    layer = RecordLayer()
    layer.move(Move.HANDSHAKE_KEYS)
    layer.move(Move.APPLICATION_KEYS)
    assert layer.phase is Phase.ENCRYPTED
    layer.move(Move.STOP)
    layer.move(Move.APPLICATION_KEYS)
    assert layer.stopped


def test_a_later_epoch_key_skips_the_records_sent_before_it():
    suite = cipher_suite(0x1301)
    layer = RecordLayer()
    layer.key_updates = 2
    layer.set_keys(RecordDecryptor13(suite, bytes(range(32))), traffic_secret=bytes(32), catching_up=True)
    with pytest.raises(KeyUpdateGap, match="before KeyUpdate 2"):
        layer.decrypt(_record(40))
    assert layer.catching_up  # still looking for the first record of that epoch
    layer.catching_up = False
    with pytest.raises(DecryptionError):
        layer.decrypt(_record(40))  # a wrong key is a wrong key once caught up
