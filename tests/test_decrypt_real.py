"""Real OpenSSL/nginx/curl sessions, captured, decrypted, and compared byte for
byte with Wireshark's tshark decrypting the same capture with the same key log."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from tests.support import tlslab
from tests.support.decrypt import assert_matches_tshark, decrypt_capture
from tests.support.tlslab import GET, ClientSpec

pytestmark = pytest.mark.real

TLS13_SUITES = [
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
]

# OpenSSL name → IANA name, and whether encrypt-then-MAC is switched off.
TLS12_SUITES = [
    ("ECDHE-RSA-AES128-GCM-SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", False),
    ("ECDHE-RSA-AES256-GCM-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", False),
    ("AES256-GCM-SHA384", "TLS_RSA_WITH_AES_256_GCM_SHA384", False),
    ("ECDHE-RSA-CHACHA20-POLY1305", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", False),
    ("AES128-CCM", "TLS_RSA_WITH_AES_128_CCM", False),
    ("AES128-CCM8", "TLS_RSA_WITH_AES_128_CCM_8", False),
    ("DHE-RSA-AES256-CCM", "TLS_DHE_RSA_WITH_AES_256_CCM", False),
    ("ECDHE-RSA-AES128-SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", False),
    ("ECDHE-RSA-AES128-SHA", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", True),
    ("AES128-SHA256", "TLS_RSA_WITH_AES_128_CBC_SHA256", False),
    ("AES256-SHA256", "TLS_RSA_WITH_AES_256_CBC_SHA256", True),
    ("ECDHE-RSA-AES256-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", False),
    ("ECDHE-RSA-AES256-SHA384", "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384", True),
]

#: A request and a longer reply so data spans several records and segments.
BIG_REQUEST = GET


def _check_all_decrypted(result, count: int) -> None:
    assert len(result.flows) == count, [f.record for f in result.flows]
    for flow in result.flows:
        assert flow.record["status"] == "decrypted", flow.record
        assert flow.c2s.startswith(b"GET / HTTP/1.0"), flow.c2s[:40]
        assert b"HTTP/1.0 200 ok" in flow.s2c


def test_tls13_every_suite(tmp_path, tlslab_tools, tls_certs):
    run = tlslab.run_openssl_sessions(
        tmp_path,
        certs=tls_certs,
        server_args=["-ciphersuites", ":".join(TLS13_SUITES)],
        clients=[ClientSpec(args=["-tls1_3", "-ciphersuites", suite]) for suite in TLS13_SUITES],
    )
    result = decrypt_capture(run.pcap, run.keylog)
    _check_all_decrypted(result, len(TLS13_SUITES))
    assert sorted(f.record["cipher_suite"] for f in result.flows) == sorted(TLS13_SUITES)
    # the client randoms are those the client's own key log names
    logged = {line.split()[1] for line in run.keylog.read_text().splitlines() if line and not line.startswith("#")}
    assert {f.record["client_random"] for f in result.flows} == logged
    assert all(len(f.record["server_random"]) == 64 for f in result.flows)
    for flow in result.flows:
        record = flow.record
        assert record["tls_version"] == "TLSv1.3"
        assert record["sni"] == "server.test"
        leaf = record["certificates"][0]
        assert "server.test" in leaf["san"] and "CN=server.test" in leaf["subject"]
        assert record["c2s"]["sha256"] == hashlib.sha256(flow.c2s).hexdigest()
        assert record["s2c"]["bytes"] == len(flow.s2c)
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=5)


def test_tls12_every_suite(tmp_path, tlslab_tools, tls_certs):
    clients = [
        ClientSpec(args=["-tls1_2", "-cipher", f"{name}:@SECLEVEL=0"] + (["-no_etm"] if no_etm else []))
        for name, _, no_etm in TLS12_SUITES
    ]
    run = tlslab.run_openssl_sessions(tmp_path, certs=tls_certs, server_args=["-cipher", "ALL:@SECLEVEL=0"], clients=clients)
    result = decrypt_capture(run.pcap, run.keylog)
    _check_all_decrypted(result, len(TLS12_SUITES))
    flows = sorted(result.flows, key=lambda f: f.record["ts_start"])
    for flow, (_, iana, no_etm) in zip(flows, TLS12_SUITES):
        assert flow.record["cipher_suite"] == iana
        assert flow.record["tls_version"] == "TLSv1.2"
        if "CBC" in iana:
            assert flow.record["encrypt_then_mac"] is (not no_etm)
        assert flow.record["extended_master_secret"] is True
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port))


def test_tls13_key_updates_both_directions(tmp_path, tlslab_tools, tls_certs):
    script = [(0.0, b"hello 1\n"), (0.3, b"k\n"), (0.3, b"after one update\n"), (0.3, b"K\n"),
              (0.3, b"after update requested\n"), (0.3, b"k\n"), (0.3, b"third\n"), (0.6, b"last\n")]
    # The server answers 'K' with its own KeyUpdate when it next writes (1.5 s), then updates on its own (1.8 s).
    server_script = [(0.6, b"server before\n"), (0.9, b"server mid\n"), (0.3, b"k\n"), (0.3, b"server after its update\n")]
    run = tlslab.run_openssl_sessions(
        tmp_path, certs=tls_certs, server_mode="stdio",
        clients=[ClientSpec(args=["-tls1_3"], script=script, server_script=server_script)],
    )
    result = decrypt_capture(run.pcap, run.keylog)
    [flow] = result.flows
    assert flow.record["status"] == "decrypted", flow.record
    assert flow.c2s == b"hello 1\nafter one update\nafter update requested\nthird\nlast\n"
    assert b"server after its update\n" in flow.s2c
    assert flow.record["c2s"]["key_updates"] == 3
    assert flow.record["s2c"]["key_updates"] == 2  # the answer to 'K' plus its own 'k'
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=1)


def test_tls13_hello_retry_request(tmp_path, tlslab_tools, tls_certs):
    run = tlslab.run_openssl_sessions(
        tmp_path, certs=tls_certs, server_args=["-groups", "P-256"],
        clients=[ClientSpec(args=["-tls1_3", "-groups", "X25519:P-256"])],
    )
    result = decrypt_capture(run.pcap, run.keylog)
    _check_all_decrypted(result, 1)
    assert result.flows[0].record["hello_retry_request"] is True
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port))


def test_tls13_psk_resumption_and_early_data(tmp_path, tlslab_tools, tls_certs):
    session, second = tmp_path / "sess.pem", tmp_path / "sess2.pem"
    early = b"GET /early HTTP/1.0\r\n"
    run = tlslab.run_openssl_sessions(
        tmp_path, certs=tls_certs, server_mode="stdio", server_args=["-early_data"],
        clients=[
            ClientSpec(args=["-tls1_3"], sess_out=session, script=[(0.0, b"first\n"), (0.3, b"more\n")]),
            # Tickets are single-use (anti-replay): each resumption uses the ticket of the previous one.
            ClientSpec(args=["-tls1_3"], sess_in=session, sess_out=second, script=[(0.0, b"resumed\n")]),
            ClientSpec(args=["-tls1_3"], sess_in=second, early_data=early, script=[(0.3, b"after early\n")]),
        ],
    )
    assert "CLIENT_EARLY_TRAFFIC_SECRET" in run.keylog_labels()
    result = decrypt_capture(run.pcap, run.keylog)
    flows = sorted(result.flows, key=lambda f: f.record["ts_start"])
    assert [f.record["status"] for f in flows] == ["decrypted"] * 3, [f.record for f in flows]
    assert [f.record["resumed"] for f in flows] == [False, True, True]
    assert flows[2].record["early_data"] == {"offered": True, "accepted": True}
    assert flows[2].c2s.startswith(early) and flows[2].c2s.endswith(b"after early\n")
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=3)


def _strip_keylog(source, dest, keep_first: int) -> None:
    lines = [line for line in source.read_text().splitlines() if line and not line.startswith("#")]
    dest.write_text("\n".join(lines[:keep_first]) + "\n")


@pytest.mark.parametrize("ticket", [False, True], ids=["session_id", "ticket"])
def test_tls12_resumption_with_only_the_original_secret(tmp_path, tlslab_tools, tls_certs, ticket):
    session = tmp_path / "sess.pem"
    base = ["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"] + ([] if ticket else ["-no_ticket"])
    run = tlslab.run_openssl_sessions(
        tmp_path, certs=tls_certs, server_args=[] if ticket else ["-no_ticket"],
        clients=[ClientSpec(args=base, sess_out=session), ClientSpec(args=base, sess_in=session)],
    )
    assert run.keylog_labels() == ["CLIENT_RANDOM", "CLIENT_RANDOM"]
    first_only = tmp_path / "first-only.keys"
    _strip_keylog(run.keylog, first_only, keep_first=1)
    result = decrypt_capture(run.pcap, first_only)
    flows = sorted(result.flows, key=lambda f: f.record["ts_start"])
    assert [f.record["status"] for f in flows] == ["decrypted", "decrypted"], [f.record for f in flows]
    assert [f.record["resumed"] for f in flows] == [False, True]
    assert flows[1].record["session_ticket"] is ticket
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=2)


@pytest.mark.parametrize(
    "tls,http2", [("1.3", False), ("1.3", True), ("1.2", False), ("1.2", True)], ids=["1.3-h1", "1.3-h2", "1.2-h1", "1.2-h2"]
)
def test_nginx_curl(tmp_path, nginx_curl_tools, tls_certs, tls, http2):
    run = tlslab.run_curl_nginx(tmp_path, certs=tls_certs, tls=tls, http2=http2)
    result = decrypt_capture(run.pcap, run.keylog)
    assert result.statuses == ["decrypted"] * len(result.flows), [f.record for f in result.flows]
    [flow] = result.flows
    assert flow.record["alpn"] == ("h2" if http2 else "http/1.1")
    assert flow.record["tls_version"] == f"TLSv{tls}"
    if http2:
        assert flow.c2s.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    else:
        assert b"GET /big.bin HTTP/1.1" in flow.c2s
        assert run.files["/big.bin"] in flow.s2c
    assert len(flow.s2c) > len(run.files["/big.bin"])
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=1)


def _corrupt_secrets(source, dest) -> None:
    lines = []
    for line in source.read_text().splitlines():
        if line and not line.startswith("#"):
            label, random, secret = line.split()
            secret = ("00" if secret[:2] != "00" else "11") + secret[2:]
            line = f"{label} {random} {secret}"
        lines.append(line)
    dest.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_wrong_key_and_no_key_are_reported_not_emitted(tmp_path, tlslab_tools, tls_certs, version):
    run = tlslab.run_openssl_sessions(tmp_path, certs=tls_certs, clients=[ClientSpec(args=[f"-tls{version.replace('.', '_')}"])])
    wrong = tmp_path / "wrong.keys"
    _corrupt_secrets(run.keylog, wrong)
    result = decrypt_capture(run.pcap, wrong)
    [flow] = result.flows
    assert flow.record["status"] == "wrong_key", flow.record
    assert "wrong key" in flow.record["reason"]
    assert flow.c2s == b"" and flow.s2c == b""
    empty = tmp_path / "empty.keys"
    empty.write_text("# nothing\n")
    [flow] = decrypt_capture(run.pcap, empty).flows
    assert flow.record["status"] == "no_keys" and flow.c2s == b"" == flow.s2c


def test_cli_decrypt_flow_log(tmp_path, tlslab_tools, tls_certs):
    run = tlslab.run_openssl_sessions(tmp_path, certs=tls_certs, clients=[ClientSpec(), ClientSpec(args=["-tls1_2"])])
    keylog = tmp_path / "crlf.keys"
    keylog.write_bytes(b"# comment\r\nUNKNOWN_LABEL " + b"00" * 32 + b" " + b"11" * 32 + b"\r\n"
                       + run.keylog.read_bytes().replace(b"\n", b"\r\n") + b"garbage line\r\n")
    flows = tmp_path / "flows.jsonl"
    completed = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(run.pcap), "--keylog", str(keylog), "--flows", str(flows)],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    records = [json.loads(line) for line in flows.read_text().splitlines()]
    assert [r["status"] for r in records] == ["decrypted", "decrypted"]
    assert {r["tls_version"] for r in records} == {"TLSv1.2", "TLSv1.3"}
    for key in ("client", "server", "reason", "cipher_suite", "sni", "alpn", "resumed", "key_updates", "c2s", "s2c"):
        assert all(key in r for r in records), key
    assert "1 lines with unknown labels ignored" in completed.stderr
    assert "line" in completed.stderr and "expected 3 fields" in completed.stderr
    assert "2 connections: 2 decrypted" in completed.stderr
    missing = subprocess.run([sys.executable, "-m", "bridge.cli", "decrypt", "-r", str(tmp_path / "nope.pcap")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "nope.pcap" in missing.stderr
