"""What Zeek saw, for the demos: Zeek with the project's package (``zeek-scripts/``)
reads the synthetic cleartext the bridge wrote (``-w``) together with the flow
log, as a sensor would, and the demo prints its http.log lines with their
``tls_bridge_*`` facts, the HTTP/2 connections (Zeek has no HTTP/2 analyzer: they
are in conn.log and tls_bridge.log only), tls_bridge.log with the key origin,
and the notices.

Zeek is optional for the demo: ``$ZEEK``, else ``zeek`` on PATH, else ``/opt/zeek/bin/zeek``
(where ``../shared/zeek/install.sh`` puts it, which ``scripts/setup.sh`` runs
when that folder is there).  Without one, the demo says so in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "zeek-scripts"
OPT_ZEEK = Path("/opt/zeek/bin/zeek")


def find_zeek() -> str | None:
    """``$ZEEK``, else ``zeek`` on PATH, else ``/opt/zeek/bin/zeek``; None when there is none."""
    for candidate in (os.environ.get("ZEEK"), shutil.which("zeek"), str(OPT_ZEEK)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def read_log(path: Path) -> list[dict[str, str | None]]:
    """A Zeek ASCII (TSV) log as dicts by field name: unset fields are None, empty ones "".
    A log Zeek did not write: []."""
    if not path.exists():
        return []
    fields: list[str] = []
    unset, empty = "-", "(empty)"
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line.startswith("#unset_field"):
            unset = line.split("\t")[1]
        elif line.startswith("#empty_field"):
            empty = line.split("\t")[1]
        elif line and not line.startswith("#"):
            values = line.split("\t")
            if len(values) != len(fields):
                raise ValueError(f"{path}: {len(values)} values for {len(fields)} fields: {line!r}")
            rows.append({k: (None if v == unset else "" if v == empty else v) for k, v in zip(fields, values)})
    return rows


def _facts(row: dict) -> str:
    origin = f" origin: {row['tls_bridge_origin']}" if row.get("tls_bridge_origin") else ""
    return (f"[tls_bridge: flow {row['tls_bridge_flow_id']} {row['tls_bridge_version']} {row['tls_bridge_cipher']} "
            f"sni={row['tls_bridge_sni']} port {row['tls_bridge_resp_p']}{origin}]")


def zeek_report(synthetic: Path, flows: Path, say=print) -> bool:
    """Runs Zeek on the synthetic pcap with the flow log, prints what it saw; False when it saw
    less than the bridge emitted.  No Zeek installed: one line, True."""
    zeek = find_zeek()
    if zeek is None:
        say("\nZeek: not installed, so not shown (any Zeek >= 6.0 on PATH, or `sh ../shared/zeek/install.sh`)")
        return True
    records = [json.loads(line) for line in flows.read_text().splitlines() if line.strip()]
    emitted = [r for r in records if r.get("synthetic")]
    work = synthetic.parent / "zeek"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    result = subprocess.run([zeek, "-r", str(synthetic), str(PACKAGE), f"TLSBridge::flow_log={flows.resolve()}"],
                            cwd=work, capture_output=True, text=True, timeout=300)
    version = subprocess.run([zeek, "--version"], capture_output=True, text=True, timeout=30).stdout.split()[-1]
    say(f"\nWhat Zeek saw (Zeek {version} with zeek-scripts/, on the same synthetic cleartext and the flow log):")
    if result.returncode != 0:
        say(f"  Zeek FAILED (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
        return False
    conn = read_log(work / "conn.log")
    http = read_log(work / "http.log")
    bridge = read_log(work / "tls_bridge.log")
    notices = read_log(work / "notice.log")
    for r in http:
        say(f"  http.log  {r['id.orig_h']}:{r['id.orig_p']} -> {r['id.resp_h']}:{r['id.resp_p']}  {r['method']} "
            f"{r['host']}{r['uri']}  -> {r['status_code']}  {_facts(r)}")
    with_http = {r["uid"] for r in http}
    for r in conn:
        if r["uid"] not in with_http and r.get("tls_bridge_flow_id"):
            say(f"  conn.log  {r['id.orig_h']}:{r['id.orig_p']} -> {r['id.resp_h']}:{r['id.resp_p']}  "
                f"{r['orig_bytes']}+{r['resp_bytes']} bytes, no HTTP/1 (Zeek has no HTTP/2 analyzer)  {_facts(r)}")
    for r in bridge:
        vm = f"vm {r['origin_vm']}: " if r.get("origin_vm") else ""
        keys = (f"key origin: {vm}{r['origin_comm']} pid {r['origin_pid']}, {r['origin_trigger']}"
                if r.get("origin_trigger") else "key origin: none (a key log)")
        say(f"  tls_bridge.log  flow {r['flow_id']} uid {r['uid']}  {r['status']} {r['version']} alpn={r['alpn'] or '-'}  "
            f"{keys}")
    for n in notices:
        say(f"  notice {n['note']}  {n['msg']}  ({n['sub']})")
    annotated = all(r.get("tls_bridge_flow_id") for r in http)
    uids = {r["uid"] for r in conn}
    logged = len(bridge) == len(records) and all(r["uid"] in uids for r in bridge if r["synthetic_resp_p"])
    ok = bool(http) and annotated and logged and len([r for r in bridge if r["uid"]]) == len(emitted)
    if not ok:
        say(f"  Zeek FAILED to see what the bridge emitted: {len(emitted)} connections emitted, "
            f"{len(bridge)} tls_bridge.log lines, http.log annotated: {annotated} (logs in {work})")
    return ok
