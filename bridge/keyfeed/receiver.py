"""A sensor's key feed intake: a :class:`~bridge.keyfeed.subscriber.Subscriber`
in a background thread filling the decryptor's :class:`~bridge.keys.store.KeyStore`.

Secrets from the feed carry a TTL in the store (wall clock): a secret whose
connection never shows up does not stay in memory; one whose connection ends
is dropped by the decryptor when it logs the flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.keyfeed import wire
from bridge.keyfeed.security import CurveClient
from bridge.keyfeed.subscriber import Subscriber, SubscriberConfig, SubscriberStats
from bridge.keys.store import KeyStore


class KeyFeedReceiver:
    def __init__(
        self,
        store: KeyStore,
        config: SubscriberConfig,
        client: CurveClient | None,
        *,
        ttl: float = 600.0,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.subscriber = Subscriber(config, client=client, on_record=self._add, on_failure=on_failure)

    def _add(self, record: wire.KeyRecord) -> None:
        origin: dict[str, object] = dict(record.origin.as_dict())
        origin["publisher"] = record.publisher.hex()
        self.store.add_secrets(record.client_random, record.secrets, now=time.monotonic(), ttl=self.ttl, origin=origin)

    def request_keys(self, request: wire.KeyRequest) -> None:
        self.subscriber.request_keys(request)

    def _expire(self) -> None:
        self.store.expire(time.monotonic())

    def start(self, *, sync_timeout: float | None = None) -> KeyFeedReceiver:
        """Start; with ``sync_timeout``, first wait (at most that long) for the snapshots."""
        if sync_timeout:
            self.subscriber.wait_synced(sync_timeout)
        self.subscriber.start(on_tick=self._expire)
        return self

    @property
    def stats(self) -> SubscriberStats:
        return self.subscriber.stats

    def summary(self) -> str:
        return describe_feed(self.subscriber)

    def close(self) -> None:
        self.subscriber.close()


def describe_feed(subscriber: Subscriber) -> str:
    """One line of the feed's counters (no secrets)."""
    stats, seq = subscriber.stats, subscriber.tracker.stats
    text = (
        f"key feed: {stats.records} records ({seq.duplicates} duplicates), {stats.heartbeats} heartbeats; "
        f"gaps {seq.gaps}: {seq.missing} missing, {seq.repaired} repaired, {seq.expired} expired at the source, "
        f"{seq.lost} lost, {seq.skipped} before the window, {subscriber.tracker.outstanding()} outstanding"
    )
    if stats.key_requests or stats.key_requests_dropped:
        text += f"; {stats.key_requests} key requests sent to the harvesters ({stats.key_requests_dropped} dropped)"
    if stats.malformed:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(stats.malformed_reasons.items()))
        text += f"; {stats.malformed} malformed messages dropped ({reasons})"
    if stats.snapshot_timeouts:
        text += f"; {stats.snapshot_timeouts} snapshot requests unanswered"
    if stats.handshake_failures:
        text += f"; {stats.handshake_failures} failed handshakes"
    return text
