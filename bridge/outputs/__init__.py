"""Where the engine's events go: the flow log, plaintext files, key requests to the
harvesters, synthetic cleartext frames (:mod:`bridge.reinject`).

:class:`Outputs` is the one event sink the front ends give the engine.  Its order
is fixed here, not by whoever wires it: key requests first (a harvester starts
searching at once), then re-injection and plaintext files, and the flow log last,
so that a finished connection's line names its synthetic connection.  An engine
run's events come in one call (:meth:`Outputs.batch`), in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bridge.engine.events import Event, FlowFinished, KeysWanted
from bridge.outputs.flowlog import FlowLog, FlowLogSettings
from bridge.outputs.plaintext import PlaintextDirWriter
from bridge.outputs.requests import KeyRequester

if TYPE_CHECKING:
    from bridge.reinject.sink import ReinjectSink

__all__ = ["FlowLog", "FlowLogSettings", "KeyRequester", "Outputs", "PlaintextDirWriter"]


class Outputs:
    def __init__(self, *, flow_log: FlowLog | None = None, reinject: ReinjectSink | None = None,
                 plaintext: PlaintextDirWriter | None = None, requests: KeyRequester | None = None,
                 extra: Sequence[Callable[[Event], None]] = ()) -> None:
        self.flow_log = flow_log
        self.reinject = reinject
        self.plaintext = plaintext
        self.requests = requests
        self.extra = tuple(extra)
        #: QUIC: flow id → its HTTP/3 requests' synthetic connections, until its own line
        self._children: dict[int, list[dict[str, object]]] = {}

    def __call__(self, event: Event) -> None:
        if self.requests is not None and event.__class__ is KeysWanted:
            self.requests(event)  # type: ignore[arg-type]
        if self.reinject is not None:
            self.reinject(event)
        self._after_reinjection(event)

    def batch(self, events: list[Event]) -> None:
        """An engine run's events (:class:`~bridge.engine.engine.Engine` hands each run's
        over at once): each output takes all of them in turn, in :meth:`__call__`'s
        order of outputs (key requests, re-injection, plaintext files and the flow log,
        the extra sinks), and every output sees them in order; re-injection makes a
        direction's plaintexts in a row as one burst."""
        requests = self.requests
        if requests is not None:
            for event in events:
                if event.__class__ is KeysWanted:
                    requests(event)  # type: ignore[arg-type]
        if self.reinject is not None:
            self.reinject.batch(events)
        if self.plaintext is None and not self.extra:  # only the flow log: finished flows
            for event in events:
                if event.__class__ is FlowFinished:
                    self._after_reinjection(event)
            return
        for event in events:
            self._after_reinjection(event)

    def _after_reinjection(self, event: Event) -> None:
        if self.plaintext is not None:
            self.plaintext(event)
        if event.__class__ is FlowFinished:
            synthetic = self.reinject.describe(event.flow.flow_id) if self.reinject is not None else None
            parent = event.parent  # type: ignore[union-attr]
            if parent is not None:  # an HTTP/3 request of a QUIC connection: listed in the parent's line
                if synthetic is not None:
                    self._children.setdefault(parent, []).append(synthetic)
                for sink in self.extra:
                    sink(event)
                return
            children = self._children.pop(event.flow.flow_id, None)
            if children is not None and synthetic is None:
                synthetic = _combined(children)
            if self.flow_log is not None:
                self.flow_log.finished(event, None if self.reinject is None  # type: ignore[arg-type]
                                       else lambda: {"synthetic": synthetic})
        for sink in self.extra:
            sink(event)

    def close(self) -> None:
        """End of input: synthetic connections still open are closed, files flushed."""
        if self.reinject is not None:
            self.reinject.close()
        if self.plaintext is not None:
            self.plaintext.close()
        if self.flow_log is not None:
            self.flow_log.close()


def _combined(children: list[dict[str, object]]) -> dict[str, object]:
    """A QUIC connection's ``synthetic`` field: its requests' synthetic connections
    (one after the other on its 4-tuple) as one record of the same form, with how
    many there were (``connections``)."""
    combined = dict(children[0])
    for key in ("segments", "bytes_c2s", "bytes_s2c"):
        combined[key] = sum(int(child.get(key) or 0) for child in children)  # type: ignore[call-overload]
    combined["connections"] = len(children)
    return combined
