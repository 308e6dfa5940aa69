"""Builds never seen before are harvested with nothing done by hand: calibrated
here in a sandbox, or a known layout confirmed on a live connection; a wrong
layout publishes nothing.  Ground truth: the library's own key log callback
(ctypes pair) or the clients' SSLKEYLOGFILE."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.harvest.profile import SHIPPED_DIR, Profile
from tests.support import tlslab
from tests.support.harvest import Lab, compare_keylogs, keylog_lines, rebuilt_library
from tests.support.keyfeed import BridgeProcess
from tests.support.openssl_builds import WHEEL_BUILDS

pytestmark = pytest.mark.real

DEBIAN_LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
PAIR = Path(__file__).resolve().parent / "support" / "servers" / "ctypes_tls_pair.py"
ROOT = Path(__file__).resolve().parents[1]


def _harvest_pair(library: Path, tmp_path: Path, *options: str) -> tuple[Path, Path, str, dict]:
    """The ctypes pair (5 handshakes, TLS 1.3 and 1.2, through ``library``) harvested
    with uprobes; returns (truth, harvested, the harvester's log, its status file)."""
    truth, harvested, status = tmp_path / "callback.keylog", tmp_path / "harvested.keylog", tmp_path / "status.json"
    pair = subprocess.Popen([sys.executable, str(PAIR), str(library), str(truth)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert pair.stdout.readline().strip() == "ready"
        with BridgeProcess(["harvest", "process", "--pid", str(pair.pid), "--keylog", str(harvested),
                            "--status", str(status), *options], tmp_path / "harvest.err") as harvester:
            harvester.wait_for("harvesting 1 processes", timeout=40)
            pair.stdin.write("go\n")
            pair.stdin.flush()
            assert pair.stdout.readline().strip() == "done"
            _settle(truth, harvested, status)
            assert harvester.stop() == 0, harvester.text()
    finally:
        pair.stdin.close()
        pair.wait(10)
    return truth, harvested, harvester.text(), json.loads(status.read_text())


def _settle(truth: Path, harvested: Path, status: Path, *, timeout: float = 20.0) -> None:
    """Give the harvester the time it needs (its hook events, confirmations and memory
    scans are its own pace on a busy host): until every connection the library logged
    is harvested, or a build's layout is decided as failed, or ``timeout``; at least 1 s."""
    time.sleep(1.0)
    deadline = time.monotonic() + timeout
    wanted = {line[1] for line in keylog_lines(truth)}
    while time.monotonic() < deadline:
        if wanted and wanted <= {line[1] for line in keylog_lines(harvested)}:
            return
        try:
            states = {entry["state"] for entry in json.loads(status.read_text())["layouts"]}
        except (OSError, ValueError, KeyError):
            states = set()
        if "failed" in states:
            return
        time.sleep(0.2)


def _layout(status: dict, build_id: str) -> dict:
    (layout,) = [entry for entry in status["layouts"] if entry["build_id"] == build_id]
    return layout


def test_a_security_update_no_profile_knows_is_calibrated_at_first_sight(tmp_path):
    """Debian's libssl with its build-id changed, no profile at all: calibrated in the
    sandbox when the harvester first meets it, every line equal to the library's own."""
    library, build_id = rebuilt_library(DEBIAN_LIBSSL, tmp_path / "lib")
    cache = tmp_path / "cache"
    truth, harvested, log, status = _harvest_pair(library, tmp_path, "--no-shipped-profiles",
                                                  "--profile-cache", str(cache))
    missing, extra = compare_keylogs(truth, harvested)
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3])
    assert "5 connections published" in log
    layout = _layout(status, build_id)
    assert layout["state"] == "ready" and layout["origin"] == "calibrated here", layout
    assert layout["missed_before_ready"] == 0
    cached = Profile.from_json((cache / f"{build_id}.json").read_text())
    assert cached.made["sandbox"] and cached.made["resolution"] == "calibrated automatically at first sight"
    assert f"build-id {build_id}" in log and "layout calibrated here in" in log


@pytest.mark.parametrize("build", [b for b in WHEEL_BUILDS if b.openssl in ("1.1.1w", "3.5.9")],
                         ids=lambda b: f"openssl-{b.openssl}")
def test_another_series_with_no_profile_is_calibrated_and_harvested(build, tmp_path):
    """A layout other than Debian's (1.1.1's s3 pointer; 3.5's larger SSL_CONNECTION),
    from a wheel in the registries, with every shipped profile ignored."""
    truth, harvested, log, status = _harvest_pair(build.libssl, tmp_path, "--no-shipped-profiles",
                                                  "--profile-cache", str(tmp_path / "cache"))
    missing, extra = compare_keylogs(truth, harvested)
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3])
    assert _layout(status, build.build_id)["origin"] == "calibrated here"


