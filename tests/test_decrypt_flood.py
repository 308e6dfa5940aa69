"""A ClientHello flood with real connections inside it (issue 17).

60,000 connections of SYN + curl's real ClientHello, never answered, each from its
own address and port (:mod:`tests.support.flood`), with the five real connections
of the committed captures (nginx/curl and s_server/s_client, TLS 1.2 and 1.3,
a resumption, KeyUpdates) interleaved in it, through ``tls-bridge decrypt -r``
under a memory budget small enough that the flood must be evicted.  Oracles:
tshark decrypts the same mixed capture with the same key log (the real
connections' plaintext must be byte-identical to ours), the decryptor's own
accounting against the budget, and the flow log's lines counted.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.support import tlslab
from tests.support.fixtures import FIXTURES
from tests.support.flood import Flood, SERVERS, SERVER_PORT, mixed, write_pcap

FLOOD = 60_000
BUDGET = 96 * 1024 * 1024  # room for about 30,000 pending connections beside the reserve


def _mixed_capture(tmp: Path) -> tuple[Path, Path]:
    keylog = tmp / "keys.log"
    keylog.write_bytes(b"".join(fixture.keylog.read_bytes() for fixture in FIXTURES))
    real = [fixture.frames() for fixture in FIXTURES]
    pcap = tmp / "flood.pcap"
    flood = Flood().frames(FLOOD, start_ns=1_700_000_000 * 10**9, rate=50_000)
    write_pcap(pcap, mixed(flood, real, every=300))
    return pcap, keylog


def test_real_connections_in_a_flood_decrypt_as_tshark_does_within_the_budget(tmp_path: Path) -> None:
    pcap, keylog = _mixed_capture(tmp_path)
    flows = tmp_path / "flows.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(pcap), "--keylog", str(keylog), "--flows", str(flows),
         "--memory-limit", str(BUDGET)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in flows.read_text().splitlines()]
    records = [line for line in lines if "flow_id" in line]
    summaries = [line for line in lines if line.get("summary") == "never_completed"]

    # Every real connection decrypted, byte for byte what tshark decrypts from the same capture.
    real = {(r["client"], r["server"]): r for r in records if r["client"].startswith("127.0.0.1:")}
    expected = {(c["client"], c["server"]) for fixture in FIXTURES for c in fixture.expected}
    assert set(real) == expected, sorted(real)
    streams = {index: ends for index, ends in tlslab.tshark_streams(pcap).items() if ends in expected}
    assert len(streams) == len(expected)
    followed = tlslab.tshark_follow(pcap, keylog, port=[4433, 8443], streams=streams)
    for stream in followed:
        ours = real[(stream.client, stream.server)]
        assert ours["status"] == "decrypted", ours
        assert stream.c2s and stream.s2c, f"tshark decrypted nothing of {stream.client}"
        for direction, data in (("c2s", stream.c2s), ("s2c", stream.s2c)):
            assert ours[direction]["bytes"] == len(data), (stream.client, direction)
            assert ours[direction]["sha256"] == hashlib.sha256(data).hexdigest(), (stream.client, direction)

    # The budget held, and the flood was what gave way (half-open flows, counted by reason).
    summary = result.stderr.strip().splitlines()[-1]
    peak, limit = (float(x.replace(",", "")) for x in re.search(r"memory: peak ([\d.,]+) MiB of ([\d,]+) MiB",
                                                                  summary).groups())
    assert limit * 2**20 == BUDGET and peak * 2**20 <= BUDGET, summary
    evicted = re.search(r"(\d+) connections evicted \((\d+) half-open;", summary)
    assert evicted is not None and int(evicted.group(1)) == int(evicted.group(2)) > FLOOD // 10, summary

    # The flow log: one line per real connection, a sample of the flood, and its count per server.
    flood_records = [r for r in records if not r["client"].startswith("127.0.0.1:")]
    assert len(flood_records) == sum(s["sampled"] for s in summaries) <= 10 * len(summaries)
    assert sum(s["connections"] for s in summaries) == FLOOD
    servers: dict[str, int] = {}
    for line in summaries:
        for server, count in line["servers"].items():
            servers[server] = servers.get(server, 0) + count
    names = {f"{'.'.join(map(str, address))}:{SERVER_PORT}" for address in SERVERS}
    assert set(servers) == names and sum(servers.values()) == FLOOD
    assert all(s["statuses"].keys() <= {"partial"} for s in summaries)
