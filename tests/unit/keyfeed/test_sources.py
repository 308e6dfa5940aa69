"""A sensor's key sources wired once: key logs read (or followed), the feed's checks."""

from __future__ import annotations

import time

import pytest

from bridge.errors import BridgeError, TransportError
from bridge.keyfeed.sources import KeySettings, KeySources
from tests.support.fixtures import FIXTURES


def test_key_logs_fill_the_store_and_problems_are_reported(tmp_path):
    keylog = tmp_path / "keys.log"
    keylog.write_text(FIXTURES[0].keylog.read_text() + "NOT A LINE\nFUTURE_LABEL " + "00" * 32 + " " + "11" * 32 + "\n")
    lines: list[str] = []
    sources = KeySources(KeySettings(keylogs=[str(keylog)]), report=lines.append).open()
    assert len(sources.store) == 1 and not sources.requests
    assert any("fields are not hex" in line for line in lines) and any("unknown labels" in line for line in lines)
    sources.close()


def test_followed_key_logs_fill_the_store_as_they_grow(tmp_path):
    keylog = tmp_path / "keys.log"
    sources = KeySources(KeySettings(keylogs=[str(keylog)], follow=True)).open()
    keylog.write_text(FIXTURES[0].keylog.read_text())
    deadline = time.monotonic() + 5
    while not len(sources.store) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sources.store) == 1
    sources.close()


def test_an_unreadable_key_log_and_a_feed_without_certificates_are_clear_errors(tmp_path):
    with pytest.raises(BridgeError, match="cannot read key log"):
        KeySources(KeySettings(keylogs=[str(tmp_path / "missing.log")])).open()
    with pytest.raises(TransportError, match="--server-key SERVER.key and --client-cert"):
        KeySources(KeySettings(feeds=["tcp://127.0.0.1:1"])).open()
