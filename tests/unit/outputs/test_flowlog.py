"""The flow log under a flood: never-completed connections summarised per minute
(a sample of lines, counts per server, status and end), every other connection a
line; ``each`` logs them all; a summary line is no flow record."""

from __future__ import annotations

import io
import json

from bridge.engine.events import FlowFinished, FlowInfo
from bridge.outputs.flowlog import FlowLog, FlowLogSettings
from tests.support.decrypt import summary_for

T0 = 1_700_000_040 * 1_000_000_000  # a minute boundary
#: Flow ids whose flow log record was built.
BUILT: set[int] = set()


def _event(index: int, at_s: float, *, never_completed: bool = True, server: int = 10) -> FlowFinished:
    info = FlowInfo(index, 4, bytes([10, 0, index >> 8 & 255, index & 255]), 1024 + index, bytes([198, 51, 100, server]),
                    443, T0 + int(at_s * 1e9))
    def build():  # type: ignore[no-untyped-def]
        BUILT.add(index)
        return summary_for(info, ts_end_ns=info.first_timestamp_ns, status="partial" if never_completed else "decrypted")

    return FlowFinished(info, "end_of_capture", never_completed=never_completed, build=build,
                        status="partial" if never_completed else "decrypted", ts_end=round(T0 / 1e9 + at_s, 6))


def _log(events: list[FlowFinished], **settings: object) -> tuple[list[dict], FlowLog]:
    stream = io.StringIO()
    log = FlowLog(stream=stream, settings=FlowLogSettings(**settings))  # type: ignore[arg-type]
    stream.close = lambda: None  # type: ignore[method-assign]
    for event in events:
        log.finished(event)
    log.close()
    return [json.loads(line) for line in stream.getvalue().splitlines()], log


def test_a_flood_is_a_sample_and_a_summary_line_a_minute():
    flood = [_event(i, i * 0.01, server=10 + i % 3) for i in range(500)]  # minute 0: 5 s of flood
    later = [_event(1000 + i, 61 + i, server=10) for i in range(3)]       # minute 1
    real = _event(2000, 30.0, never_completed=False)
    lines, log = _log([*flood[:250], real, *flood[250:], *later], never_completed_sample=10)
    records = [line for line in lines if "flow_id" in line]
    summaries = [line for line in lines if line.get("summary") == "never_completed"]
    assert [r["flow_id"] for r in records] == [*range(10), 2000, 1000, 1001, 1002]
    first, second = summaries
    assert first == {"summary": "never_completed", "ts_start": 1_700_000_040.0, "ts_end": 1_700_000_100.0,
                     "connections": 500, "sampled": 10, "servers": {"198.51.100.10:443": 167, "198.51.100.11:443": 167,
                                                                    "198.51.100.12:443": 166},
                     "other_servers": 0, "statuses": {"partial": 500}, "ended_by": {"end_of_capture": 500}}
    assert second["connections"] == 3 and second["sampled"] == 3 and second["ts_start"] == 1_700_000_100.0
    assert lines.index(first) < lines.index(records[-3])  # the minute's line is written when it is over
    assert log.never_completed == 503 and log.summarised == 490
    assert BUILT.isdisjoint(range(10, 500))  # a summarised connection's record is never built


def test_servers_beyond_the_bound_are_counted_together():
    flood = [_event(i, 0.0, server=i) for i in range(50)]
    (summary,) = [line for line in _log(flood, never_completed_servers=5, never_completed_sample=0)[0]]
    assert len(summary["servers"]) == 5 and summary["other_servers"] == 45 and summary["connections"] == 50


def test_each_logs_every_connection():
    flood = [_event(i, i * 0.01) for i in range(30)]
    lines, log = _log(flood, never_completed="each")
    assert [line["flow_id"] for line in lines] == list(range(30)) and log.never_completed == 30
