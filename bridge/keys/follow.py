"""Follow a key log file while an application writes it (``tail -f``), handing
each batch of new entries to a callback (the key store, or the key feed
publisher).  A thin driver around :func:`bridge.keys.keylog.parse_lines`.

Handles a file that does not exist yet, partial last lines (kept until their
newline arrives), truncation and replacement (rotation): the file is reopened
from its start.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from bridge.keys.keylog import KeyLogEntry, KeyLogStats, parse_lines
from bridge.keys.store import KeyStore

EntriesSink = Callable[[list[KeyLogEntry]], None]


def into_store(store: KeyStore) -> EntriesSink:
    def add(entries: list[KeyLogEntry]) -> None:
        for entry in entries:
            store.add_entry(entry)

    return add


class KeyLogFollower:
    def __init__(self, path: str, on_entries: EntriesSink, *, interval: float = 0.1) -> None:
        self.path = path
        self.on_entries = on_entries
        self.interval = interval
        self.stats = KeyLogStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"keylog-follow:{path}", daemon=True)
        self._handle = None
        self._inode: int | None = None
        self._partial = ""

    def start(self) -> "KeyLogFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # what was written last
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def _reopen_if_replaced(self) -> None:
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return
        replaced = self._inode is not None and status.st_ino != self._inode
        truncated = self._handle is not None and status.st_size < self._handle.tell()
        if self._handle is None or replaced or truncated:
            if self._handle is not None:
                self._handle.close()
            self._handle = open(self.path, encoding="ascii", errors="replace", newline=None)
            self._inode = status.st_ino
            self._partial = ""

    def poll(self) -> int:
        """Read what was appended; returns the number of entries added."""
        self._reopen_if_replaced()
        if self._handle is None:
            return 0
        text = self._partial + self._handle.read()
        lines = text.split("\n")
        self._partial = lines.pop()  # incomplete last line (or "")
        entries = list(parse_lines(lines, self.stats))
        if entries:
            self.on_entries(entries)
        return len(entries)
