"""The decryptor fed by the key feed (``decrypt --keys``) matches the decryptor fed
by the client's own key log (``--keylog``), from a file and live."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from bridge.capture.pcapfile import read_capture
from bridge.reinject.outputs import InterfaceOutput
from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess, make_feed_certs
from tests.support.netns import in_netns, veth_namespace
from tests.support.tlslab import ClientSpec

pytestmark = pytest.mark.real

CLIENTS = [
    ClientSpec(args=["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]),
    ClientSpec(args=["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"]),
    ClientSpec(args=["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"]),
    ClientSpec(args=["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"]),
]
# What must agree between the two runs (timestamps differ live; key_origin exists only with the feed).
COMPARED = ("client", "server", "status", "reason", "tls_version", "cipher_suite", "sni", "alpn", "resumed",
            "client_random", "server_random", "key_updates")


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, tls_certs) -> tlslab.TlsRun:
    tlslab.require_root()
    return tlslab.run_openssl_sessions(tmp_path_factory.mktemp("feed-sessions"), certs=tls_certs, clients=CLIENTS)


def _flows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _essence(record: dict) -> dict:
    essence = {key: record[key] for key in COMPARED}
    for direction in ("c2s", "s2c"):
        essence[direction] = {k: record[direction][k] for k in ("bytes", "sha256", "decrypted_records")}
    return essence


def _reference(tmp_path: Path, sessions: tlslab.TlsRun) -> list[dict]:
    flows = tmp_path / "reference.jsonl"
    with BridgeProcess(["decrypt", "-r", str(sessions.pcap), "--keylog", str(sessions.keylog), "--flows", str(flows)],
                       tmp_path / "reference.err") as reference:
        assert reference.wait() == 0, reference.text()
    records = _flows(flows)
    assert [r["status"] for r in records] == ["decrypted"] * len(CLIENTS)
    return records


def test_a_capture_decrypted_with_the_feed_matches_the_key_log(tmp_path, sessions):
    certs = make_feed_certs(tmp_path / "certs")
    endpoint = f"ipc://{tmp_path}/feed"
    flows = tmp_path / "feed.jsonl"
    with BridgeProcess(["keys", "publish", "--keylog", str(sessions.keylog), "--bind", endpoint,
                        *certs.publisher_args()], tmp_path / "publish.err") as publisher:
        publisher.wait_for(f"publishing {len(CLIENTS)} records")
        with BridgeProcess(["decrypt", "-r", str(sessions.pcap), "--keys", endpoint, *certs.sensor_args(),
                            "--flows", str(flows)], tmp_path / "decrypt.err") as decrypt:
            assert decrypt.wait() == 0, decrypt.text()
        publisher.stop()
    records = _flows(flows)
    assert [_essence(r) for r in records] == [_essence(r) for r in _reference(tmp_path, sessions)]
    origins = [r["key_origin"] for r in records]
    assert all(o["trigger"] == "keylog" and len(o["publisher"]) == 32 for o in origins), origins
    assert f"key feed: {len(CLIENTS)} records" in decrypt.text()


def test_keys_published_live_while_the_capture_is_replayed_live(tmp_path, sessions):
    """Packets replayed onto a veth, captured by ``decrypt -i``; the client's key log
    lines are appended after the packets (records wait for their secrets), a
    publisher follows the file; every connection ends decrypted, as with --keylog."""
    certs = make_feed_certs(tmp_path / "certs")
    endpoint = f"ipc://{tmp_path}/feed"
    growing = tmp_path / "growing.keylog"
    growing.write_text("")
    flows = tmp_path / "live.jsonl"
    frames = list(read_capture(sessions.pcap))
    key_lines = sessions.keylog.read_text().splitlines(keepends=True)
    with veth_namespace("tlsb-feed") as ns, BridgeProcess(
        ["keys", "publish", "--keylog", str(growing), "--follow", "--bind", endpoint, *certs.publisher_args()],
        tmp_path / "publish.err",
    ) as publisher:
        publisher.wait_for("publishing 0 records")
        with BridgeProcess(["decrypt", "-i", "vb", "--keys", endpoint, *certs.sensor_args(), "--flows", str(flows)],
                           tmp_path / "decrypt.err", prefix=["ip", "netns", "exec", ns]) as decrypt:
            decrypt.wait_for("capturing on vb")
            output = in_netns(ns, lambda: InterfaceOutput("va"))
            for index, frame in enumerate(frames):
                output.write(frame.timestamp_ns, frame.data)
                if index % 20 == 19:
                    time.sleep(0.02)
            output.close()
            assert output.stats.dropped == 0 and output.stats.errors == 0
            time.sleep(0.5)
            with open(growing, "a") as handle:
                for line in key_lines:
                    handle.write(line)
                    handle.flush()
                    time.sleep(0.02)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (not flows.exists() or len(_flows(flows)) < len(CLIENTS)):
                time.sleep(0.1)
            # logged when their secrets came, with no packet flowing, not at shutdown
            logged_before_stop = len(_flows(flows)) if flows.exists() else 0
            assert decrypt.stop() == 0, decrypt.text()
        publisher.stop()
    records = _flows(flows)
    assert [_essence(r) for r in records] == [_essence(r) for r in _reference(tmp_path, sessions)], decrypt.text()
    assert logged_before_stop == len(CLIENTS)
    assert all(r["ended_by"] == "fin" for r in records)
