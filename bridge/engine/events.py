"""What the engine tells its outputs: typed, immutable events.

Per connection, in order: :class:`FlowStarted` (its first segment), :class:`KeysWanted` (its ClientHello was seen and no
secrets are here: a driver may ask the harvesters), :class:`PlaintextData`
(decrypted application data of one direction, in stream order, any number),
:class:`FlowFinished` (it is over; its :class:`~bridge.engine.summary.FlowSummary`
becomes the flow log line), and possibly a :class:`KeysWanted` with ``ended``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.engine.packets import format_endpoint
from bridge.engine.summary import FlowSummary
from bridge.tls.state import Direction


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """Identity of one TCP connection, oriented client → server."""

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


@dataclass(frozen=True, slots=True)
class FlowFinished:
    """A connection is over; ``summary`` is what the flow log says of it."""

    flow: FlowInfo
    ended_by: str  # "fin", "rst", "idle", "evicted", "end_of_capture"
    summary: FlowSummary

    @property
    def record(self) -> dict[str, object]:
        """The flow log line (a JSON-ready dict) without the outputs' annotations."""
        return self.summary.to_record()


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