def test_a_build_that_cannot_be_calibrated_is_harvested_through_a_confirmed_candidate(tmp_path):
    """Calibration off (as for a library inside a VM guest): the shipped layouts are
    candidates; nothing is published before one is confirmed on a live connection,
    TLS 1.3 and TLS 1.2 each; then every line equals the library's own."""
    library, build_id = rebuilt_library(DEBIAN_LIBSSL, tmp_path / "lib")
    cache = tmp_path / "cache"
    truth, harvested, log, status = _harvest_pair(library, tmp_path, "--resolve", "candidates",
                                                  "--profile-cache", str(cache))
    missing, extra = compare_keylogs(truth, harvested)
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3])
    layout = _layout(status, build_id)
    assert layout["state"] == "ready" and layout["origin"] == "inferred and confirmed", layout
    assert layout["confirmed"] == ["TLS1.2", "TLS1.3"]
    assert "RFC 8446 §7.1" in log and "RFC 5246 §6.3" in log
    made = Profile.from_json((cache / f"{build_id}.json").read_text()).made
    assert "confirmed on a live connection" in made["method"]


def test_a_wrong_candidate_layout_publishes_nothing_and_says_why(tmp_path):
    """The only candidate is Debian's profile with its secret offsets moved by 16
    bytes (its client random right, so connections are found): zero lines."""
    library, build_id = rebuilt_library(DEBIAN_LIBSSL, tmp_path / "lib")
    shipped = json.loads((SHIPPED_DIR / "c0b9959017cf64b03131964573944fc72958bb2b.json").read_text())
    wrong = dict(shipped, build_id="0" * 40, openssl_version="OpenSSL 3.0.0 (wrong on purpose)")
    for name in ("handshake_secret", "master_secret", "client_app_traffic_secret", "server_app_traffic_secret",
                 "exporter_master_secret"):
        wrong["fields"][name] = [hex(int(wrong["fields"][name][0], 16) + 16)]
    wrong["fields"]["master_key"] = [wrong["fields"]["master_key"][0], hex(int(wrong["fields"]["master_key"][1], 16) + 16)]
    candidates = tmp_path / "candidates"
    candidates.mkdir()
    (candidates / f"{'0' * 40}.json").write_text(json.dumps(wrong))
    truth, harvested, log, status = _harvest_pair(library, tmp_path, "--resolve", "candidates",
                                                  "--no-shipped-profiles", "--profiles", str(candidates),
                                                  "--profile-cache", "")
    assert keylog_lines(truth) and not keylog_lines(harvested)
    layout = _layout(status, build_id)
    assert layout["state"] == "failed", layout
    assert "not bound as RFC 8446 §7.1 requires" in layout["rejected"]["0" * 40]
    assert "NOTHING CAN BE HARVESTED" in log and "0 connections published" in log


