"""Follow a key log file while an application writes it (``tail -f``), feeding
the key store.  A thin driver around :func:`bridge.keylog.parse_line`.

Handles a file that does not exist yet, partial last lines (kept until their
newline arrives), truncation and replacement (rotation): the file is reopened
from its start.
"""

from __future__ import annotations

import os
import threading

from bridge.keylog import KeyLogStats, parse_lines
from bridge.keystore import KeyStore


class KeyLogFollower:
    def __init__(self, path: str, store: KeyStore, *, interval: float = 0.1) -> None:
        self.path = path
        self.store = store
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
        added = 0
        for entry in parse_lines(lines, self.stats):
            self.store.add_entry(entry)
            added += 1
        return added
