"""Every shipped profile is what the calibrator derives from its build today, and
harvesting with it (real uprobes) yields the library's own key log."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.harvest.elf import read_elf
from bridge.harvest.profile import SHIPPED_DIR, Profile, ProfileStore
from tests.support import tlslab
from tests.support.harvest import Lab, compare_keylogs, hold_until_harvested, randoms
from tests.support.keyfeed import BridgeProcess
from tests.support.openssl_builds import WHEEL_BUILDS

pytestmark = pytest.mark.real

DEBIAN_LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
PAIR = Path(__file__).resolve().parent / "support" / "servers" / "ctypes_tls_pair.py"
BUILDS = [pytest.param(DEBIAN_LIBSSL, id="debian-3.0")] + [
    pytest.param(build, id=f"{build.package}-{build.version}-openssl-{build.openssl}") for build in WHEEL_BUILDS
]


def _library(build) -> Path:  # type: ignore[no-untyped-def]
    if isinstance(build, Path):
        return build
    library = build.libssl
    assert read_elf(library).build_id == build.build_id
    return library


def _calibrate(library: Path) -> Profile:
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "profile", "calibrate", "--libssl", str(library),
                             "-o", "-"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return Profile.from_json(result.stdout)


@pytest.mark.parametrize("build", BUILDS)
def test_calibration_reproduces_the_shipped_profile_and_harvesting_with_it_works(build, tmp_path):
    library = _library(build)
    profile = _calibrate(library)
    shipped = ProfileStore().get(profile.build_id)
    options = ["--profile-cache", str(tmp_path / "cache")]
    if shipped is None and library == DEBIAN_LIBSSL:
        # The machine's own libssl: a security update newer than the shipped profiles is
        # normal (the harvester resolves it by itself); harvest with this calibration alone.
        profile.save(tmp_path / "calibrated")
        options += ["--no-shipped-profiles", "--profiles", str(tmp_path / "calibrated"), "--resolve", "none"]
    else:
        assert shipped is not None, f"no shipped profile for {library} ({profile.build_id})"
        assert profile.fields == shipped.fields
        assert profile.openssl_version == shipped.openssl_version
        assert shipped.made["source"] and "calibrate --libssl" in str(shipped.made["method"])

    truth, harvested = tmp_path / "callback.keylog", tmp_path / "harvested.keylog"
    pair = subprocess.Popen([sys.executable, str(PAIR), str(library), str(truth)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert pair.stdout.readline().strip() == "ready"
        with BridgeProcess(["harvest", "process", "--pid", str(pair.pid), "--keylog", str(harvested), *options],
                           tmp_path / "harvest.err") as harvester:
            harvester.wait_for("harvesting 1 processes")
            assert f"hooked {library}" in harvester.text()
            pair.stdin.write("go\n")
            pair.stdin.flush()
            assert pair.stdout.readline().strip() == "done"
            time.sleep(0.5)
            assert harvester.stop() == 0, harvester.text()
    finally:
        pair.stdin.close()
        pair.wait(10)
    missing, extra = compare_keylogs(truth, harvested)
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3])
    assert "5 connections published" in harvester.text()


def test_shipped_profiles_say_how_they_were_made():
    for path in SHIPPED_DIR.glob("*.json"):
        body = json.loads(path.read_text())
        assert path.stem == body["build_id"]
        assert body["openssl_version"].startswith("OpenSSL ")
        assert body["made"]["method"] and body["made"]["source"] and body["made"]["date"]


def test_node_is_calibrated_live_to_its_shipped_profile(tmp_path, tlslab_tools, tls_certs):
    """node has OpenSSL linked in (no libssl to load): calibrate against the running
    server while s_client connects with a key log."""
    node = tlslab.require_tools("node")["node"]
    image = read_elf(Path(node).resolve())
    if not image.embeds_openssl:
        pytest.fail(f"{node} does not embed OpenSSL (a distribution build linked to libssl): install nodesource's")
    keylog = tmp_path / "client.keylog"
    profiles = tmp_path / "profiles"
    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            server = lab.node_server(port=4435)
            calibration = BridgeProcess(["profile", "calibrate", "--pid", str(server.pid), "--keylog", str(keylog),
                                         "--duration", "60", "-o", str(profiles)], tmp_path / "calibrate.err",
                                        prefix=ns.prefix())
            calibration.wait_for("watching")
            clients = (["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"],
                       ["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"],
                       ["-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"],
                       ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
                       ["-tls1_2", "-cipher", "ECDHE-RSA-AES256-GCM-SHA384"],
                       ["-tls1_2", "-cipher", "ECDHE-RSA-CHACHA20-POLY1305"])
            # Copies of a connection's object are taken a moment after each call; now and
            # then every copy comes too late: a second round leaves room for that.
            for args in clients * 2:
                if calibration.proc.poll() is not None:
                    break
                lab.s_client(4435, keylog, *args, hold=0.3)
            assert calibration.wait(60) == 0, calibration.text()
        finally:
            lab.close()
    made = Profile.from_json((profiles / f"{image.build_id}.json").read_text())
    assert re.search(r"([6-9]|1\d) connections matched", calibration.text())
    shipped = ProfileStore().get(image.build_id)
    assert shipped is not None and made.fields == shipped.fields


#: curl against node, as the issue's report: TLS 1.3 with a SHA-256 and a SHA-384 suite, TLS 1.2.
CURL_RUNS = (("--tlsv1.3", "--tls13-ciphers", "TLS_AES_128_GCM_SHA256"),
             ("--tlsv1.3", "--tls13-ciphers", "TLS_AES_256_GCM_SHA384"),
             ("--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256"),
             ("--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-RSA-AES256-GCM-SHA384"))


def test_node_24_is_calibrated_live_with_curl_and_harvested_with_the_profile(tmp_path, tlslab_tools, tls_certs):
    """Node 24 from the npm registry (OpenSSL 3.5 linked into the executable): curl's
    connections last a few milliseconds, over before the calibrator reads /proc: all 12
    are matched to the key log from the copies the kernel takes at hook time, and the
    profile equals the one calibrated from OpenSSL 3.5.9's libssl.  Then harvesting node
    with that profile (and none shipped): every line equals curl's."""
    from tests.support.node_builds import NODE_24, fetch

    node = fetch(NODE_24)
    image = read_elf(node)
    assert image.build_id == NODE_24.build_id and image.embeds_openssl
    assert ProfileStore().get(NODE_24.build_id) is None, "a profile for this build is shipped: the test proves nothing"
    calibrated, client, harvested = tmp_path / "calibrated", tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    status = tmp_path / "status.json"
    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            server = lab.node_server(port=4435, node=str(node))
            calibration = BridgeProcess(["profile", "calibrate", "--pid", str(server.pid), "--keylog",
                                         str(tmp_path / "calibration.keylog"), "--duration", "60", "--connections",
                                         "12", "-o", str(calibrated)], tmp_path / "calibrate.err", prefix=ns.prefix())
            calibration.wait_for("watching")
            for args in CURL_RUNS * 3:
                lab.curl(4435, tmp_path / "calibration.keylog", *args)
            assert calibration.wait(60) == 0, calibration.text()
            assert "12 connections matched" in calibration.text()

            harvester = lab.harvester("--pid", str(server.pid), "--keylog", str(harvested), "--status", str(status),
                                      "--no-shipped-profiles", "--profiles", str(calibrated), "--resolve", "none",
                                      "--profile-cache", str(tmp_path / "cache"))
            for args in CURL_RUNS * 2:
                lab.curl(4435, client, *args)
            time.sleep(1.5)
            assert harvester.stop() == 0, harvester.text()
        finally:
            lab.close()
    made = Profile.from_json((calibrated / f"{NODE_24.build_id}.json").read_text())
    wheel = next(build for build in WHEEL_BUILDS if build.openssl == NODE_24.openssl)
    assert made.fields == ProfileStore().get(wheel.build_id).fields
    missing, extra = compare_keylogs(client, harvested)
    # a str, not a tuple: pytest cuts the repr of anything else to 240 characters
    assert not missing and not extra, \
        f"missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}; the harvester said:\n{harvester.text()}"
    assert "8 connections published" in harvester.text()
    (layout,) = [e for e in json.loads(status.read_text())["layouts"] if e["build_id"] == NODE_24.build_id]
    assert layout["state"] == "ready" and layout["origin"] == "cached", layout


