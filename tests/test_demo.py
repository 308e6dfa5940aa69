"""The README's main job: the demo runs end to end and shows what Suricata saw."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from bridge.vmi.testguest import build_guest_image

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


def test_vm_demo_harvests_a_guest_from_the_host_and_shows_what_suricata_saw(tmp_path):
    """``demo --vm`` for real, from an empty cache: the guest image is built (steps
    shown), the guest boots on a tap, its s_server's secrets come out of its RAM,
    and the report is the default demo's."""
    cache, work = tmp_path / "cache", tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "demo", "--vm", "--workdir", str(work), "--cache-dir", str(cache)],
        capture_output=True, text=True, timeout=600,
    )
    out = result.stdout
    harvester = work / "harvester.log"
    assert result.returncode == 0, out + result.stderr + (harvester.read_text() if harvester.exists() else "")
    # progress: the build's steps, then the boot, each with the seconds since the start
    steps = [line for line in out.splitlines() if re.match(r"\[ *\d+\.\d s\] ", line)]
    for text in ("building the guest image", "downloading linux-image-", "writing the initramfs",
                 "guest image built", "booting the guest", "guest: kernel 6.1.", "guest: s_server 4433 pid",
                 "guest up in", "done"):
        assert any(text in line for line in steps), (text, out)
    # what tls-bridge decrypted: every connection, its keys from the VM's memory
    decrypted = [line for line in out.splitlines() if "10.0.2.15:4433  decrypted TLSv1." in line]
    assert len(decrypted) == 3, out
    # read out of the guest's memory: by the search the wire triggers, or (a connection that ended
    # before the search found it: s_server's one-request connections last ~25 ms under TCG) at SSL_free
    assert all("keys from vm demo-guest: openssl[" in line and (" by vm-" in line or " by gdb:SSL_free" in line)
               for line in decrypted), out
    assert {"TLSv1.3", "TLSv1.2"} <= {re.search(r"decrypted (TLSv1\.\d)", line).group(1) for line in decrypted}
    assert "3 connections published of 3 searched" in out
    records = [json.loads(line) for line in (work / "flows.jsonl").read_text().splitlines()]
    assert [r["key_origin"]["vm"] for r in records] == ["demo-guest"] * 3
    assert all(r["key_origin"]["trigger"].startswith("vm-") or r["key_origin"]["trigger"] == "gdb:SSL_free"
               for r in records), records  # as the report's lines above: the search, or SSL_free
    # what Suricata saw on tls0
    for path in ("/", "/tls-bridge-test-marker?password=hunter2", "/login"):
        assert f"-> 10.0.2.15:4433  GET guest.test{path}  -> 200" in out, out
    for alert in ("[1915000] TLS-BRIDGE TEST decrypted marker path requested",
                  "[1915100] TLS-BRIDGE POLICY credential parameter in decrypted HTTP URI",
                  "[1915101] TLS-BRIDGE POLICY HTTP Basic authentication inside decrypted TLS"):
        assert alert in out, out
    assert "tls events on synthetic flows: 0" in out
    assert "Demo succeeded" in out
    # the image stays cached (only boot/ of the kernel package kept) ...
    said: list[str] = []
    image = build_guest_image("6.1", directory=cache / "guest-6.1", keep_modules=False, progress=said.append)
    assert len(said) == 1 and said[0].startswith("guest image cached"), said
    [cached] = [d for d in (cache / "guest-6.1").iterdir() if d.is_dir()]
    assert image.kernel.is_relative_to(cached) and image.kernel.is_file() and not (cached / "pkg" / "lib").exists()
    # ... and when what goes into it changes (here: the image of an older kernel package), a new
    # one is built beside it; the old one goes once nobody used it for hours
    old = cached.with_name("0" * 16)
    cached.rename(old)
    data = json.loads((old / "guest.json").read_text())
    data["key"]["kernel_package"] = "linux-image-6.1.0-1-amd64=6.1.4-1"
    (old / "guest.json").write_text(json.dumps(data))
    os.utime(old / "guest.json", (time.time() - 7 * 3600,) * 2)
    said.clear()
    rebuilt = build_guest_image("6.1", directory=cache / "guest-6.1", keep_modules=False, progress=said.append)
    assert "stale: kernel_package changed since 0000000000000000" in said[0], said
    assert said[-1].startswith("guest image built") and rebuilt.kernel.is_file() and not old.exists(), said
