"""Run the decryptor over a capture (in-process, or the CLI) and collect what it produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bridge.capture.pcapfile import read_capture
from bridge.engine.engine import Engine
from bridge.engine.settings import EngineSettings
from bridge.engine.events import Event, FlowFinished, PlaintextData
from bridge.keys.keylog import read_keylog
from bridge.keys.store import KeyStore
from bridge.tls.state import Direction


@dataclass
class DecryptedFlow:
    record: dict
    c2s: bytes
    s2c: bytes

    def __repr__(self) -> str:
        return f"DecryptedFlow({self.record.get('status')}, c2s={len(self.c2s)} B, s2c={len(self.s2c)} B, {self.record.get('reason')!r})"


@dataclass
class DecryptResult:
    flows: list[DecryptedFlow] = field(default_factory=list)
    engine: Engine | None = None

    def by_endpoints(self, client: str, server: str) -> DecryptedFlow:
        matches = [f for f in self.flows if f.record["client"] == client and f.record["server"] == server]
        assert len(matches) == 1, f"{len(matches)} flows for {client} -> {server}: {[f.record for f in self.flows]}"
        return matches[0]

    @property
    def statuses(self) -> list[str]:
        return [flow.record["status"] for flow in self.flows]


class Collector:
    def __init__(self) -> None:
        self.data: dict[tuple[int, Direction], list[bytes]] = defaultdict(list)
        self.result = DecryptResult()

    def __call__(self, event: Event) -> None:
        if isinstance(event, PlaintextData):
            self.data[(event.flow.flow_id, event.direction)].append(event.data)
        elif isinstance(event, FlowFinished):
            flow_id = event.flow.flow_id
            self.result.flows.append(
                DecryptedFlow(
                    event.record,
                    b"".join(self.data.pop((flow_id, Direction.C2S), [])),
                    b"".join(self.data.pop((flow_id, Direction.S2C), [])),
                )
            )


def keystore_from(*keylogs: str | os.PathLike) -> KeyStore:
    store = KeyStore()
    for path in keylogs:
        for entry in read_keylog(path):
            store.add_entry(entry)
    return store


def decrypt_frames(frames, store: KeyStore, config: EngineSettings | None = None) -> DecryptResult:
    collector = Collector()
    engine = Engine(store, config, output=collector)
    engine.run(frames)
    engine.finish()
    collector.result.engine = engine
    return collector.result


def decrypt_capture(pcap: str | os.PathLike, *keylogs: str | os.PathLike, config: EngineSettings | None = None) -> DecryptResult:
    return decrypt_frames(read_capture(pcap), keystore_from(*keylogs), config)


def assert_matches_tshark(result: DecryptResult, followed: list, *, expect_streams: int | None = None) -> None:
    """Per connection and direction, our plaintext is byte-identical to tshark's."""
    if expect_streams is not None:
        assert len(followed) == expect_streams, [(s.client, s.server) for s in followed]
    assert followed, "tshark followed no stream"
    for stream in followed:
        ours = result.by_endpoints(stream.client, stream.server)
        assert ours.c2s == stream.c2s, f"c2s differs for {stream.client}: ours {len(ours.c2s)} B, tshark {len(stream.c2s)} B"
        assert ours.s2c == stream.s2c, f"s2c differs for {stream.client}: ours {len(ours.s2c)} B, tshark {len(stream.s2c)} B"


def decrypt_cli(capture: Path, keylog: Path, workdir: Path, *extra: str) -> list[dict]:
    """``tls-bridge decrypt -r CAPTURE --keylog KEYLOG --flows WORKDIR/flows.jsonl -q EXTRA...`` as a
    subprocess (it must exit 0); the flow log's records."""
    flows = workdir / "flows.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(capture), "--keylog", str(keylog),
         "--flows", str(flows), "-q", *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in flows.read_text().splitlines()]


def summary_for(info, *, ts_end_ns: int | None = None, status: str = "decrypted"):  # type: ignore[no-untyped-def]
    """A minimal :class:`~bridge.engine.summary.FlowSummary` of a flow (for output tests)."""
    from bridge.engine.summary import DirectionSummary, FlowSummary

    empty = DirectionSummary(0, "", 0, 0, 0, 0, 0, 0, 0, 0)
    ts_end = round((ts_end_ns if ts_end_ns is not None else info.first_timestamp_ns) / 1e9, 6)
    return FlowSummary(
        flow_id=info.flow_id, ts_start=round(info.first_timestamp_ns / 1e9, 6), ts_end=ts_end, client=info.client,
        server=info.server, status=status, reason="", ended_by="fin", handshake_seen=True, client_random=None,
        tls_version=None, cipher_suite=None, sni=None, alpn=None, alpn_offered=[], resumed=False,
        hello_retry_request=False, early_data_offered=False, early_data_accepted=False, encrypt_then_mac=False,
        extended_master_secret=False, server_random=None, session_id=False, session_ticket=False,
        session_tickets_issued=0, key_updates=0, certificates=[], key_origin=None, c2s=empty, s2c=empty)