def test_a_hostile_library_runs_in_the_sandbox_without_root_or_network(tmp_path, request):
    """A crafted libssl whose constructor reports who it runs as and tries the network:
    it runs as nobody, with no capabilities and no route anywhere; calibration fails cleanly."""
    gcc = tlslab.require_tools("gcc")["gcc"]
    import shutil
    import tempfile

    report = Path(tempfile.mkdtemp(prefix="tls-bridge-sandbox-report-", dir="/tmp"))  # reachable by nobody
    report.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(report, ignore_errors=True))
    source = tmp_path / "evil.c"
    source.write_text(f"""
#include <stdio.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/prctl.h>
__attribute__((constructor)) static void evil(void) {{
    FILE *out = fopen("{report}/who", "w");
    if (!out) return;
    struct sockaddr_in to = {{0}};
    to.sin_family = AF_INET; to.sin_port = htons(9); to.sin_addr.s_addr = htonl(0x7f000001);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int sent = s >= 0 ? (int)sendto(s, "x", 1, 0, (struct sockaddr *)&to, sizeof to) : -2;
    fprintf(out, "uid=%d euid=%d gid=%d sent=%d nnp=%d\\n", getuid(), geteuid(), getgid(), sent,
            prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    fclose(out);
}}
int SSL_new(void) {{ return 0; }}
int SSL_free(void) {{ return 0; }}
""")
    library = tmp_path / "libssl.so.3"
    subprocess.run([gcc, "-shared", "-fPIC", "-Wl,--build-id", "-o", str(library), str(source)], check=True)
    result = subprocess.run([sys.executable, "-m", "bridge.cli", "profile", "calibrate", "--libssl", str(library),
                             "-o", "-"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "does not export" in result.stderr
    who = (report / "who").read_text()
    assert "uid=65534 euid=65534 gid=65534" in who and "nnp=1" in who
    assert "sent=-1" in who  # no interface up in its own network namespace


def _s_server_on(lab: Lab, libdir: Path, port: int):  # type: ignore[no-untyped-def]
    """``openssl s_server -www`` in the lab's namespace, its libssl from ``libdir``."""
    proc = lab.ns.proc(["env", f"LD_LIBRARY_PATH={libdir}", tlslab.tool("openssl"), "s_server", "-accept", str(port),
                        "-cert", str(lab.certs.cert), "-key", str(lab.certs.key), "-www"], stdin_pipe=False)
    tlslab._wait_listening(proc, port)
    lab.procs.append(proc)
    return proc


def test_a_real_server_on_an_unknown_build_is_harvested_like_a_known_one(tmp_path, tlslab_tools, tls_certs):
    """openssl s_server on the rebuilt libssl, curl over TLS 1.2 and 1.3: the harvest equals curl's key log."""
    libdir = tmp_path / "lib"
    library, build_id = rebuilt_library(DEBIAN_LIBSSL, libdir)
    client, harvested = tmp_path / "client.keylog", tmp_path / "harvested.keylog"
    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            proc = _s_server_on(lab, libdir, 4438)  # (by pid: other openssl processes may run on this host)
            harvester = lab.harvester("--pid", str(proc.pid), "--keylog", str(harvested), "--no-shipped-profiles",
                                      "--profile-cache", str(tmp_path / "cache"))
            for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"):
                lab.curl(4438, client, "--tlsv1.3", "--tls13-ciphers", suite)
            for cipher in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"):
                lab.curl(4438, client, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher)
            time.sleep(0.3)
            assert harvester.stop() == 0
        finally:
            lab.close()
    missing, extra = compare_keylogs(client, harvested)
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3])
    assert "4 connections published" in harvester.text()
    assert f"build-id {build_id}" in harvester.text()


def _harvest_wired_pair(library: Path, tmp_path: Path, *options: str,
                        pair_options: tuple[str, ...] = ()) -> tuple[Path, Path, str, dict]:
    """The ctypes pair with its records also on a TCP connection on lo (in a namespace
    of its own), harvested with uprobes and the wire: the hooks give each call's
    ``SSL *``, the ClientHellos on lo name the connections."""
    truth, harvested, status = tmp_path / "callback.keylog", tmp_path / "harvested.keylog", tmp_path / "status.json"
    with tlslab.Netns() as ns:
        pair = subprocess.Popen([*ns.prefix(), sys.executable, str(PAIR), str(library), str(truth), "--wire",
                                 *pair_options], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert pair.stdout.readline().strip() == "ready"
            with BridgeProcess(["harvest", "process", "--pid", str(pair.pid), "--trigger", "hooks,wire", "--wire", "lo",
                                "--keylog", str(harvested), "--status", str(status), *options],
                               tmp_path / "harvest.err", prefix=ns.prefix()) as harvester:
                harvester.wait_for("harvesting 1 processes", timeout=40)
                pair.stdin.write("go\n")
                pair.stdin.flush()
                assert pair.stdout.readline().strip() == "done"
                time.sleep(1.5)
                assert harvester.stop() == 0, harvester.text()
        finally:
            pair.stdin.close()
            pair.wait(10)
    return truth, harvested, harvester.text(), json.loads(status.read_text())


LEARNED_BUILD = next(b for b in WHEEL_BUILDS if b.openssl == "3.5.9")


@pytest.mark.parametrize("build", [LEARNED_BUILD, next(b for b in WHEEL_BUILDS if b.openssl == "1.1.1w")],
                         ids=lambda b: f"openssl-{b.openssl}")
def test_a_build_with_no_profile_no_candidate_and_no_calibration_is_learned_from_live_connections(build, tmp_path):
    """OpenSSL from a wheel (3.5.9; 1.1.1w, whose client random is behind the s3
    pointer), every shipped profile ignored (no candidate at all), calibration off:
    the layout is learned from the connections themselves (client randoms from the
    wire, SSL * from the hooks, secrets derived from the process's memory); every
    line equals the library's own key log, TLS 1.3 and TLS 1.2, and the learned
    profile is the one calibration makes for that build."""
    cache = tmp_path / "cache"
    truth, harvested, log, status = _harvest_wired_pair(build.libssl, tmp_path, "--no-shipped-profiles",
                                                        "--resolve", "candidates,learn", "--profile-cache", str(cache))
    missing, extra = compare_keylogs(truth, harvested)
    assert keylog_lines(truth) and not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3], log)
    assert "5 connections published" in log
    layout = _layout(status, build.build_id)
    assert layout["state"] == "ready" and layout["origin"] == "learned", layout
    assert layout["confirmed"] == ["TLS1.2", "TLS1.3"]
    assert "RFC 8446 §7.1" in log and "RFC 5246 §6.3" in log
    assert "again: the fields of its learned layout fetched at hook time" in log
    learned = Profile.from_json((cache / f"{build.build_id}.json").read_text())
    assert learned.made["resolution"] == "learned"
    shipped = Profile.from_json((SHIPPED_DIR / f"{build.build_id}.json").read_text())
    assert learned.fields == shipped.fields


