"""Key log parity with Wireshark, on real OpenSSL sessions: every key log line
Wireshark reads — ``RSA <encrypted pre-master, 8 bytes> <pre-master>``,
``PMS_CLIENT_RANDOM``, ``RSA Session-ID: Master-Key:`` — decrypts the
connection alone, and our plaintext equals tshark's given the same key log.
``*_TRAFFIC_SECRET_N`` lines (after a KeyUpdate) are used too.

Independent oracles: the pre-master secret is recovered from the captured
ClientKeyExchange (tshark's ``tls.handshake.epms``) with the server's RSA key
(``cryptography``), and the later-epoch secret is derived with
``cryptography``'s HKDF, not the project's key schedule.
"""

from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from tests.support import tlslab
from bridge.capture.pcapfile import read_capture
from bridge.engine.engine import Engine
from bridge.keys.keylog import read_keylog
from bridge.keys.store import KeyStore
from bridge.secrets import rsa_handle
from tests.support.decrypt import Collector, assert_matches_tshark, decrypt_capture
from tests.support.tlslab import ClientSpec

pytestmark = pytest.mark.real

STATIC_RSA = "AES128-GCM-SHA256"  # TLS_RSA_WITH_AES_128_GCM_SHA256: the pre-master travels RSA-encrypted
NO_EMS_CONF = """openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Options = -ExtendedMasterSecret
"""


def _tshark_fields(pcap, display_filter: str, *fields: str) -> list[list[str]]:
    result = subprocess.run(
        [tlslab.tool("tshark"), "-n", "-r", str(pcap), "-Y", display_filter, "-T", "fields",
         *(arg for field in fields for arg in ("-e", field))],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines() if line.strip()]


def _hex(field: str) -> bytes:
    return bytes.fromhex(field.replace(":", ""))


def _static_rsa_run(tmp_path, certs, *, ems: bool, monkeypatch):
    if not ems:
        conf = tmp_path / "no-ems.cnf"
        conf.write_text(NO_EMS_CONF)
        monkeypatch.setenv("OPENSSL_CONF", str(conf))
    clients = [ClientSpec(args=["-tls1_2", "-cipher", f"{STATIC_RSA}:@SECLEVEL=0"]) for _ in range(2)]
    return tlslab.run_openssl_sessions(
        tmp_path, certs=certs, server_args=["-cipher", f"{STATIC_RSA}:@SECLEVEL=0"], clients=clients,
        name="ems" if ems else "noems",
    )


def _pre_masters(run, certs) -> list[tuple[bytes, bytes, bytes]]:
    """(client random, encrypted pre-master, pre-master) per connection, from the
    capture and the server's private key."""
    key = serialization.load_pem_private_key(certs.key.read_bytes(), password=None)
    randoms = {row[0]: _hex(row[1]) for row in _tshark_fields(run.pcap, "tls.handshake.type==1", "tcp.stream", "tls.handshake.random")}
    out = []
    for stream, epms in _tshark_fields(run.pcap, "tls.handshake.type==16", "tcp.stream", "tls.handshake.epms"):
        encrypted = _hex(epms)
        out.append((randoms[stream], encrypted, key.decrypt(encrypted, padding.PKCS1v15())))
    return out


def _only(keylog, labels: set[str], path):
    lines = [line for line in keylog.read_text().splitlines() if line.split(" ", 1)[0] in labels]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _check(run, keylog, *, connections: int, ems: bool):
    result = decrypt_capture(run.pcap, keylog)
    assert len(result.flows) == connections
    for flow in result.flows:
        assert flow.record["status"] == "decrypted", flow.record
        assert flow.record["cipher_suite"] == "TLS_RSA_WITH_AES_128_GCM_SHA256"
        assert flow.record["extended_master_secret"] is ems
        assert flow.c2s.startswith(b"GET / HTTP/1.0") and b"HTTP/1.0 200 ok" in flow.s2c
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, keylog, port=run.port), expect_streams=connections)


