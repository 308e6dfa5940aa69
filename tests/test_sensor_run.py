"""``tls-bridge run``: configuration, workers sharing a live interface by flow,
restarts, metrics; and ``tls-bridge config``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.capture.pcapfile import read_capture
from bridge.sensor.config import ConfigError, load_config, render_defaults
from tests.support import tlslab
from tests.support.keyfeed import BridgeProcess
from tests.support.netns import replay, veth_namespace
from tests.support.tlslab import ClientSpec

# --- configuration ------------------------------------------------------------------------------


def test_the_documented_defaults_are_a_valid_file_once_sources_are_named(tmp_path):
    path = tmp_path / "sensor.toml"
    path.write_text(render_defaults())
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("interfaces: name at least one" in p for p in caught.value.problems)
    config = load_config(path, ['capture.interfaces=["eth1"]', 'keys.keylogs=["/run/k.log"]', "capture.workers=4"])
    assert config.capture.workers == 4 and config.inject.interface == "tls0" and config.metrics.listen
    for section in ("capture", "keys", "decrypt", "inject", "output", "metrics"):
        assert f"[{section}]" in path.read_text()


def test_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[capture]\ninterfaces = ["eth1"]\nworkers = "two"\n\n[keys]\nkeylogs = ["/k"]\ncolour = 1\n'
                    'feeds = ["udp://x"]\n[bogus]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert f"{path}:3: [capture] workers: expected an integer from 1 to 64, got 'two'" in problems
    assert any(p.startswith(f"{path}:7: [keys] has no option 'colour'") for p in problems)
    assert any(p.startswith(f"{path}:9: unknown section [bogus]") for p in problems)
    assert any(p.startswith(f"{path}:8: [keys] feeds") for p in problems)
    path.write_text('[capture]\ninterfaces = ["eth1"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:2: Unclosed array"):
        load_config(path)
    with pytest.raises(ConfigError, match="--set: \\[capture\\] workers"):
        load_config(None, ['capture.interfaces=["a"]', 'keys.keylogs=["/k"]', "capture.workers=0"])


def test_the_config_command_line():
    bridge = [sys.executable, "-m", "bridge.cli"]
    defaults = subprocess.run([*bridge, "config", "defaults"], capture_output=True, text=True)
    assert defaults.returncode == 0 and "[inject]" in defaults.stdout
    bad = subprocess.run([*bridge, "config", "check", "/nonexistent.toml"], capture_output=True, text=True)
    assert bad.returncode == 1 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr


# --- running ------------------------------------------------------------------------------------

CLIENTS = [ClientSpec(args=["-tls1_3"]), ClientSpec(args=["-tls1_2"]), ClientSpec(args=["-tls1_3"]),
           ClientSpec(args=["-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256"]), ClientSpec(args=["-tls1_3"]),
           ClientSpec(args=["-tls1_2"])]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, tls_certs):
    """Two captures of distinct connections (the second replayed after a worker restart)."""
    tlslab.require_root()
    return [tlslab.run_openssl_sessions(tmp_path_factory.mktemp("run-sessions"), certs=tls_certs, clients=CLIENTS)
            for _ in range(2)]


def _metrics(ns: str, port: int) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", f"http://127.0.0.1:{port}/metrics"],
                          capture_output=True, text=True, check=True).stdout


def _total(text: str, metric: str) -> int:
    return sum(int(float(value)) for value in re.findall(rf"^{metric}{{[^}}]*}} ([0-9.e+]+)$", text, re.MULTILINE))


def _worker_flows(text: str, worker: int) -> int:
    found = re.search(rf'^tls_bridge_flows_total{{worker="{worker}"}} ([0-9.e+]+)$', text, re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def _wait_metrics(ns: str, port: int, condition, timeout: float = 20) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    text = _metrics(ns, port)
    while not condition(text) and time.monotonic() < deadline:
        time.sleep(0.3)
        text = _metrics(ns, port)
    return text


def _flows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait_flows(path: Path, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(_flows(path)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return _flows(path)


@pytest.mark.real
def test_two_workers_share_the_traffic_by_flow_and_a_dead_worker_is_restarted(tmp_path, sessions):
    keylog = tmp_path / "keys.log"  # followed by the workers as it grows
    keylog.write_text(sessions[0].keylog.read_text())
    flows = tmp_path / "flows.jsonl"
    injected = tmp_path / "injected.pcap"
    config = tmp_path / "sensor.toml"
    config.write_text(f"""
