"""Live capture (-i, AF_PACKET) with a key log that is written while packets flow."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.support import tlslab
from tests.support.tlslab import ClientSpec

pytestmark = pytest.mark.real


def _wait_for(stream_path, needle: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in stream_path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {stream_path.read_text(errors='replace')!r}")


def test_live_capture_with_a_key_log_written_meanwhile(tmp_path, tlslab_tools, tls_certs):
    keylog = tmp_path / "run.keylog"  # does not exist yet: the clients create it (tlslab names it so)
    flows = tmp_path / "flows.jsonl"
    stderr = tmp_path / "bridge.err"
    with tlslab.Netns() as ns, open(stderr, "wb") as err:
        bridge = subprocess.Popen(
            ns.prefix() + [sys.executable, "-m", "bridge.cli", "decrypt", "-i", "lo", "--keylog", str(keylog),
                           "--flows", str(flows)],
            stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            _wait_for(stderr, "capturing on lo")
            run = tlslab.run_openssl_sessions(
                tmp_path, certs=tls_certs, netns=ns,
                clients=[ClientSpec(args=["-tls1_3"]), ClientSpec(args=["-tls1_2"])],
            )
            assert run.keylog == keylog and keylog.exists()
            time.sleep(0.5)
        finally:
            bridge.send_signal(signal.SIGTERM)
            returncode = bridge.wait(timeout=30)
    assert returncode == 0, stderr.read_text()
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    assert [r["status"] for r in records] == ["decrypted", "decrypted"], records
    assert {r["tls_version"] for r in records} == {"TLSv1.2", "TLSv1.3"}
    assert all(r["s2c"]["bytes"] > 1000 and r["c2s"]["bytes"] == 18 for r in records)
    assert "2 connections: 2 decrypted" in stderr.read_text()