@pytest.mark.parametrize("ems", [True, False], ids=["ems", "no-ems"])
def test_openssls_own_rsa_lines_alone_decrypt_static_rsa_like_wireshark(tmp_path, tlslab_tools, tls_certs, ems, monkeypatch):
    run = _static_rsa_run(tmp_path, tls_certs, ems=ems, monkeypatch=monkeypatch)
    labels = run.keylog_labels()
    assert labels.count("RSA") == 2 and labels.count("CLIENT_RANDOM") == 2, labels  # what OpenSSL's client writes
    rsa_only = _only(run.keylog, {"RSA"}, tmp_path / "rsa-only.keylog")
    # The RSA lines are what the server's private key says about the captured ClientKeyExchanges.
    expected = {f"RSA {encrypted[:8].hex()} {pre_master.hex()}" for _, encrypted, pre_master in _pre_masters(run, tls_certs)}
    assert set(rsa_only.read_text().splitlines()) == expected
    _check(run, rsa_only, connections=2, ems=ems)
    # The lines may also come after the traffic (a key log followed live): the
    # records wait, and the lines find them by their ClientKeyExchange.
    store, collector = KeyStore(), Collector()
    engine = Engine(store, output=collector)
    engine.run(read_capture(run.pcap))
    assert collector.result.flows == []  # closed, waiting for secrets
    for entry in read_keylog(rsa_only):
        store.add_entry(entry)
    engine.finish()
    assert [flow.record["status"] for flow in collector.result.flows] == ["decrypted", "decrypted"]
    assert all(store.lookup_handle(rsa_handle(entry.handle)) is None for entry in read_keylog(rsa_only))  # forgotten


@pytest.mark.parametrize("ems", [True, False], ids=["ems", "no-ems"])
def test_pms_client_random_lines_decrypt_like_wireshark(tmp_path, tlslab_tools, tls_certs, ems, monkeypatch):
    run = _static_rsa_run(tmp_path, tls_certs, ems=ems, monkeypatch=monkeypatch)
    keylog = tmp_path / "pms.keylog"
    keylog.write_text("".join(f"PMS_CLIENT_RANDOM {random.hex()} {pre_master.hex()}\n"
                              for random, _, pre_master in _pre_masters(run, tls_certs)))
    _check(run, keylog, connections=2, ems=ems)


def test_rsa_session_id_master_key_lines_decrypt_like_wireshark(tmp_path, tlslab_tools, tls_certs):
    # Without tickets, so that the server names the session with an ID.
    run = tlslab.run_openssl_sessions(tmp_path, certs=tls_certs, server_args=["-no_ticket"],
                                      clients=[ClientSpec(args=["-tls1_2"])])
    [(random, master)] = [(r, s) for label, r, s in tlslab.keylog_lines(run.keylog) if label == "CLIENT_RANDOM"]
    [[session_id]] = _tshark_fields(run.pcap, "tls.handshake.type==2", "tls.handshake.session_id")
    assert _hex(session_id), "the server gave no session ID"
    keylog = tmp_path / "session.keylog"
    keylog.write_text(f"# NSS's form\nRSA Session-ID:{_hex(session_id).hex()} Master-Key:{master}\n")
    result = decrypt_capture(run.pcap, keylog)
    [flow] = result.flows
    assert flow.record["status"] == "decrypted", flow.record
    assert flow.record["client_random"] == random
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, keylog, port=run.port), expect_streams=1)


