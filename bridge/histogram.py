"""A fixed-bucket histogram of durations, cheap enough for the packet loop and
plain enough to cross a process pipe (the sensor's workers report theirs to the
supervisor, which serves them with ``prometheus-client``).

Pure: the caller measures time (an injected clock) and observes seconds.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

#: Seconds: from a key log line read at once to a harvester's search, to giving up (key_wait).
KEY_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    """Counts per bucket (``counts[i]``: observations ≤ ``bounds[i]`` and above the
    bucket before; the last is above every bound), their sum, and their number."""

    bounds: tuple[float, ...] = KEY_LAG_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """(``le``, observations ≤ le) as Prometheus buckets, ``+Inf`` last."""
        out, running = [], 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), self.counts):
            running += count
            out.append((bound, running))
        return out

    def as_dict(self) -> dict[str, object]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Histogram":
        return cls(tuple(data["bounds"]), list(data["counts"]), float(data["sum"]))  # type: ignore[arg-type]

    def add(self, other: "Histogram") -> None:
        if other.bounds != self.bounds:
            raise ValueError("histograms with different buckets")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum


def _le(bound: float) -> str:
    return repr(float(bound))
