"""The outputs in their fixed order: the flow log names the synthetic connection
whoever wired them; plaintext files; the shared appending flow log."""

from __future__ import annotations

import hashlib
import json
import os
from multiprocessing import Process

from bridge.engine import Engine
from bridge.outputs import FlowLog, Outputs, PlaintextDirWriter
from bridge.reinject.sink import ReinjectSettings, open_reinject
from tests.support.fixtures import FIXTURES


def test_flow_log_line_names_the_synthetic_connection(tmp_path):
    fixture = FIXTURES[0]
    reinject = open_reinject(ReinjectSettings(pcap=str(tmp_path / "out.pcap"), server_port=80))
    outputs = Outputs(flow_log=FlowLog.to_file(str(tmp_path / "flows.jsonl")), reinject=reinject,
                      plaintext=PlaintextDirWriter(str(tmp_path / "plain")))
    engine = Engine(fixture.store(), output=outputs)
    engine.run(fixture.frames())
    engine.finish()
    outputs.close()
    (record,) = [json.loads(line) for line in (tmp_path / "flows.jsonl").read_text().splitlines()]
    synthetic = record["synthetic"]
    assert synthetic["server"].endswith(":80") and synthetic["bytes_c2s"] == record["c2s"]["bytes"]
    assert synthetic["bytes_s2c"] == record["s2c"]["bytes"] and synthetic["segments"] > 0
    for name in ("c2s", "s2c"):
        data = (tmp_path / "plain" / f"{record['flow_id']}.{name}").read_bytes()
        assert hashlib.sha256(data).hexdigest() == fixture.expected[0][name]["sha256"]
    assert (tmp_path / "out.pcap").stat().st_size > record["s2c"]["bytes"]


def test_without_re_injection_the_line_has_no_synthetic_field(tmp_path):
    fixture = FIXTURES[0]
    outputs = Outputs(flow_log=FlowLog.to_file(str(tmp_path / "flows.jsonl")))
    engine = Engine(fixture.store(), output=outputs)
    engine.run(fixture.frames())
    engine.finish()
    outputs.close()
    assert "synthetic" not in json.loads((tmp_path / "flows.jsonl").read_text())


def _append(path: str, marker: int) -> None:
    log = FlowLog.appending(path)
    for index in range(200):
        log.write({"worker": marker, "index": index, "pad": "x" * 300})
    log.close()


def test_workers_appending_to_one_flow_log_keep_lines_whole(tmp_path):
    path = str(tmp_path / "logs" / "flows.jsonl")
    workers = [Process(target=_append, args=(path, marker)) for marker in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    lines = [json.loads(line) for line in open(path)]
    assert len(lines) == 600 and {line["worker"] for line in lines} == {0, 1, 2}
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
