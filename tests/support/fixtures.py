"""The committed captures (``tests/fixtures``, made by ``tests.fixtures.make_fixtures``):
frames, a key store filled from the clients' key log, and what tshark decrypted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bridge.capture.frames import Frame
from bridge.capture.pcapfile import read_capture
from bridge.keys.keylog import read_keylog
from bridge.keys.store import KeyStore

DIRECTORY = Path(__file__).resolve().parents[1] / "fixtures"
NAMES = ("tls13-http1", "tls12-gcm-h2", "tls12-cbc-resumed", "tls13-keyupdate")


@dataclass(frozen=True)
class Fixture:
    name: str

    @property
    def pcap(self) -> Path:
        return DIRECTORY / f"{self.name}.pcap"

    @property
    def keylog(self) -> Path:
        return DIRECTORY / f"{self.name}.keylog"

    def frames(self) -> list[Frame]:
        return list(read_capture(self.pcap))

    def store(self) -> KeyStore:
        store = KeyStore()
        for entry in read_keylog(self.keylog):
            store.add_entry(entry)
        return store

    def entries(self):  # type: ignore[no-untyped-def]
        return read_keylog(self.keylog)

    @property
    def expected(self) -> list[dict]:
        return json.loads((DIRECTORY / f"{self.name}.expected.json").read_text())["connections"]


FIXTURES = [Fixture(name) for name in NAMES]
