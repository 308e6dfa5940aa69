""":class:`~bridge.engine.events.KeysWanted` → a ``want`` request on the key feed:
harvesters that did not see the connection begin search for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridge.engine.events import KeysWanted

if TYPE_CHECKING:  # a requester exists only with a key feed: its modules are imported then
    from bridge.keyfeed.receiver import KeyFeedReceiver


class KeyRequester:
    def __init__(self, receiver: KeyFeedReceiver) -> None:
        from bridge.keyfeed import wire

        self.receiver = receiver
        self._request = wire.KeyRequest

    def __call__(self, event: KeysWanted) -> None:
        flow = event.flow
        self.receiver.request_keys(self._request(
            event.client_random, (flow.client_ip, flow.client_port), (flow.server_ip, flow.server_port),
            event.ended))