def test_learning_that_cannot_confirm_every_field_publishes_nothing(tmp_path):
    """Only TLS 1.3 connections: their secrets are derived, but the TLS 1.2 fields
    (session, master key) cannot be confirmed, so no layout is written and nothing
    is published; the status says what learning waits for."""
    truth, harvested, log, status = _harvest_wired_pair(LEARNED_BUILD.libssl, tmp_path, "--no-shipped-profiles",
                                                        "--resolve", "candidates,learn", "--profile-cache",
                                                        str(tmp_path / "cache"), pair_options=("--tls13-only",))
    assert keylog_lines(truth) and not keylog_lines(harvested)
    assert "0 connections published" in log
    layout = _layout(status, LEARNED_BUILD.build_id)
    assert layout["state"] == "learning" and layout["origin"] is None, layout
    assert "waiting for a TLS 1.2 connection" in layout["reason"], layout
    assert layout["learned_from"] == 6  # three handshakes, each seen from both ends
    assert not (tmp_path / "cache" / f"{LEARNED_BUILD.build_id}.json").exists()


def test_short_lived_tls12_connections_confirm_a_candidate_by_decrypting_their_first_record(tmp_path, tls_certs):
    """openssl s_server -www on the rebuilt libssl, calibration off (its candidate is the
    shipped layout), one-shot curls over TLS 1.2 only (GCM, ChaCha20, CBC): a connection
    is gone by the time its object's memory would be searched for its key block, so the
    candidate is confirmed by decrypting the client's Finished record, which the
    harvester captured on the wire, with the key block derived from the master secret
    read through the candidate.  Every line published equals curl's; every connection
    from the confirmation on is published.  (Until a layout is confirmed the hooks fetch
    only the SSL *, and its fields are read afterwards: on a busy host that read may
    come too late for a one-shot connection, so connections are made until one confirms.)"""
    libdir = tmp_path / "lib"
    library, build_id = rebuilt_library(DEBIAN_LIBSSL, libdir)
    client, harvested, status = tmp_path / "client.keylog", tmp_path / "harvested.keylog", tmp_path / "status.json"
    ciphers = ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305", "ECDHE-RSA-AES256-SHA384")

    def confirmed() -> bool:
        try:
            return "TLS1.2" in _layout(json.loads(status.read_text()), build_id).get("confirmed", [])
        except (OSError, ValueError, KeyError):
            return False

    with tlslab.Netns() as ns:
        lab = Lab(tmp_path, tls_certs, ns)
        try:
            proc = _s_server_on(lab, libdir, 4438)
            harvester = lab.harvester("--pid", str(proc.pid), "--trigger", "hooks,wire", "--wire", "lo",
                                      "--resolve", "candidates", "--keylog", str(harvested), "--status", str(status))
            for count in range(30):
                lab.curl(4438, client, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", ciphers[count % 3])
                deadline = time.monotonic() + 2.5  # the status file is written every second
                while not confirmed() and time.monotonic() < deadline:
                    time.sleep(0.1)
                if confirmed():
                    break
            before = {line[1] for line in keylog_lines(client)}
            time.sleep(1.5)  # confirmed: the build is probed again, its fields fetched at hook time
            for cipher in ciphers:
                lab.curl(4438, client, "--tlsv1.2", "--tls-max", "1.2", "--ciphers", cipher)
            _settle(client, harvested, status, timeout=10)
            assert harvester.stop() == 0
        finally:
            lab.close()
    log = harvester.text()
    missing, extra = compare_keylogs(client, harvested)
    assert not extra, sorted(extra)[:3]  # nothing wrong was ever published
    layout = _layout(json.loads(status.read_text()), build_id)
    assert layout["origin"] == "inferred and confirmed" and layout["confirmed"] == ["TLS1.2"], (layout, log)
    assert "TLS 1.2: the client's Finished record decrypted and authenticated" in log, log
    harvested_randoms = {line[1] for line in keylog_lines(harvested)}
    assert harvested_randoms & before  # the connection that confirmed it, published
    assert {line[1] for line in missing} <= before, (sorted(missing)[:3], log)  # none missed after it
