"""What the engine tells its outputs: typed, immutable events.

Per connection, in order: :class:`FlowStarted` (its first segment), :class:`KeysWanted` (its ClientHello was seen and no
secrets are here: a driver may ask the harvesters), :class:`PlaintextData`
(decrypted application data of one direction, in stream order, any number),
:class:`FlowFinished` (it is over; its :class:`~bridge.engine.summary.FlowSummary`
becomes the flow log line), and possibly a :class:`KeysWanted` with ``ended``.
Across connections, events come in the order of the frames that caused them, except
:class:`FlowStarted`: a connection whose server has not answered yet, which the
compiled path's front holds (:mod:`bridge.engine.lanes`), is started when it is
promoted or ends, possibly after other connections' events; find a started
connection by its addresses, not by the packet being handled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.engine.packets import format_endpoint
from bridge.engine.summary import FlowSummary
from bridge.tls.state import Direction


class FlowInfo(NamedTuple):
    """Identity of one TCP connection, oriented client → server (a named tuple: one
    is made per connection, a flood's too, and a tuple is made fastest)."""

    flow_id: int
    ip_version: int
    client_ip: bytes
    client_port: int
    server_ip: bytes
    server_port: int
    first_timestamp_ns: int

    @property
    def client(self) -> str:
        return format_endpoint(self.client_ip, self.client_port)

    @property
    def server(self) -> str:
        return format_endpoint(self.server_ip, self.server_port)


@dataclass(frozen=True, slots=True)
class FlowStarted:
    """A new connection (its first segment: a SYN, or data of one picked up mid-way)."""

    flow: FlowInfo


@dataclass(frozen=True, slots=True)
class PlaintextData:
    """Decrypted application data of one direction, in stream order."""

    flow: FlowInfo
    direction: Direction
    data: bytes = field(repr=False)
    timestamp_ns: int


class FlowFinished:
    """A connection is over; ``summary`` is what the flow log says of it.

    The summary is built when first read (``build``): an output that logs the
    connection in a summary line only (see ``never_completed``) never pays for it;
    ``status`` and ``ts_end`` (the summary's) are at hand without it."""

    __slots__ = ("flow", "ended_by", "never_completed", "status", "ts_end", "_summary", "_build", "parent")

    def __init__(self, flow: FlowInfo, ended_by: str, summary: FlowSummary | None = None, *,
                 never_completed: bool = False, build: Callable[[], FlowSummary] | None = None,
                 status: str | None = None, ts_end: float | None = None, parent: int | None = None) -> None:
        if summary is None and build is None:
            raise TypeError("FlowFinished needs a summary or a way to build it")
        self.flow = flow
        self.ended_by = ended_by  # "fin", "rst", "idle", "evicted", "end_of_capture"
        #: The handshake never completed: the client sent its ClientHello and nothing
        #: more (or nothing), no secrets were there and nothing was decrypted (a scan,
        #: a flood, an unanswered client).  The flow log may summarise such connections.
        self.never_completed = never_completed
        #: A synthetic connection made of part of another (an HTTP/3 request stream of a
        #: QUIC connection, :mod:`bridge.engine.quic`): that connection's flow id.  It
        #: has no flow log line of its own: the parent's ``synthetic`` field lists it.
        self.parent = parent
        self._summary = summary
        self._build = build
        self.status = status if status is not None else summary.status  # type: ignore[union-attr]
        self.ts_end = ts_end if ts_end is not None else summary.ts_end  # type: ignore[union-attr]

    @property
    def summary(self) -> FlowSummary:
        if self._summary is None:
            self._summary = self._build()  # type: ignore[misc]
            self._build = None
        return self._summary

    @property
    def record(self) -> dict[str, object]:
        """The flow log line (a JSON-ready dict) without the outputs' annotations."""
        return self.summary.to_record()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not FlowFinished:
            return NotImplemented
        return (self.flow, self.ended_by, self.summary, self.never_completed) == (
            other.flow, other.ended_by, other.summary, other.never_completed)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"FlowFinished(flow={self.flow!r}, ended_by={self.ended_by!r}, status={self.status!r})"


@dataclass(frozen=True, slots=True)
class KeysWanted:
    """A TLS connection began (its ClientHello is parsed) and the key store has no
    secrets for it (once per connection, when the engine asks for keys): a driver
    asks the harvesters for them over the key feed.  Once more with ``ended`` when
    the connection ends still without them: a harvester stops searching memory
    where the connection no longer is."""

    flow: FlowInfo
    client_random: bytes
    ended: bool = False


Event = FlowStarted | PlaintextData | FlowFinished | KeysWanted
