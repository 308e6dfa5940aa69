"""The flow log: one JSON object per line per finished connection, written at once
(live readers — Zeek's Input framework, the IPS — follow the file).

To a stream (``tls-bridge decrypt --flows FILE|-``), flushed per line; or
appended to a file shared by several processes (``tls-bridge run``'s workers):
one ``write(2)`` per line on an ``O_APPEND`` descriptor keeps concurrent lines whole.
"""

from __future__ import annotations

import json
import os
import sys
from typing import IO


class FlowLog:
    def __init__(self, *, stream: IO[str] | None = None, fd: int | None = None) -> None:
        self.stream, self.fd = stream, fd
        self.lines = 0

    @classmethod
    def to_file(cls, path: str) -> FlowLog:
        """``path`` truncated ('-': standard output)."""
        if path == "-":
            return cls(stream=sys.stdout)
        return cls(stream=open(path, "w", encoding="utf-8"))

    @classmethod
    def appending(cls, path: str) -> FlowLog:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return cls(fd=os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640))

    def write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        if self.fd is not None:
            os.write(self.fd, line.encode())
        else:
            assert self.stream is not None
            self.stream.write(line)
            self.stream.flush()
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        elif self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()
