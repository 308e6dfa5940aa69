"""The key store: each connection's :class:`~bridge.secrets.ConnectionSecrets` by
client random, filled by key log files or a live feed while packets flow.

Thread-safe: a feed thread may :meth:`KeyStore.add` while the packet loop reads.
The packet loop learns about new arrivals with :meth:`KeyStore.take_arrivals`.
Bounded: at most ``max_entries`` client randoms; the oldest go first (counted).
Secrets given with a ``ttl`` (the live feed's) expire that many seconds after
they arrived (clock injected as ``now``, see :meth:`KeyStore.expire`); secrets
from key log files stay until their connection is done (:meth:`KeyStore.forget`).

Secrets a key log gives by something other than the client random — ``RSA``
lines (the encrypted pre-master secret's first 8 bytes) and ``RSA
Session-ID:`` lines (the session ID) — are kept by a *handle*
(:func:`~bridge.secrets.rsa_handle`, :func:`~bridge.secrets.session_handle`),
bounded the same way; their arrivals are reported by handle too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass

from bridge.keys.keylog import KeyLogEntry
from bridge.secrets import RSA, RSA_SESSION_ID, ConnectionSecrets, rsa_handle, session_handle


@dataclass(slots=True)
class KeyStoreStats:
    added: int = 0
    evicted: int = 0
    expired: int = 0
    forgotten: int = 0


class KeyStore:
    def __init__(self, *, max_entries: int = 1_000_000) -> None:
        self._entries: OrderedDict[bytes, ConnectionSecrets] = OrderedDict()
        #: client random → when its secrets (given with a ttl) last arrived
        self._arrived: dict[bytes, float] = {}
        #: rsa_handle()/session_handle() → pre-master or master secret
        self._handles: OrderedDict[bytes, bytes] = OrderedDict()
        self._arrivals: list[bytes] = []
        #: (expiry time, client random) in arrival order; TTLs are per source, so
        #: one deque per TTL keeps each in expiry order.
        self._expiries: dict[float, deque[tuple[float, bytes]]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.stats = KeyStoreStats()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"KeyStore(entries={len(self._entries)})"

    def add(self, client_random: bytes, label: str, secret: bytes, *, now: float = 0.0) -> None:
        self.add_secrets(client_random, {label: secret}, now=now)

    def add_secrets(
        self,
        client_random: bytes,
        secrets: Mapping[str, bytes],
        *,
        now: float = 0.0,
        ttl: float | None = None,
        origin: dict[str, object] | None = None,
    ) -> None:
        """Several secrets of one connection at once (a key feed record)."""
        with self._lock:
            known = self._entries.get(client_random)
            if known is None:
                known = self._entries[client_random] = ConnectionSecrets(client_random)
                while len(self._entries) > self.max_entries:
                    evicted, _ = self._entries.popitem(last=False)
                    self._arrived.pop(evicted, None)
                    self.stats.evicted += 1
            known.secrets.update(secrets)
            if origin:
                known.origin = origin
            if ttl is not None:
                self._arrived[client_random] = now
                queue = self._expiries.setdefault(ttl, deque())
                queue.append((now + ttl, client_random))
                if len(queue) > 2 * self.max_entries:  # a publisher repeating itself
                    _, oldest = queue.popleft()
                    if self._entries.pop(oldest, None) is not None:
                        self._arrived.pop(oldest, None)
                        self.stats.evicted += 1
            self.stats.added += len(secrets)
            self._arrivals.append(client_random)

    def add_entry(self, entry: KeyLogEntry, *, now: float = 0.0) -> None:
        if entry.label == RSA:
            self.add_handle(rsa_handle(entry.handle), entry.secret)
        elif entry.label == RSA_SESSION_ID:
            self.add_handle(session_handle(entry.handle), entry.secret)
        else:
            self.add(entry.client_random, entry.label, entry.secret, now=now)

    def add_handle(self, handle: bytes, secret: bytes) -> None:
        """A secret found by a handle (:func:`rsa_handle`, :func:`session_handle`)."""
        with self._lock:
            self._handles[handle] = secret
            self._handles.move_to_end(handle)
            while len(self._handles) > self.max_entries:
                self._handles.popitem(last=False)
                self.stats.evicted += 1
            self.stats.added += 1
            self._arrivals.append(handle)

    def lookup(self, client_random: bytes) -> ConnectionSecrets | None:
        with self._lock:
            return self._entries.get(client_random)

    def has(self, client_random: bytes) -> bool:
        """Whether secrets for the client random are here: without the lock (one
        dict membership test is atomic), for the per-connection checks of a flood."""
        return client_random in self._entries

    def lookup_handle(self, handle: bytes) -> bytes | None:
        with self._lock:
            return self._handles.get(handle)

    def forget(self, client_random: bytes, handles: tuple[bytes, ...] = ()) -> None:
        """Drop a connection's secrets once it is done (and those it found by ``handles``)."""
        with self._lock:
            if self._entries.pop(client_random, None) is not None:
                self._arrived.pop(client_random, None)
                self.stats.forgotten += 1
            for handle in handles:
                if self._handles.pop(handle, None) is not None:
                    self.stats.forgotten += 1

    @property
    def has_arrivals(self) -> bool:
        """Cheap check (no lock): secrets arrived since the last take_arrivals()."""
        return bool(self._arrivals)

    def take_arrivals(self) -> list[bytes]:
        """Client randoms (and handles) that received secrets since the last call."""
        with self._lock:
            arrivals, self._arrivals = self._arrivals, []
            return arrivals

    def expire(self, now: float) -> int:
        """Drop secrets whose TTL ran out (those given with one); returns how many
        client randoms went.  A key set refreshed since keeps its later expiry."""
        gone = 0
        with self._lock:
            for ttl, queue in self._expiries.items():
                while queue and queue[0][0] <= now:
                    expiry, client_random = queue.popleft()
                    arrived = self._arrived.get(client_random)
                    if arrived is not None and arrived + ttl <= expiry:
                        del self._entries[client_random]
                        del self._arrived[client_random]
                        gone += 1
            self.stats.expired += gone
        return gone
