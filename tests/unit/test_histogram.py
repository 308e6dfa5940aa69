"""bridge.histogram: the fixed-bucket histogram the workers report."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.histogram import Histogram


def test_buckets_are_upper_bounds_inclusive_and_cumulative_when_exposed():
    histogram = Histogram((0.1, 1.0))
    for value in (0.0, 0.1, 0.5, 1.0, 7.0, -3.0):  # a negative duration (clock step) counts as 0
        histogram.observe(value)
    assert histogram.counts == [3, 2, 1]
    assert histogram.cumulative() == [("0.1", 3), ("1.0", 5), ("+Inf", 6)]
    assert histogram.count == 6 and histogram.sum == pytest.approx(8.6)


@given(st.lists(st.floats(0, 100), max_size=50), st.lists(st.floats(0, 100), max_size=50))
def test_a_round_trip_through_the_pipe_and_merging_add_up(first, second):
    a, b, both = Histogram(), Histogram(), Histogram()
    for value in first:
        a.observe(value)
        both.observe(value)
    for value in second:
        b.observe(value)
        both.observe(value)
    merged = Histogram.from_dict(a.as_dict())
    merged.add(b)
    assert merged.counts == both.counts and merged.sum == pytest.approx(both.sum)
    assert merged.cumulative()[-1] == ("+Inf", len(first) + len(second))


def test_different_buckets_do_not_merge():
    with pytest.raises(ValueError):
        Histogram((1.0,)).add(Histogram((2.0,)))