def _hkdf_expand_label(secret: bytes, label: bytes, length: int, algorithm) -> bytes:
    """RFC 8446 §7.1 with cryptography's HKDF-Expand (an oracle independent of bridge.tls)."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(algorithm=algorithm, length=length, info=info).derive(secret)


def test_traffic_secret_n_lines_after_a_key_update(tmp_path, tlslab_tools, tls_certs):
    """A key log holding CLIENT_TRAFFIC_SECRET_1 (as some libraries write after a
    KeyUpdate) but not CLIENT_TRAFFIC_SECRET_0: what the client sent after its
    KeyUpdate is decrypted, what it sent before is counted as not decrypted.  With
    both lines, everything is decrypted exactly as tshark does with epoch 0 alone."""
    script = [(0.0, b"before the update\n"), (0.3, b"k\n"), (0.3, b"after the update\n"), (0.4, b"still after\n")]
    run = tlslab.run_openssl_sessions(
        tmp_path, certs=tls_certs, server_mode="stdio",
        server_args=["-ciphersuites", "TLS_AES_256_GCM_SHA384"],
        clients=[ClientSpec(args=["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384"], script=script,
                            server_script=[(0.2, b"server says hi\n")])],
    )
    lines = tlslab.keylog_lines(run.keylog)
    [(random, secret0)] = [(r, s) for label, r, s in lines if label == "CLIENT_TRAFFIC_SECRET_0"]
    secret1 = _hkdf_expand_label(bytes.fromhex(secret0), b"traffic upd", 48, hashes.SHA384())
    epoch1_line = f"CLIENT_TRAFFIC_SECRET_1 {random} {secret1.hex()}\n"

    without_zero = tmp_path / "epoch1.keylog"
    without_zero.write_text("".join(f"{label} {r} {s}\n" for label, r, s in lines if label != "CLIENT_TRAFFIC_SECRET_0")
                            + epoch1_line)
    [flow] = decrypt_capture(run.pcap, without_zero).flows
    assert flow.c2s == b"after the update\nstill after\n"
    assert flow.s2c == b"server says hi\n"
    assert flow.record["c2s"]["key_updates"] == 1
    assert flow.record["c2s"]["skipped_records"] >= 2  # the first line and the KeyUpdate itself
    assert flow.record["status"] == "partial" and "before KeyUpdate 1" in flow.record["reason"], flow.record

    both = tmp_path / "both.keylog"
    both.write_text(run.keylog.read_text() + epoch1_line)
    result = decrypt_capture(run.pcap, both)
    [flow] = result.flows
    assert flow.record["status"] == "decrypted", flow.record
    assert flow.c2s == b"before the update\nafter the update\nstill after\n"
    assert_matches_tshark(result, tlslab.tshark_follow(run.pcap, run.keylog, port=run.port), expect_streams=1)


def test_keys_publish_keeps_the_feed_to_rfc_9850_labels_and_says_what_it_left_out(tmp_path):
    """An OpenSSL static-RSA key log (RSA + CLIENT_RANDOM lines) and a PMS line: the
    feed carries the CLIENT_RANDOM line only, and the publisher says why."""
    from tests.support.keyfeed import BridgeProcess, free_tcp_pair, keylog_line_set, make_feed_certs

    certs = make_feed_certs(tmp_path / "certs")
    keylog, dumped = tmp_path / "mixed.keylog", tmp_path / "dumped.keylog"
    random = "ab" * 32
    client_random_line = f"CLIENT_RANDOM {random} {'11' * 48}"
    keylog.write_text(f"RSA 0102030405060708 {'22' * 48}\n{client_random_line}\n"
                      f"PMS_CLIENT_RANDOM {random} {'33' * 48}\nCLIENT_TRAFFIC_SECRET_1 {random} {'44' * 32}\n")
    endpoint = f"tcp://127.0.0.1:{free_tcp_pair()}"
    with BridgeProcess(["keys", "publish", "--keylog", str(keylog), "--bind", endpoint, *certs.publisher_args()],
                       tmp_path / "publish.err") as publisher:
        publisher.wait_for("publishing 1 records")
        publisher.wait_for("3 lines not published")
        with BridgeProcess(["keys", "dump", "--connect", endpoint, *certs.sensor_args(), "-o", str(dumped),
                            "--timeout", "3"], tmp_path / "dump.err") as dump:
            assert dump.wait() == 0, dump.text()
        assert publisher.stop() == 0, publisher.text()
    assert keylog_line_set(dumped) == {client_random_line}
