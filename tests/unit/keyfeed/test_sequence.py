"""Sequence tracking (gaps, repair, accounting) and retention, pure and clock-injected."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.keyfeed import wire
from bridge.keyfeed.retention import Retention
from bridge.keyfeed.sequence import SequenceTracker

A = b"A" * 16
B = b"B" * 16


def _accounted(tracker: SequenceTracker) -> bool:
    s = tracker.stats
    return s.missing == s.repaired + s.expired + s.lost + s.skipped + tracker.outstanding()


def test_in_order_records_have_no_gaps():
    tracker = SequenceTracker()
    assert all(tracker.record(A, seq) for seq in range(1, 101))
    assert tracker.stats.missing == 0 and tracker.outstanding() == 0
    assert tracker.due_fetches(now=0.0) == []


def test_duplicates_are_recognised():
    tracker = SequenceTracker()
    tracker.record(A, 1)
    tracker.record(A, 3)
    assert not tracker.record(A, 1) and not tracker.record(A, 3)
    assert tracker.stats.duplicates == 2


def test_a_gap_is_requested_then_repaired():
    tracker = SequenceTracker()
    for seq in (1, 2, 3, 7, 8):
        tracker.record(A, seq)
    assert tracker.stats.gaps == 1 and tracker.stats.missing == 3
    assert tracker.due_fetches(now=0.0) == [wire.SeqRange(A, 4, 6)]
    assert tracker.due_fetches(now=0.5) == []  # not again before retry_after
    for seq in (4, 5, 6):
        assert tracker.record(A, seq)
    assert tracker.stats.repaired == 3 and tracker.outstanding() == 0 and _accounted(tracker)
    assert tracker.due_fetches(now=5.0) == []


def test_a_lost_tail_is_revealed_by_the_heartbeat():
    tracker = SequenceTracker()
    tracker.record(A, 1)
    tracker.heartbeat(A, last_seq=4, first_seq=1)
    assert tracker.due_fetches(now=0.0) == [wire.SeqRange(A, 2, 4)]


def test_numbers_the_service_no_longer_holds_are_expired_not_lost():
    tracker = SequenceTracker()
    tracker.record(A, 10)
    assert tracker.due_fetches(now=0.0) == [wire.SeqRange(A, 1, 9)]
    tracker.gone(A, 1, 5)
    for seq in range(6, 10):
        tracker.record(A, seq)
    assert (tracker.stats.expired, tracker.stats.repaired, tracker.stats.lost) == (5, 4, 0)
    assert _accounted(tracker) and tracker.outstanding() == 0


def test_a_number_given_up_that_arrives_after_all_is_taken_and_repaired():
    """A broker answers "gone" for what it has not received yet; the publisher's
    replay then brings it.  It must reach the sensor, not be dropped as a duplicate."""
    tracker = SequenceTracker()
    tracker.record(A, 12)
    tracker.gone(A, 1, 11)
    assert tracker.stats.expired == 11 and _accounted(tracker)
    assert all(tracker.record(A, seq) for seq in range(1, 12))
    assert (tracker.stats.expired, tracker.stats.repaired, tracker.stats.duplicates) == (0, 11, 0)
    assert not tracker.record(A, 5) and not tracker.record(A, 12)  # now they are duplicates
    assert tracker.stats.duplicates == 2 and _accounted(tracker)


def test_given_up_runs_remembered_are_bounded():
    from bridge.keyfeed.sequence import MAX_GIVEN_UP_RANGES

    tracker = SequenceTracker()
    for n in range(MAX_GIVEN_UP_RANGES + 10):
        tracker.record(A, 2 * n + 2)  # leaves 2n + 1 missing
        tracker.gone(A, 2 * n + 1, 2 * n + 1)
    assert tracker.stats.expired == MAX_GIVEN_UP_RANGES + 10
    assert not tracker.record(A, 1)  # forgotten: the oldest runs count as duplicates
    assert tracker.record(A, 2 * (MAX_GIVEN_UP_RANGES + 9) + 1)  # the newest is still taken
    assert _accounted(tracker)


def test_a_heartbeat_retention_floor_expires_what_is_older():
    tracker = SequenceTracker()
    tracker.record(A, 1)
    tracker.heartbeat(A, last_seq=50, first_seq=40)
    assert tracker.stats.expired == 38  # 2..39
    assert tracker.due_fetches(now=0.0) == [wire.SeqRange(A, 40, 50)]
    assert _accounted(tracker)


def test_unanswered_requests_are_retried_then_given_up_as_lost():
    tracker = SequenceTracker(retry_after=1.0, max_attempts=3)
    tracker.record(A, 1)
    tracker.record(A, 5)
    requests = [tracker.due_fetches(now=float(t)) for t in range(6)]
    assert requests[0] == requests[1] == requests[2] == [wire.SeqRange(A, 2, 4)]
    assert tracker.stats.lost == 3 and tracker.outstanding() == 0 and _accounted(tracker)
    assert requests[3:] == [[], [], []]


def test_a_snapshot_baseline_skips_what_is_older_than_the_window():
    tracker = SequenceTracker()
    tracker.holding = True
    tracker.record(A, 100)  # live record first: 1..99 look missing
    assert tracker.due_fetches(now=0.0) == []  # holding for the snapshot
    for seq in range(90, 100):
        tracker.record(A, seq)  # the snapshot's records
    tracker.baseline(A, first_seq=90, last_seq=100)
    tracker.holding = False
    assert tracker.stats.skipped == 89 and tracker.outstanding() == 0 and _accounted(tracker)
    assert tracker.due_fetches(now=0.0) == []


def test_publishers_are_tracked_apart_and_bounded():
    tracker = SequenceTracker(max_publishers=2)
    tracker.record(A, 1)
    tracker.record(B, 3)
    assert tracker.due_fetches(now=0.0) == [wire.SeqRange(B, 1, 2)]
    tracker.record(b"C" * 16, 1)
    assert len(tracker) == 2 and tracker.stats.publishers_forgotten == 1


def test_the_out_of_order_window_is_bounded():
    tracker = SequenceTracker(max_window=100)
    for seq in range(2, 300, 2):  # every odd number missing
        tracker.record(A, seq)
    state_size = tracker.outstanding()
    assert state_size <= 101 and tracker.stats.lost > 0 and _accounted(tracker)


def test_huge_ranges_are_split_into_bounded_requests():
    tracker = SequenceTracker()
    tracker.record(A, 200_000)
    requests = tracker.due_fetches(now=0.0)
    assert sum(r.last - r.first + 1 for r in requests) == 199_999
    assert max(r.last - r.first + 1 for r in requests) <= 65_536


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 300),
    drops=st.sets(st.integers(1, 300), max_size=120),
    duplicates=st.sets(st.integers(1, 300), max_size=30),
    retained_from=st.integers(1, 320),
    seed=st.randoms(use_true_random=False),
)
def test_every_missing_number_is_accounted_for(count, drops, duplicates, retained_from, seed):
    """A publisher sends 1..count; the link drops some, duplicates others, and
    reorders a little; the service retains numbers >= retained_from.  Repair
    rounds run until nothing is outstanding.  Every record that was retained
    arrives; everything else is counted as expired; nothing is lost."""
    tracker = SequenceTracker(retry_after=0.0, max_attempts=1000)
    live = [seq for seq in range(1, count + 1) if seq not in drops]
    live += [seq for seq in duplicates if seq <= count]
    seed.shuffle(live)
    received: set[int] = set()
    for seq in live:
        if tracker.record(A, seq):
            received.add(seq)
        assert _accounted(tracker)
    tracker.heartbeat(A, last_seq=count, first_seq=min(retained_from, count + 1))
    now = 0.0
    for _ in range(50):
        now += 1.0
        requests = tracker.due_fetches(now)
        if not requests:
            break
        for request in requests:
            for seq in range(request.first, request.last + 1):
                if seq >= retained_from and tracker.record(A, seq):
                    received.add(seq)
            if request.first < retained_from:
                tracker.gone(A, request.first, min(request.last, retained_from - 1))
        assert _accounted(tracker)
    assert tracker.outstanding() == 0 and tracker.stats.lost == 0
    assert received >= {seq for seq in range(max(retained_from, 1), count + 1)}
    assert received | set(range(1, retained_from)) >= set(range(1, count + 1))


# --- retention ------------------------------------------------------------------------------


def _rec(seq: int, publisher: bytes = A) -> wire.KeyRecord:
    return wire.KeyRecord(client_random=seq.to_bytes(32, "big"), secrets={"EXPORTER_SECRET": bytes(32)},
                          captured_at=1.0, publisher=publisher, seq=seq)


def test_retention_answers_windows_and_ranges():
    retention = Retention(ttl=60)
    for seq in range(1, 11):
        retention.add(_rec(seq), now=float(seq))
    assert [r.seq for r in retention.since(8.0)] == [8, 9, 10]
    assert retention.window(8.0) == [wire.PublisherRange(A, 8, 10)]
    records, gone = retention.fetch(A, 9, 12)
    assert [r.seq for r in records] == [9, 10] and gone == [wire.SeqRange(A, 11, 12)]
    assert retention.fetch(B, 1, 2) == ([], [wire.SeqRange(B, 1, 2)])
    assert not retention.add(_rec(5), now=11.0) and retention.stats.duplicates == 1


def test_retention_expires_by_ttl_and_evicts_by_count():
    retention = Retention(ttl=5, max_records=4)
    for seq in range(1, 7):
        retention.add(_rec(seq), now=float(seq))
    assert len(retention) == 4 and retention.stats.evicted == 2
    assert retention.publisher_range(A) == wire.PublisherRange(A, 3, 6)
    retention.expire(now=10.5)  # 3, 4 and 5 are older than 5 s
    assert [r.seq for r in retention.since(0.0)] == [6]
    _, gone = retention.fetch(A, 1, 6)
    assert gone == [wire.SeqRange(A, 1, 5)]
    retention.expire(now=100.0)
    assert len(retention) == 0 and retention.publisher_range(A) is None


def test_retention_refuses_nonsense_limits():
    with pytest.raises(ValueError):
        Retention(ttl=0)
