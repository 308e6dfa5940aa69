"""Tests of the test harness itself (tests/support/tlslab.py).

They run real openssl/nginx/curl sessions in private network namespaces,
capture them with tcpdump and check that tshark (the oracle used by the rest
of the suite) decrypts them.  Missing tools fail, never skip.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support import tlslab
from tests.support.tlslab import GET, ClientSpec, run_curl_nginx, run_openssl_sessions, tshark_follow

pytestmark = pytest.mark.real


def _fields(pcap, keylog, port, *fields, display_filter=None) -> list[list[str]]:
    argv = [tlslab.tool("tshark"), "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}",
            "-d", f"tcp.port=={port},tls", "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        argv += ["-e", f]
    if display_filter:
        argv += ["-Y", display_filter]
    r = subprocess.run(argv, capture_output=True, text=True, check=True)
    return [ln.split("\t") for ln in r.stdout.splitlines()]


def _h2_data_by_stream(buf: bytes) -> dict[int, bytes]:
    """Concatenate HTTP/2 DATA frame payloads per stream id (buf: s2c after TLS)."""
    out: dict[int, bytearray] = {}
    i = 0
    if buf.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        i = 24
    while i + 9 <= len(buf):
        ln = int.from_bytes(buf[i : i + 3], "big")
        typ, flags = buf[i + 3], buf[i + 4]
        sid = int.from_bytes(buf[i + 5 : i + 9], "big") & 0x7FFFFFFF
        payload = buf[i + 9 : i + 9 + ln]
        if typ == 0:  # DATA
            if flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            out.setdefault(sid, bytearray()).extend(payload)
        i += 9 + ln
    assert i == len(buf), "trailing partial HTTP/2 frame"
    return {k: bytes(v) for k, v in out.items()}


# --------------------------------------------------------------------------- openssl


@pytest.fixture(scope="module")
def tls13_www_run(tlslab_tools, tls_certs, tmp_path_factory):
    return run_openssl_sessions(
        tmp_path_factory.mktemp("tls13"), certs=tls_certs, clients=[ClientSpec(args=["-tls1_3"])]
    )


def test_tls13_www_get(tls13_www_run):
    run = tls13_www_run
    assert run.pcap.stat().st_size > 0
    labels = run.keylog_labels()
    assert "CLIENT_TRAFFIC_SECRET_0" in labels and "SERVER_TRAFFIC_SECRET_0" in labels
    assert run.keylog.read_text().startswith("# SSL/TLS secrets log file")
    assert "CLIENT_TRAFFIC_SECRET_0" in run.server_keylog.read_text()
    assert run.client_results[0].returncode == 0

    streams = run.follow()
    assert streams == tshark_follow(run.pcap, run.keylog, port=run.port)
    assert len(streams) == 1
    s = streams[0]
    assert s.server == "127.0.0.1:4433" and s.client.startswith("127.0.0.1:")
    assert s.c2s == GET
    assert s.s2c.startswith(b"HTTP/1.0 200 ok\r\n")
    # the oracle agrees with what s_client itself printed
    assert s.s2c in run.client_stdout[0]


def test_capture_looks_like_mirror_port(tls13_www_run):
    """lo MTU 1500 + gso_max_segs 1: MSS 1460 in the SYN, payloads <= 1448 (timestamps)."""
    run = tls13_www_run
    rows = _fields(run.pcap, run.keylog, run.port, "tcp.len", "tcp.options.mss_val", "frame.len")
    mss = {r[1] for r in rows if r[1]}
    assert mss == {"1460"}
    lens = [int(r[0]) for r in rows]
    assert max(lens) == 1448  # the ~5 KB status page is split into full segments
    assert max(int(r[2]) for r in rows) == 1514
    assert run.capture_stats.get("dropped") == 0


def test_tls12_client_random(tlslab_tools, tls_certs, tmp_path):
    run = run_openssl_sessions(
        tmp_path,
        certs=tls_certs,
        server_args=["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
        clients=[ClientSpec()],
    )
    labels = run.keylog_labels()
    assert labels == ["CLIENT_RANDOM"]
    suites = {r[0] for r in _fields(run.pcap, run.keylog, run.port, "tls.handshake.ciphersuite",
                                    display_filter="tls.handshake.type == 2")}
    assert suites == {"0xc02f"}
    (s,) = tshark_follow(run.pcap, run.keylog, port=run.port)
    assert s.c2s == GET
    assert b"HTTP/1.0 200 ok" in s.s2c
    assert b"ECDHE-RSA-AES128-GCM-SHA256" in s.s2c  # the -www status page names the cipher


def test_keyupdate_both_directions(tlslab_tools, tls_certs_ec, tmp_path):
    """Client 'k' (KeyUpdate) and 'K' (update_requested -> server updates too) in stdio mode."""
    run = run_openssl_sessions(
        tmp_path,
        certs=tls_certs_ec,
        www=False,
        clients=[
            ClientSpec(
                args=["-tls1_3"],
                script=[(0, b"before\n"), (0.2, b"k\n"), (0.2, b"after-k\n"), (0.2, b"K\n"), (0.3, b"after-K\n")],
                server_script=[(0.1, b"srv-before\n"), (0.9, b"srv-after-K\n")],
            )
        ],
    )
    assert run.client_stderr[0].count(b"KEYUPDATE") == 2
    ku = _fields(run.pcap, run.keylog, run.port, "tcp.srcport", display_filter="tls.handshake.type == 24")
    senders = [r[0] for r in ku]
    assert senders.count("4433") >= 1 and len(senders) - senders.count("4433") == 2, senders
    # the key log only has generation-0 secrets; tshark derives the updated keys itself
    assert not any(lbl.endswith("_1") for lbl in run.keylog_labels())
    (s,) = tshark_follow(run.pcap, run.keylog, port=run.port)
    assert s.c2s == b"before\nafter-k\nafter-K\n"
    assert s.s2c == b"srv-before\nsrv-after-K\n"


def test_resumption_and_early_data(tlslab_tools, tls_certs, tmp_path):
    sess = tmp_path / "sess.pem"
    run = run_openssl_sessions(
        tmp_path,
        certs=tls_certs,
        www=False,
        server_args=["-early_data"],
        clients=[
            ClientSpec(sess_out=sess, script=[(0, b"first\n")]),
            ClientSpec(sess_in=sess, early_data=b"EARLY\n", script=[(0.1, b"normal\n")],
                       server_script=[(0.2, b"srv\n")]),
        ],
    )
    assert sess.exists()
    assert b"Reused, TLSv1.3" in run.client_stdout[1]
    assert "CLIENT_EARLY_TRAFFIC_SECRET" in run.keylog_labels()
    s0, s1 = tshark_follow(run.pcap, run.keylog, port=run.port)
    assert (s0.c2s, s0.s2c) == (b"first\n", b"")
    assert (s1.c2s, s1.s2c) == (b"EARLY\nnormal\n", b"srv\n")
    assert s0.client != s1.client


def test_tls12_renegotiation_and_ipv6(tlslab_tools, tls_certs, tmp_path):
    """OpenSSL 3.0 needs -client_renegotiation on the server for a client 'R'."""
    run = run_openssl_sessions(
        tmp_path,
        certs=tls_certs,
        www=False,
        server_args=["-tls1_2", "-client_renegotiation"],
        clients=[ClientSpec(connect="[::1]:4433", script=[(0, b"before\n"), (0.2, b"R\n"), (0.3, b"after\n")],
                            server_script=[(0.7, b"srv\n")])],
    )
    assert b"RENEGOTIATING" in run.client_stderr[0]
    assert run.keylog_labels() == ["CLIENT_RANDOM", "CLIENT_RANDOM"]
    (s,) = tshark_follow(run.pcap, run.keylog, port=run.port)
    assert s.server == "[::1]:4433" and s.client.startswith("[::1]:")
    assert (s.c2s, s.s2c) == (b"before\nafter\n", b"srv\n")


def test_follow_batching_matches_single(tlslab_tools, tls_certs, tmp_path):
    """Several -z follow in one tshark run == one run per stream."""
    run = run_openssl_sessions(
        tmp_path, certs=tls_certs, clients=[ClientSpec(), ClientSpec(args=["-tls1_2"]), ClientSpec()]
    )
    batched = tshark_follow(run.pcap, run.keylog, port=run.port)
    single = tshark_follow(run.pcap, run.keylog, port=run.port, batch=1)
    assert batched == single
    assert [s.stream_index for s in batched] == [0, 1, 2]
    assert all(s.c2s == GET and s.s2c.startswith(b"HTTP/1.0 200 ok") for s in batched)
    # wrong keys: streams are still listed, nothing decrypts
    empty = tmp_path / "empty.keylog"
    empty.write_text("")
    assert all(s.c2s == s.s2c == b"" for s in tshark_follow(run.pcap, empty, port=run.port))


# --------------------------------------------------------------------------- nginx + curl


def test_curl_nginx_http2_tls13(nginx_curl_tools, tls_certs, tmp_path):
    run = run_curl_nginx(tmp_path, certs=tls_certs, http2=True, tls="1.3", urls=["/index.html", "/big.bin"])
    files = run.files
    assert run.client_stdout == [files["/index.html"] + files["/big.bin"]]
    assert "CLIENT_TRAFFIC_SECRET_0" in run.keylog_labels()
    (s,) = tshark_follow(run.pcap, run.keylog, port=run.port)
    assert s.c2s.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    bodies = sorted(_h2_data_by_stream(s.s2c).values(), key=len)
    assert bodies == [files["/index.html"], files["/big.bin"]]


def test_curl_nginx_tls12_http11(nginx_curl_tools, tls_certs, tmp_path):
    run = run_curl_nginx(
        tmp_path, certs=tls_certs, tls="1.2", ciphers="ECDHE-RSA-AES256-GCM-SHA384",
        urls=["/small.txt", "/big.bin"],
    )
    assert run.keylog_labels() == ["CLIENT_RANDOM"]
    (s,) = tshark_follow(run.pcap, run.keylog, port=run.port)
    assert s.c2s.startswith(b"GET /small.txt HTTP/1.1\r\n") and b"GET /big.bin HTTP/1.1\r\n" in s.c2s
    assert run.files["/big.bin"] in s.s2c
    assert s.s2c.count(b"HTTP/1.1 200 OK\r\n") == 2
    rows = _fields(run.pcap, run.keylog, run.port, "tcp.len")
    assert max(int(r[0]) for r in rows) == 1448


# --------------------------------------------------------------------------- plumbing


def test_require_tools_fails_not_skips():
    with pytest.raises(pytest.fail.Exception, match="definitely-not-a-tool-tlslab"):
        tlslab.require_tools("definitely-not-a-tool-tlslab")


def test_netns_cleanup(tlslab_tools):
    with tlslab.Netns() as ns:
        name = ns.name
        p = ns.popen(["sleep", "60"])
        deadline = time.monotonic() + 5
        while p.pid not in ns.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.pid in ns.pids()
        r = ns.run(["ip", "-o", "link", "show", "lo"], text=True)
        assert "mtu 1500" in r.stdout and "UP" in r.stdout
    assert p.wait(5) is not None  # killed on exit
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert name not in listed