def test_node_24_with_no_profile_is_resolved_by_the_harvester_itself(tmp_path, tlslab_tools, tls_certs):
    """No profile for this node build and nothing done by hand: its layout is a known
    one (OpenSSL 3.5.9's), confirmed on the first TLS 1.3 and TLS 1.2 connections
    (clients that hold them open a moment: confirming reads the live process); then
    its probes fetch the fields at hook time and curl's few-millisecond connections
    are harvested too.  Every line equals the clients' key logs."""
    from tests.support.node_builds import NODE_24, fetch

    node = fetch(NODE_24)
    assert ProfileStore().get(NODE_24.build_id) is None
    client, harvested, status = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "status.json"
    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            server = lab.node_server(port=4435, node=str(node))
            harvester = lab.harvester("--pid", str(server.pid), "--keylog", str(harvested), "--status", str(status),
                                      "--profile-cache", str(tmp_path / "cache"))
            # held open until harvested: confirming reads the live process, however slow the host.
            # The request goes first: node's last hooked call before it ran mid-handshake.
            lab.s_client(4435, client, "-tls1_3", hold=0.5, harvested=harvested, keep_alive=True)
            lab.s_client(4435, client, "-tls1_2", hold=0.5, harvested=harvested, keep_alive=True)
            # both versions confirmed before the one-shot connections (a TLS 1.2 one over
            # before its keys could be confirmed in memory would be lost)
            assert randoms(client) <= randoms(harvested), harvester.text()
            # the harvester's next rescan probes node again, fields fetched: curl's one-shot
            # connections need that (read from memory they may close before the read)
            harvester.wait_for("again: the fields of its inferred and confirmed layout fetched at hook time",
                               timeout=60)
            for args in CURL_RUNS * 2:
                lab.curl(4435, client, *args)
            hold_until_harvested(client, harvested, set(), timeout=30)  # the last events drained
            assert harvester.stop() == 0, harvester.text()
        finally:
            lab.close()
    missing, extra = compare_keylogs(client, harvested)
    # a str, not a tuple: pytest cuts the repr of anything else to 240 characters
    assert not missing and not extra, \
        f"missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}; the harvester said:\n{harvester.text()}"
    assert "10 connections published" in harvester.text()
    (layout,) = [e for e in json.loads(status.read_text())["layouts"] if e["build_id"] == NODE_24.build_id]
    assert layout["state"] == "ready" and layout["origin"] == "inferred and confirmed", layout
    assert layout["confirmed"] == ["TLS1.2", "TLS1.3"]
    assert "again: the fields of its inferred and confirmed layout fetched at hook time" in harvester.text()
