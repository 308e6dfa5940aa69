"""The records a snapshot service keeps: the last ``ttl`` seconds, at most
``max_records``.  Pure; the clock is injected.

A publisher keeps its own records; a broker keeps what it forwarded, of every
publisher.  Answers "everything of the last N seconds" (a sensor starting) and
"publisher P, numbers a..b" (a sensor repairing a gap), and says which asked-for
numbers are no longer held.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.keyfeed.wire import KeyRecord, PublisherRange, SeqRange


@dataclass(slots=True)
class RetentionStats:
    stored: int = 0
    duplicates: int = 0
    expired: int = 0
    evicted: int = 0  # pushed out by max_records before their TTL


class _Held:
    __slots__ = ("records", "last_seq")

    def __init__(self) -> None:
        #: seq → record, in arrival order (which is seq order for a live publisher).
        self.records: OrderedDict[int, KeyRecord] = OrderedDict()
        #: The highest number ever stored, even when expired since.
        self.last_seq = 0

    @property
    def first_seq(self) -> int:
        return next(iter(self.records)) if self.records else self.last_seq + 1


class Retention:
    def __init__(self, *, ttl: float, max_records: int = 1_000_000) -> None:
        if ttl <= 0 or max_records <= 0:
            raise ValueError("ttl and max_records must be positive")
        self.ttl = ttl
        self.max_records = max_records
        self.stats = RetentionStats()
        self._by_publisher: dict[bytes, _Held] = {}
        #: (stored_at, publisher, seq) in arrival order, for expiry and eviction.
        self._order: deque[tuple[float, bytes, int]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, record: KeyRecord, now: float) -> bool:
        """Keep ``record``; False (and nothing stored) for a duplicate."""
        held = self._by_publisher.get(record.publisher)
        if held is None:
            held = self._by_publisher[record.publisher] = _Held()
        if record.seq in held.records:
            self.stats.duplicates += 1
            return False
        held.records[record.seq] = record
        held.last_seq = max(held.last_seq, record.seq)
        self._order.append((now, record.publisher, record.seq))
        self.stats.stored += 1
        while len(self._order) > self.max_records:
            self._drop_oldest()
            self.stats.evicted += 1
        return True

    def _drop_oldest(self) -> None:
        _, publisher, seq = self._order.popleft()
        held = self._by_publisher.get(publisher)
        if held is not None:
            held.records.pop(seq, None)
            if not held.records:
                del self._by_publisher[publisher]  # bounded: only publishers with records stay

    def expire(self, now: float) -> int:
        limit = now - self.ttl
        gone = 0
        while self._order and self._order[0][0] < limit:
            self._drop_oldest()
            gone += 1
        self.stats.expired += gone
        return gone

    def since(self, oldest: float) -> Iterator[KeyRecord]:
        """Records stored at ``oldest`` or later, in arrival order."""
        for stored_at, publisher, seq in self._order:
            if stored_at >= oldest:
                record = self._by_publisher[publisher].records.get(seq)
                if record is not None:
                    yield record

    def window(self, oldest: float) -> list[PublisherRange]:
        """Per publisher, the first number stored at ``oldest`` or later and the last
        number ever stored: what a snapshot since ``oldest`` covers."""
        firsts: dict[bytes, int] = {}
        for stored_at, publisher, seq in self._order:
            if stored_at >= oldest and seq < firsts.get(publisher, seq + 1):
                firsts[publisher] = seq
        return [
            PublisherRange(publisher, firsts.get(publisher, held.last_seq + 1), held.last_seq)
            for publisher, held in self._by_publisher.items()
            if held.last_seq
        ]

    def fetch(self, publisher: bytes, first: int, last: int) -> tuple[list[KeyRecord], list[SeqRange]]:
        """Records ``first..last`` of ``publisher`` that are held, and the runs that are not."""
        held = self._by_publisher.get(publisher)
        records: list[KeyRecord] = []
        gone: list[SeqRange] = []
        run_start: int | None = None
        for seq in range(first, last + 1):
            record = held.records.get(seq) if held is not None else None
            if record is not None:
                records.append(record)
                if run_start is not None:
                    gone.append(SeqRange(publisher, run_start, seq - 1))
                    run_start = None
            elif run_start is None:
                run_start = seq
        if run_start is not None:
            gone.append(SeqRange(publisher, run_start, last))
        return records, gone

    def publisher_range(self, publisher: bytes) -> PublisherRange | None:
        held = self._by_publisher.get(publisher)
        if held is None:
            return None
        return PublisherRange(publisher, held.first_seq, held.last_seq)
