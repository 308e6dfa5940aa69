"""TLS 1.2 session memory: master secrets by session ID and by session ticket (as
Wireshark keeps them), so a resumed connection is decrypted with the secret of
the connection that established the session.  Bounded, oldest first out."""

from __future__ import annotations

from collections import OrderedDict


class SessionCache:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()
        self.max_entries = max_entries

    def __repr__(self) -> str:
        return f"SessionCache(entries={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: bytes, master_secret: bytes) -> None:
        if not key:
            return
        self._entries[key] = master_secret
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(self, key: bytes) -> bytes | None:
        return self._entries.get(key) if key else None