[capture]
interfaces = ["vb"]
workers = 2
[keys]
keylogs = ["{keylog}"]
[decrypt]
idle_timeout = 2
[inject]
interface = "tls0"
[output]
flows = "{flows}"
[metrics]
listen = "127.0.0.1:9814"
log_interval = 1
""")
    with veth_namespace("tlsb-run", injection=True) as ns:
        tcpdump = subprocess.Popen(["ip", "netns", "exec", ns, "tcpdump", "-i", "tls0peer", "-U", "-w", str(injected),
                                    "-s", "65535"], stderr=subprocess.PIPE)
        time.sleep(1.0)
        with BridgeProcess(["run", "--config", str(config)], tmp_path / "run.err",
                           prefix=["ip", "netns", "exec", ns]) as sensor:
            sensor.wait_for("running 2 workers")
            _wait_metrics(ns, 9814, lambda text: "tls_bridge_workers_up 2" in text)  # both are capturing
            replay(ns, sessions[0].pcap)
            first = _wait_flows(flows, len(CLIENTS))
            metrics = _wait_metrics(ns, 9814, lambda text: _total(text, "tls_bridge_flows_total") >= len(CLIENTS))
            pids = _worker_pids(sensor)
            assert len(pids) == 2, pids
            os.kill(pids[0], signal.SIGKILL)
            sensor.wait_for("worker 0 exited", timeout=10)
            after = _wait_metrics(ns, 9814, lambda text: 'tls_bridge_worker_restarts_total{worker="0"} 1' in text
                                  and "tls_bridge_workers_up 2" in text)
            with open(keylog, "a") as handle:
                handle.write(sessions[1].keylog.read_text())
            replay(ns, sessions[1].pcap)
            second = _wait_flows(flows, 2 * len(CLIENTS), timeout=40)
            # worker 1 never restarted: its count covers both replays
            final = _wait_metrics(ns, 9814, lambda text: _worker_flows(text, 0) + _worker_flows(text, 1)
                                  >= len(CLIENTS) + _worker_flows(metrics, 1))
            assert sensor.stop() == 0, sensor.text()
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(10)
    assert [r["status"] for r in first] == ["decrypted"] * len(CLIENTS), first
    assert [r["status"] for r in second] == ["decrypted"] * 2 * len(CLIENTS), [
        (r["client"], r["status"], r.get("reason")) for r in second]
    # each connection logged once: both directions went to the same worker
    assert len({r["client"] for r in first}) == len(CLIENTS)
    # Both workers got flows: the fanout hash spreads 12 connections (two replays; 6 could all land on
    # one worker by chance, about 3% of runs) — worker 0 in either life, worker 1 over both.
    assert _worker_flows(metrics, 0) + _worker_flows(final, 0) > 0 and _worker_flows(final, 1) > 0, (metrics, final)
    assert 'tls_bridge_worker_restarts_total{worker="0"} 1' in after and "tls_bridge_workers_up 2" in after
    assert "decrypted" in sensor.text() and "stopped:" in sensor.text()
    synthetic = [f for f in read_capture(injected)]
    assert len(synthetic) > 6 * len(CLIENTS)  # handshakes, data, closes of every connection


def _worker_pids(sensor: BridgeProcess) -> list[int]:
    """The supervisor's worker processes (multiprocessing spawn children), in start order."""
    found = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True).stdout.split()
    children = []
    for pid in map(int, found):
        try:
            stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == sensor.proc.pid:
            children.append((int(stat[19]), pid))  # start time
    return [pid for _, pid in sorted(children)]
