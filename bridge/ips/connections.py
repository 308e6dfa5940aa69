"""Where each original connection's sequence numbers are, so a reset lands.

Pure: fed the TCP segments the IPS sees on the gateway (both directions), it
keeps per connection, per direction, the next sequence number the sender will
use, bounded (least recently active out).  A RST is accepted by a TCP stack when
its sequence number is in the receive window; the next expected number is the
surest.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from bridge.engine.packets import FIN, RST, SYN, TcpSegment


@dataclass(slots=True)
class Side:
    """What one side of a connection sends next."""

    next_seq: int


@dataclass(slots=True)
class TrackedConnection:
    #: (ip, port) of each side → what that side sends next
    sides: dict[tuple[str, int], Side]
    closed: bool = False


def endpoint(address: bytes, port: int) -> tuple[str, int]:
    """(address as text, port): a side of a connection as the table names it."""
    return str(ipaddress.ip_address(address)), port


class ConnectionTable:
    def __init__(self, *, limit: int = 200_000) -> None:
        self._table: OrderedDict[tuple[str, int, str, int], TrackedConnection] = OrderedDict()
        self.limit = limit

    def __len__(self) -> int:
        return len(self._table)

    @staticmethod
    def key(a: tuple[str, int], b: tuple[str, int]) -> tuple[str, int, str, int]:
        return (*min(a, b), *max(a, b))  # type: ignore[return-value]

    def observe(self, segment: TcpSegment) -> None:
        src, dst = endpoint(segment.src, segment.sport), endpoint(segment.dst, segment.dport)
        key = self.key(src, dst)
        connection = self._table.get(key)
        if connection is None:
            if segment.flags & RST:
                return
            connection = self._table[key] = TrackedConnection({})
            while len(self._table) > self.limit:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(key)
        length = len(segment.payload) + (1 if segment.flags & SYN else 0) + (1 if segment.flags & FIN else 0)
        next_seq = (segment.seq + length) & 0xFFFFFFFF
        side = connection.sides.get(src)
        if side is None or _after(next_seq, side.next_seq):
            connection.sides[src] = Side(next_seq)
        if segment.flags & RST:
            connection.closed = True

    def get(self, a: tuple[str, int], b: tuple[str, int]) -> TrackedConnection | None:
        return self._table.get(self.key(a, b))


def _after(a: int, b: int) -> bool:
    """a comes after b in sequence space (RFC 1982)."""
    return 0 < (a - b) & 0xFFFFFFFF < 0x80000000
