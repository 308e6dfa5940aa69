"""The flow log: one JSON object per line per finished connection, written at once
(live readers — Zeek's Input framework, the IPS — follow the file).

Connections whose handshake never completed (the client sent its ClientHello, or
nothing, and nothing more; no secrets; nothing decrypted: scans, floods, clients
nobody answered) are summarised by default (``never_completed = "summary"``): each
minute of capture time, the first ``never_completed_sample`` of them get their
line as any connection does, and one summary line counts them all, per server
(at most ``never_completed_servers`` servers by name, the rest together), per
status and per end::

    {"summary":"never_completed","ts_start":1700000040.0,"ts_end":1700000100.0,"connections":51234,
     "sampled":10,"servers":{"198.51.100.10:8443":30000,...},"other_servers":0,"statuses":{"partial":51234},
     "ended_by":{"end_of_capture":51234}}

A summary line has no ``flow_id`` or ``client``: readers that take flow records
skip it.  Decrypted connections, and those that failed with their secrets at hand,
always get their line.  ``never_completed = "each"`` logs a line per connection.

To a stream (``tls-bridge decrypt --flows FILE|-``), flushed per line; or
appended to a file shared by several processes (``tls-bridge run``'s workers):
one ``write(2)`` per line on an ``O_APPEND`` descriptor keeps concurrent lines whole.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from bridge.engine.events import FlowFinished
from bridge.engine.packets import format_endpoint
from bridge.options import option


@dataclass
class FlowLogSettings:
    """The flow log."""

    never_completed: str = option("summary", "connections whose handshake never completed (a ClientHello or "
                                  "nothing from the client, no secrets, nothing decrypted): 'summary' (a sample "
                                  "of lines and one summary line a minute) or 'each' (a line each)",
                                  choices=("summary", "each"), flag="--never-completed", metavar="MODE")
    never_completed_sample: int = option(10, "never-completed connections logged in full each minute beside the "
                                         "summary", low=0, high=1_000_000, flag="--never-completed-sample",
                                         metavar="N")
    never_completed_servers: int = option(100, "servers counted by name in a summary line (the rest together)",
                                          low=1, high=100_000, flag="--never-completed-servers", metavar="N")


class NeverCompletedSummary:
    """The never-completed connections of the current minute of capture time."""

    __slots__ = ("settings", "minute", "connections", "sampled", "servers", "other_servers", "statuses",
                 "ended_by")

    def __init__(self, settings: FlowLogSettings) -> None:
        self.settings = settings
        self.minute: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.connections = self.sampled = self.other_servers = 0
        #: by (address, port): formatted only in the record, once per server
        self.servers: dict[tuple[bytes, int], int] = {}
        self.statuses: dict[str, int] = {}
        self.ended_by: dict[str, int] = {}

    def add(self, server: tuple[bytes, int], status: str, ended_by: str) -> bool:
        """Count one connection; True if it is in the sample (gets its own line)."""
        self.connections += 1
        servers = self.servers
        if server in servers:
            servers[server] += 1
        elif len(servers) < self.settings.never_completed_servers:
            servers[server] = 1
        else:
            self.other_servers += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.ended_by[ended_by] = self.ended_by.get(ended_by, 0) + 1
        if self.sampled < self.settings.never_completed_sample:
            self.sampled += 1
            return True
        return False

    def record(self) -> dict[str, object] | None:
        """The summary line of the minute (None if it had none), and a new minute begins."""
        if not self.connections or self.minute is None:
            return None
        record: dict[str, object] = {
            "summary": "never_completed", "ts_start": float(self.minute * 60), "ts_end": float(self.minute * 60 + 60),
            "connections": self.connections, "sampled": self.sampled, "servers": {format_endpoint(*server): count for server, count in self.servers.items()},
            "other_servers": self.other_servers, "statuses": dict(self.statuses), "ended_by": dict(self.ended_by),
        }
        self._reset()
        return record


class FlowLog:
    def __init__(self, *, stream: IO[str] | None = None, fd: int | None = None,
                 settings: FlowLogSettings | None = None) -> None:
        import json  # only a run with a flow log needs it

        self._dumps = json.JSONEncoder(separators=(",", ":")).encode
        self.stream, self.fd = stream, fd
        self.settings = settings or FlowLogSettings()
        self.lines = 0
        #: Never-completed connections: counted (all), and those without a line of their own.
        self.never_completed = 0
        self.summarised = 0
        self._summary = NeverCompletedSummary(self.settings) if self.settings.never_completed == "summary" else None

    @classmethod
    def to_file(cls, path: str, settings: FlowLogSettings | None = None) -> FlowLog:
        """``path`` truncated ('-': standard output)."""
        if path == "-":
            return cls(stream=sys.stdout, settings=settings)
        return cls(stream=open(path, "w", encoding="utf-8"), settings=settings)

    @classmethod
    def appending(cls, path: str, settings: FlowLogSettings | None = None) -> FlowLog:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return cls(fd=os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640), settings=settings)

    def finished(self, event: FlowFinished, annotations: Callable[[], dict[str, object]] | None = None) -> None:
        """A connection is over: its line, or (never completed, summarised) a count
        in its minute's summary line.  ``annotations``: the outputs' fields of its line."""
        summary = self._summary
        if summary is not None:
            minute = int(event.ts_end // 60)
            if summary.minute != minute and (summary.minute is None or minute > summary.minute):
                record = summary.record()
                if record is not None:
                    self.write(record)
                summary.minute = minute
            if event.never_completed:
                self.never_completed += 1
                flow = event.flow
                if not summary.add((flow.server_ip, flow.server_port), event.status, event.ended_by):
                    self.summarised += 1
                    return
        elif event.never_completed:
            self.never_completed += 1
        self.write(event.summary.to_record(**(annotations() if annotations is not None else {})))

    def flush_summary(self) -> None:
        """Write the current minute's summary line now (end of input)."""
        if self._summary is not None:
            record = self._summary.record()
            if record is not None:
                self.write(record)

    def write(self, record: dict[str, object]) -> None:
        line = self._dumps(record) + "\n"
        if self.fd is not None:
            os.write(self.fd, line.encode())
        else:
            assert self.stream is not None
            self.stream.write(line)
            self.stream.flush()
        self.lines += 1

    def close(self) -> None:
        self.flush_summary()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        elif self.stream is not None and self.stream is not sys.stdout:
            self.stream.close()
