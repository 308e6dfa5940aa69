"""``--plaintext-dir``: each connection's decrypted data as ``DIR/<flow_id>.c2s`` / ``.s2c``."""

from __future__ import annotations

import os
from typing import IO

from bridge.engine.events import Event, FlowFinished, PlaintextData


class PlaintextDirWriter:
    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._files: dict[tuple[int, int], IO[bytes]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, PlaintextData):
            key = (event.flow.flow_id, int(event.direction))
            handle = self._files.get(key)
            if handle is None:
                name = f"{event.flow.flow_id}.{event.direction.name.lower()}"
                handle = self._files[key] = open(os.path.join(self.directory, name), "wb")
            handle.write(event.data)
        elif isinstance(event, FlowFinished):
            for direction in (0, 1):
                handle = self._files.pop((event.flow.flow_id, direction), None)
                if handle is not None:
                    handle.close()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
