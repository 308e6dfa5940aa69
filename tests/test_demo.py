"""The README's main job: the demo runs end to end and shows what Suricata saw."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.real


def test_demo_shows_decrypted_http_and_an_alert(tmp_path, nginx_curl_tools):
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "GET shop.example.test/tls-bridge-test-marker?password=hunter2  -> 200" in out
    assert "http/2  " in out and "GET shop.example.test/login  -> 200" in out
    assert "[1915000] TLS-BRIDGE TEST decrypted marker path requested" in out
    assert "tls events on synthetic flows: 0" in out
    assert out.count("keys from nginx[") == 2 and "by uprobe:SSL_" in out  # harvested from memory, not a key log
    assert "2 connections published" in out
    assert "Demo succeeded" in out
    assert (tmp_path / "demo" / "suricata" / "eve.json").exists()
