"""Per-publisher sequence tracking on the sensor side: duplicates, gaps, repair.

Pure: no sockets, the clock is injected (``now``).  Every publisher numbers its
records 1, 2, 3…; a sensor that receives 7 after 4 knows 5 and 6 are missing
and asks the snapshot service for them (:meth:`SequenceTracker.due_fetches`).
A heartbeat's ``last_seq`` reveals a lost tail.

Nothing is lost silently.  Every number found missing ends up in exactly one
counter::

    missing = repaired + expired + lost + skipped + outstanding()

``repaired``: received later; ``expired``: the service no longer had it (past
its retention); ``lost``: given up after ``max_attempts`` requests, or pushed out
of the ``max_window``; ``skipped``: older than the snapshot window the sensor
asked for (a sensor that starts wants the last minutes, not all history).

A number given up (expired or lost) can still arrive: a broker that has not yet
received a publisher's replay answers "gone" for what the publisher still holds.
It is then taken, and moves from its counter to ``repaired`` (the last
``MAX_GIVEN_UP_RANGES`` runs given up per publisher are remembered).

Bounded whatever a publisher sends: at most ``max_publishers`` publishers (the
least recently heard is forgotten) and ``max_window`` out-of-order numbers per
publisher.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from bridge.keyfeed.wire import SeqRange

#: At most this many ranges per publisher in one round of fetch requests.
MAX_RANGES_PER_ROUND = 32
#: At most this many sequence numbers in one fetch request.
MAX_FETCH_SPAN = 65_536
#: Runs of numbers given up (expired, lost) remembered per publisher, so that a
#: late arrival is taken rather than dropped as a duplicate.
MAX_GIVEN_UP_RANGES = 64


@dataclass(slots=True)
class SequenceStats:
    records: int = 0
    duplicates: int = 0
    gaps: int = 0  # runs of missing numbers detected
    missing: int = 0  # numbers found missing
    repaired: int = 0
    expired: int = 0
    lost: int = 0
    skipped: int = 0
    fetch_requests: int = 0
    publishers_forgotten: int = 0


class _PublisherState:
    __slots__ = ("floor", "above", "highest", "requested_at", "attempts", "progress_floor", "given_up")

    def __init__(self) -> None:
        #: Every number <= floor is accounted for (received, repaired, expired, lost, skipped).
        self.floor = 0
        #: Numbers > floor accounted for out of order.
        self.above: set[int] = set()
        #: The highest number known to exist (from records, heartbeats, snapshots).
        self.highest = 0
        self.requested_at: float | None = None
        self.attempts = 0
        self.progress_floor = 0
        #: [first, last, outcome] runs given up without being received, oldest first.
        self.given_up: list[list] = []

    def advance(self) -> None:
        above, floor = self.above, self.floor
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        self.floor = floor

    def unaccounted_runs(self, first: int, last: int) -> list[tuple[int, int]]:
        """The runs of ``first..last`` not yet accounted for."""
        first = max(first, self.floor + 1)
        runs, start = [], first
        for seq in sorted(seq for seq in self.above if first <= seq <= last):
            if seq > start:
                runs.append((start, seq - 1))
            start = seq + 1
        if start <= last:
            runs.append((start, last))
        return runs

    def remember_given_up(self, runs: list[tuple[int, int]], outcome: str) -> None:
        self.given_up.extend([first, last, outcome] for first, last in runs)
        del self.given_up[:-MAX_GIVEN_UP_RANGES]

    def take_given_up(self, seq: int) -> str | None:
        """``seq`` was given up and has arrived after all: its outcome, or None."""
        for index, (first, last, outcome) in enumerate(self.given_up):
            if first <= seq <= last:
                pieces = [[a, b, outcome] for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
                self.given_up[index:index + 1] = pieces
                return outcome
        return None

    def unaccounted(self, first: int, last: int) -> int:
        first = max(first, self.floor + 1)
        if last < first:
            return 0
        return (last - first + 1) - sum(1 for seq in self.above if first <= seq <= last)

    def mark(self, first: int, last: int) -> None:
        """``first..last`` are accounted for."""
        if first > self.floor + 1:
            self.above.update(range(first, last + 1))
            return
        if last > self.floor:
            above = self.above
            if above:
                if last - self.floor <= len(above):
                    for seq in range(self.floor + 1, last + 1):
                        above.discard(seq)
                else:
                    self.above = {seq for seq in above if seq > last}
            self.floor = last
        self.advance()

    def missing_ranges(self, limit: int) -> list[tuple[int, int]]:
        ranges: list[tuple[int, int]] = []
        start = self.floor + 1
        for seq in sorted(self.above):
            if seq > start:
                ranges.append((start, seq - 1))
            start = seq + 1
        if start <= self.highest:
            ranges.append((start, self.highest))
        return ranges[:limit]


class SequenceTracker:
    def __init__(
        self,
        *,
        max_publishers: int = 4096,
        max_window: int = 1_000_000,
        retry_after: float = 1.0,
        max_attempts: int = 5,
    ) -> None:
        self._publishers: OrderedDict[bytes, _PublisherState] = OrderedDict()
        self.max_publishers = max_publishers
        self.max_window = max_window
        self.retry_after = retry_after
        self.max_attempts = max_attempts
        self.stats = SequenceStats()
        #: While a snapshot is awaited, gaps are not requested: the snapshot fills them.
        self.holding = False

    def __len__(self) -> int:
        return len(self._publishers)

    def _state(self, publisher: bytes) -> _PublisherState:
        state = self._publishers.get(publisher)
        if state is None:
            state = self._publishers[publisher] = _PublisherState()
            while len(self._publishers) > self.max_publishers:
                self._publishers.popitem(last=False)
                self.stats.publishers_forgotten += 1
        else:
            self._publishers.move_to_end(publisher)
        return state

    def _exists_up_to(self, state: _PublisherState, last: int) -> None:
        """Numbers up to ``last`` exist: those above the old highest are missing."""
        if last > state.highest:
            self.stats.gaps += 1
            self.stats.missing += last - state.highest
            state.highest = last

    def record(self, publisher: bytes, seq: int) -> bool:
        """A record arrived; False when it is a duplicate."""
        state = self._state(publisher)
        if seq <= state.floor or seq in state.above:
            outcome = state.take_given_up(seq) if state.given_up else None
            if outcome is None:
                self.stats.duplicates += 1
                return False
            setattr(self.stats, outcome, getattr(self.stats, outcome) - 1)  # given up too early
            self.stats.repaired += 1
            self.stats.records += 1
            return True
        self.stats.records += 1
        if seq <= state.highest:
            self.stats.repaired += 1
        else:
            self._exists_up_to(state, seq - 1)
            state.highest = seq
        state.mark(seq, seq)
        while len(state.above) > self.max_window:
            self._give_up_lowest(state)
        return True

    def heartbeat(self, publisher: bytes, last_seq: int, first_seq: int) -> None:
        """A publisher has sent up to ``last_seq`` and retains from ``first_seq`` on."""
        state = self._state(publisher)
        self._exists_up_to(state, last_seq)
        if first_seq - 1 > state.floor:
            self._account(state, state.floor + 1, min(first_seq - 1, state.highest), "expired")

    def baseline(self, publisher: bytes, first_seq: int, last_seq: int) -> None:
        """A snapshot held ``first_seq..last_seq`` of this publisher in the window asked
        for; older numbers are not wanted."""
        state = self._state(publisher)
        self._exists_up_to(state, last_seq)
        if first_seq - 1 > state.floor:
            self._account(state, state.floor + 1, min(first_seq - 1, state.highest), "skipped")

    def gone(self, publisher: bytes, first: int, last: int) -> None:
        """The service no longer holds ``first..last``."""
        state = self._publishers.get(publisher)
        if state is not None:
            self._account(state, first, min(last, state.highest), "expired")

    def _account(self, state: _PublisherState, first: int, last: int, outcome: str) -> None:
        runs = state.unaccounted_runs(first, last)
        count = sum(b - a + 1 for a, b in runs)
        if count <= 0:
            return
        setattr(self.stats, outcome, getattr(self.stats, outcome) + count)
        if outcome != "skipped":
            state.remember_given_up(runs, outcome)
        state.mark(max(first, state.floor + 1), last)

    def _give_up_lowest(self, state: _PublisherState) -> None:
        ranges = state.missing_ranges(1)
        if ranges:
            self._account(state, ranges[0][0], ranges[0][1], "lost")

    def due_fetches(self, now: float) -> list[SeqRange]:
        """The missing ranges to request now (a first request, or a retry)."""
        if self.holding:
            return []
        requests: list[SeqRange] = []
        for publisher, state in self._publishers.items():
            if state.floor >= state.highest:
                state.requested_at = None
                state.attempts = 0
                continue
            if state.requested_at is not None:
                if now - state.requested_at < self.retry_after:
                    continue
                if state.floor == state.progress_floor:
                    state.attempts += 1
                    if state.attempts >= self.max_attempts:
                        self._give_up_lowest(state)
                        state.attempts = 0
                else:
                    state.attempts = 0
            state.progress_floor = state.floor
            ranges = state.missing_ranges(MAX_RANGES_PER_ROUND)
            state.requested_at = now if ranges else None
            for first, last in ranges:
                for start in range(first, last + 1, MAX_FETCH_SPAN):
                    requests.append(SeqRange(publisher, start, min(last, start + MAX_FETCH_SPAN - 1)))
        self.stats.fetch_requests += len(requests)
        return requests

    def outstanding(self) -> int:
        """Numbers known to exist and not yet accounted for, over all publishers."""
        return sum(state.unaccounted(state.floor + 1, state.highest) for state in self._publishers.values())
