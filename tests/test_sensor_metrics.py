"""``tls-bridge run``'s Prometheus endpoint (prometheus-client): the text format
and its content type, every metric, and the histograms of key lag (ClientHello
seen → secret available) and record hold (a record's wait for secrets before it
was decrypted), whose counts must match what happened on a real replay."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess
from tests.support.netns import replay, veth_namespace
from tests.support.tlslab import ClientSpec

pytestmark = pytest.mark.real

CLIENTS = [ClientSpec(args=["-tls1_3"]), ClientSpec(args=["-tls1_2"]), ClientSpec(args=["-tls1_3"])]
PORT = 9817
WAIT = 1.2  # seconds the secrets come after the traffic


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, tls_certs):
    tlslab.require_root()
    return [tlslab.run_openssl_sessions(tmp_path_factory.mktemp("metrics-sessions"), certs=tls_certs, clients=CLIENTS)
            for _ in range(2)]


def _scrape(ns: str) -> tuple[str, str]:
    """(content type, body) of /metrics."""
    result = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "-D", "-", f"http://127.0.0.1:{PORT}/metrics"],
                            capture_output=True, text=True, check=True)
    headers, _, body = result.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    [content_type] = re.findall(r"(?im)^content-type:\s*(.+?)\s*$", headers)
    return content_type, body


def _value(body: str, sample: str) -> float:
    """One sample's value; ``sample`` is the name with its labels as exposed."""
    found = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.rsplit(" ", 1)[0] == sample]
    assert len(found) == 1, (sample, body)
    return found[0]


def _wait(ns: str, condition, timeout: float = 30) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        body = _scrape(ns)[1]
        if condition(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


def _flows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _hist(body: str, name: str, le: str) -> float:
    return _value(body, f'tls_bridge_{name}_bucket{{le="{le}",worker="0"}}')


def test_histograms_of_key_lag_and_record_hold_count_what_happened(tmp_path, sessions):
    keylog = tmp_path / "keys.log"
    keylog.write_text("")  # the secrets come later
    flows = tmp_path / "flows.jsonl"
    config = tmp_path / "sensor.toml"
    config.write_text(f"""
[capture]
interfaces = ["vb"]
workers = 1
[keys]
keylogs = ["{keylog}"]
[decrypt]
key_wait = 60
[inject]
interface = "tls0"
[output]
flows = "{flows}"
[metrics]
listen = "127.0.0.1:{PORT}"
""")
    count = len(CLIENTS)
    with veth_namespace("kp-metrics", injection=True) as ns:
        with BridgeProcess(["run", "--config", str(config)], tmp_path / "run.err",
                           prefix=["ip", "netns", "exec", ns]) as sensor:
            sensor.wait_for("running 1 workers")
            _wait(ns, lambda body: "tls_bridge_workers_up 1.0" in body)
            content_type, body = _scrape(ns)
            assert content_type.startswith("text/plain; version=") and "charset=utf-8" in content_type
            assert _value(body, 'tls_bridge_key_lag_seconds_count{worker="0"}') == 0

            # 1. Traffic first, secrets WAIT seconds later: every connection lags, every decrypted record was held.
            replay(ns, sessions[0].pcap)
            held = _wait(ns, lambda body: _value(body, 'tls_bridge_waiting_for_keys{worker="0"}') == count)
            assert _value(held, 'tls_bridge_waiting_for_keys{worker="0"}') == count, held
            time.sleep(WAIT)
            with open(keylog, "a") as handle:
                handle.write(sessions[0].keylog.read_text())
            deadline = time.monotonic() + 30
            while len(_flows(flows)) < count and time.monotonic() < deadline:
                time.sleep(0.2)
            first = _wait(ns, lambda body: _value(body, 'tls_bridge_key_lag_seconds_count{worker="0"}') == count)
            logged = _flows(flows)

            # 2. Secrets first, then the traffic: no lag, nothing held.
            with open(keylog, "a") as handle:
                handle.write(sessions[1].keylog.read_text())
            time.sleep(1.0)  # the follower polls every 0.1 s
            replay(ns, sessions[1].pcap)
            deadline = time.monotonic() + 30
            while len(_flows(flows)) < 2 * count and time.monotonic() < deadline:
                time.sleep(0.2)
            second = _wait(ns, lambda body: _value(body, 'tls_bridge_key_lag_seconds_count{worker="0"}') == 2 * count)
            assert sensor.stop() == 0, sensor.text()

    assert [r["status"] for r in logged] == ["decrypted"] * count, logged
    records = sum(r[d]["decrypted_records"] for r in logged for d in ("c2s", "s2c"))
    assert records > 2 * count
    # key lag: one per connection, each at least WAIT (the ClientHellos were all seen before the wait began)
    assert _value(first, 'tls_bridge_key_lag_seconds_count{worker="0"}') == count
    assert _hist(first, "key_lag_seconds", "1.0") == 0 and _hist(first, "key_lag_seconds", "+Inf") == count
    assert count * WAIT <= _value(first, 'tls_bridge_key_lag_seconds_sum{worker="0"}') < count * 30
    # record hold: every decrypted record waited, each at least WAIT
    assert _value(first, 'tls_bridge_record_hold_seconds_count{worker="0"}') == records
    assert _hist(first, "record_hold_seconds", "1.0") == 0
    assert _value(first, 'tls_bridge_record_hold_seconds_sum{worker="0"}') >= records * WAIT

    assert [r["status"] for r in _flows(flows)] == ["decrypted"] * 2 * count
    assert _hist(second, "key_lag_seconds", "0.001") == count  # the secrets were there at the ClientHello
    assert _value(second, 'tls_bridge_key_lag_seconds_count{worker="0"}') == 2 * count
    assert _value(second, 'tls_bridge_record_hold_seconds_count{worker="0"}') == records  # none held
    # the other metrics keep their names and help texts
    for line in ("# HELP tls_bridge_flows_logged_total Connections logged, by status.",
                 "# TYPE tls_bridge_workers_up gauge", "# TYPE tls_bridge_packets_total counter",
                 "# HELP tls_bridge_packets_total Packets captured.", "# TYPE tls_bridge_key_lag_seconds histogram"):
        assert line in second
    assert _value(second, 'tls_bridge_flows_logged_total{status="decrypted",worker="0"}') == 2 * count
    # the compiled path took each connection's SYN at least (held until its server answered), and
    # no more frames than there were; these short connections' records all went through Python
    taken = _value(second, 'tls_bridge_fast_path_frames_total{worker="0"}')
    assert 2 * count <= taken <= _value(second, 'tls_bridge_tcp_segments_total{worker="0"}')
    assert _value(second, 'tls_bridge_fast_path_records_total{worker="0"}') == 0
