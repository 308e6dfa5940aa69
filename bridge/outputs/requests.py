""":class:`~bridge.engine.events.KeysWanted` → a ``want`` request on the key feed:
harvesters that did not see the connection begin search for it."""

from __future__ import annotations

from bridge.engine.events import KeysWanted
from bridge.keyfeed import wire
from bridge.keyfeed.receiver import KeyFeedReceiver


class KeyRequester:
    def __init__(self, receiver: KeyFeedReceiver) -> None:
        self.receiver = receiver

    def __call__(self, event: KeysWanted) -> None:
        flow = event.flow
        self.receiver.request_keys(wire.KeyRequest(
            event.client_random, (flow.client_ip, flow.client_port), (flow.server_ip, flow.server_port),
            event.ended))
