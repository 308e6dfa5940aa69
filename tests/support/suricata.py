"""Drive the REAL Suricata 7 over the bridge's cleartext output, read eve.json back.

* :func:`require_suricata` -- path of ``suricata`` (7+), else the test FAILS
  (never skips) with an install hint.
* :func:`run_offline` -- ``suricata -r PCAP -k all --runmode single`` with a
  minimal config generated in ``workdir``; returns an :class:`EveLog`.
* :class:`LiveSuricata` -- Suricata on an AF_PACKET interface INSIDE a network
  namespace (``ip netns exec NS suricata --af-packet=IFACE``), started, waited
  for ("Engine started"), stopped with SIGTERM; ``.stop()`` returns the EveLog.
* :func:`inject_pcap` -- write the frames of a pcap out of an interface inside a
  namespace (stdlib AF_PACKET, no scapy in the child).

Observed behaviour of Suricata 7.0.10 this module relies on:

* ``-k all`` forces IPv4/TCP/UDP checksum validation on pcap input; a packet
  with a bad TCP checksum is counted (``tcp.invalid_checksum``) and NOT fed to
  stream reassembly, so the app-layer never sees it.  Our synthetic packets
  must therefore come through with ``-k all`` untouched -- that is the point.
* ``--init-errors-fatal`` turns a rule that fails to parse into a non-zero
  exit instead of a warning ("N rules failed").
* A top-level ``include:`` REPLACES keys already defined (lists are not
  appended); see deploy/suricata/tls-bridge.yaml.
* In live mode flows still open are logged at shutdown (flow.reason
  "shutdown"); http events are written when a transaction completes, so wait
  for them (:meth:`LiveSuricata.wait_for`) before stopping -- packets still in
  the ring at SIGTERM may be dropped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Self

try:  # the helper is usable outside pytest (demo scripts); pytest makes it fail, not skip
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]


class SuricataError(RuntimeError):
    """Suricata refused the config/rules, died, or did not start in time."""


INSTALL_HINT = (
    "Suricata 7 is required (never skipped). On Debian bookworm run scripts/setup.sh: it adds "
    "the bookworm-backports suite from the archive your apt sources use for bookworm "
    "(python3 scripts/apt_sources.py bookworm) and runs apt-get install -t bookworm-backports suricata"
)

SYSTEM_RULE_DIRS = (Path("/etc/suricata/rules"), Path("/usr/share/suricata/rules"))
CLASSIFICATION = Path("/etc/suricata/classification.config")
REFERENCE = Path("/etc/suricata/reference.config")
DEFAULT_EVENT_RULES = (
    "stream-events.rules",
    "decoder-events.rules",
    "app-layer-events.rules",
    "http-events.rules",
    "tls-events.rules",
)


def _fail(msg: str) -> None:
    if pytest is not None:
        pytest.fail(msg, pytrace=False)
    raise SuricataError(msg)


def require_suricata() -> str:
    """Absolute path of a Suricata >= 7 binary; FAIL the test otherwise."""
    path = shutil.which("suricata") or next(
        (p for p in ("/usr/bin/suricata", "/usr/sbin/suricata", "/usr/local/bin/suricata") if os.access(p, os.X_OK)),
        None,
    )
    if path is None:
        _fail(f"suricata not found on PATH. {INSTALL_HINT}")
    r = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=30, check=False)
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", r.stdout + r.stderr)
    if r.returncode != 0 or m is None:
        _fail(f"`{path} -V` failed (rc={r.returncode}): {(r.stdout + r.stderr).strip()!r}. {INSTALL_HINT}")
    if int(m.group(1)) < 7:
        _fail(f"{path} is Suricata {m.group(0)}, need 7 or later. {INSTALL_HINT}")
    return path


def _ip() -> str:
    for p in (shutil.which("ip"), "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"):
        if p and os.access(p, os.X_OK):
            return p
    _fail("`ip` (iproute2) not found: apt-get install iproute2")
    raise AssertionError("unreachable")


def suricata_version() -> tuple[int, int, int]:
    r = subprocess.run([require_suricata(), "-V"], capture_output=True, text=True, timeout=30, check=False)
    m = re.search(r"version (\d+)\.(\d+)\.(\d+)", r.stdout + r.stderr)
    assert m is not None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def system_rules_file(name: str) -> Path:
    """One of Suricata's own event rule files (stream-events.rules, ...)."""
    for d in SYSTEM_RULE_DIRS:
        if (d / name).is_file():
            return d / name
    _fail(f"Suricata rule file {name} not found in {', '.join(map(str, SYSTEM_RULE_DIRS))}. {INSTALL_HINT}")
    raise AssertionError("unreachable")


def combine_rules(rules: Iterable[Path], extra_rules_from_suricata: Iterable[str], dest: Path) -> Path:
    """Concatenate our rule files and Suricata's event rule files into ``dest``."""
    parts = []
    for p in [*map(Path, rules), *(system_rules_file(n) for n in extra_rules_from_suricata)]:
        parts.append(f"# ---- {p}\n{p.read_text()}\n")
    dest.write_text("".join(parts))
    return dest


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

_EVE_OUTPUT = """\
outputs:
  - eve-log:
      enabled: yes
      filetype: regular
      filename: {eve_name}
      community-id: yes
      types:
        - alert:
            metadata: yes
        - anomaly:
            enabled: yes
            types:
              decode: yes
              stream: yes
              applayer: yes
        - http:
            extended: yes
        - http2    # HTTP/2 inside TLS (ALPN h2) is re-injected unchanged
        - tls:
            extended: yes
        - flow
        - stats:
            totals: yes
            threads: no
"""


def minimal_config(workdir: Path, *, eve_name: str = "eve.json", af_packet: str | None = None) -> Path:
    """Write ``workdir/suricata.yaml``: just what the tests need, nothing from the host's config."""
    text = textwrap.dedent(
        f"""\
        %YAML 1.1
        ---
        # generated by tests/support/suricata.py
        default-log-dir: {workdir}
        classification-file: {CLASSIFICATION}
        reference-config-file: {REFERENCE}
        stats:
          enabled: yes
          interval: 1
        logging:
          default-log-level: info
          outputs:
            - console:
                enabled: yes
            - file:
                enabled: yes
                level: info
                filename: suricata.log
        app-layer:
          protocols:
            http:
              enabled: yes
            http2:
              enabled: yes
            tls:
              enabled: yes
              detection-ports:
                dp: 443
        unix-command:
          enabled: no
        """
    )
    text += _EVE_OUTPUT.format(eve_name=eve_name)
    if af_packet:
        text += textwrap.dedent(
            f"""\
            af-packet:
              - interface: {af_packet}
                cluster-id: 97
                cluster-type: cluster_flow
                defrag: yes
                checksum-checks: yes
            """
        )
    path = workdir / "suricata.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------
# eve.json
# ---------------------------------------------------------------------------

FiveTuple = tuple[str, int, str, int, str]


def five_tuple(ev: dict) -> FiveTuple:
    return (
        ev.get("src_ip", ""),
        int(ev.get("src_port", 0)),
        ev.get("dest_ip", ""),
        int(ev.get("dest_port", 0)),
        ev.get("proto", ""),
    )


class HttpRequest(NamedTuple):
    hostname: str | None
    url: str | None
    method: str | None
    flow: FiveTuple
    status: int | None = None


@dataclass
class EveLog:
    path: Path
    records: list[dict]

    @classmethod
    def load(cls, path: Path) -> EveLog:
        records = []
        if Path(path).exists():
            for ln in Path(path).read_text(errors="replace").splitlines():
                ln = ln.strip()
                if not ln:
                    continue
                try:
                    records.append(json.loads(ln))
                except json.JSONDecodeError:  # a line still being written (live)
                    continue
        return cls(Path(path), records)

    def events(self, type: str | None = None) -> list[dict]:
        return [r for r in self.records if type is None or r.get("event_type") == type]

    def alerts(self, sid: int | None = None) -> list[dict]:
        return [r for r in self.events("alert") if sid is None or r["alert"].get("signature_id") == sid]

    def alert_sids(self) -> list[int]:
        return [r["alert"]["signature_id"] for r in self.events("alert")]

    def signatures(self) -> list[str]:
        return [r["alert"]["signature"] for r in self.events("alert")]

    def http_requests(self) -> list[HttpRequest]:
        out = []
        for r in self.events("http"):
            h = r.get("http", {})
            # HTTP/2 names the host in its :authority pseudo-header (port stripped, as Suricata does for Host)
            host = h.get("hostname") or next(
                (x.get("value", "").rsplit(":", 1)[0] for x in h.get("request_headers", []) if x.get("name") == ":authority"),
                None,
            )
            out.append(HttpRequest(host, h.get("url"), h.get("http_method"), five_tuple(r), h.get("status")))
        return out

    def stream_anomalies(self) -> list[dict]:
        """Alerts from stream-events.rules ("SURICATA STREAM ...") and eve anomaly events of type stream."""
        alerts = [r for r in self.events("alert") if r["alert"].get("signature", "").startswith("SURICATA STREAM")]
        anomalies = [r for r in self.events("anomaly") if r.get("anomaly", {}).get("type") == "stream"]
        return alerts + anomalies

    def anomalies(self) -> list[dict]:
        return self.events("anomaly")

    def app_protos(self) -> dict[FiveTuple, str]:
        """flow 5-tuple (client first, as in eve flow events) -> app_proto ("failed" if none)."""
        return {five_tuple(r): r.get("app_proto", "failed") for r in self.events("flow")}

    def flows(self) -> list[dict]:
        return self.events("flow")

    def stats(self) -> dict:
        """The last stats record's ``stats`` object ({} if none)."""
        s = self.events("stats")
        return s[-1]["stats"] if s else {}

    def counter(self, dotted: str, default: int = 0) -> int:
        cur: object = self.stats()
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return default
            cur = cur[part]
        return int(cur)  # type: ignore[arg-type]

    def summary(self) -> str:
        """Short human text for assertion messages."""
        lines = [f"{self.path}: {len(self.records)} records"]
        for r in self.records:
            t = r.get("event_type")
            if t == "alert":
                lines.append(f"  alert {r['alert']['signature_id']} {r['alert']['signature']!r} {five_tuple(r)}")
            elif t == "http":
                h = r["http"]
                lines.append(f"  http {h.get('http_method')} {h.get('hostname')}{h.get('url')} -> {h.get('status')}")
            elif t in ("flow", "anomaly", "tls"):
                lines.append(f"  {t} {five_tuple(r)} {r.get('app_proto', '')} {r.get(t, {})}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# offline
# ---------------------------------------------------------------------------


def _run(argv: Sequence[str], *, what: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise SuricataError(f"{what} timed out after {timeout}s: {' '.join(argv)}\n{e.stderr or ''}") from e
    if r.returncode != 0:
        raise SuricataError(
            f"{what} failed (rc={r.returncode}): {' '.join(argv)}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}"
        )
    return r


def check_rules(rules: Sequence[Path], *, workdir: Path, config: Path = Path("/etc/suricata/suricata.yaml")) -> str:
    """``suricata -T -S rules`` with --init-errors-fatal; returns the combined output (raises on any error)."""
    workdir.mkdir(parents=True, exist_ok=True)
    combined = combine_rules(rules, (), workdir / "test-rules.rules")
    r = _run(
        [
            require_suricata(),
            "-T",
            "-v",
            "--init-errors-fatal",
            "-c",
            str(config),
            "-l",
            str(workdir),
            "-S",
            str(combined),
        ],
        what="suricata -T",
        timeout=120,
    )
    return r.stdout + r.stderr


def run_offline(
    pcap: Path,
    *,
    rules: list[Path],
    workdir: Path,
    extra_rules_from_suricata: Sequence[str] = DEFAULT_EVENT_RULES,
    timeout: float = 120,
) -> EveLog:
    """Run Suricata over ``pcap`` with checksum validation forced; return its eve log."""
    suricata = require_suricata()
    workdir.mkdir(parents=True, exist_ok=True)
    config = minimal_config(workdir)
    combined = combine_rules(rules, extra_rules_from_suricata, workdir / "combined.rules")
    eve = workdir / "eve.json"
    eve.unlink(missing_ok=True)
    argv = [
        suricata, "-r", str(pcap), "-k", "all", "--runmode", "single", "--init-errors-fatal",
        "-l", str(workdir), "-S", str(combined), "-c", str(config),
    ]  # fmt: skip
    r = _run(argv, what="suricata (offline)", timeout=timeout)
    (workdir / "suricata.stdout").write_text(r.stdout + r.stderr)
    if not eve.exists():
        raise SuricataError(f"suricata wrote no {eve}:\n{r.stdout}\n{r.stderr}")
    return EveLog.load(eve)


# ---------------------------------------------------------------------------
# live
# ---------------------------------------------------------------------------

_READY = re.compile(r"Engine started|all \d+ packet processing threads", re.IGNORECASE)


class LiveSuricata:
    """Suricata on ``interface`` inside network namespace ``netns``.

    ``config=None`` generates :func:`minimal_config` with an af-packet entry for
    the interface and loads ``rules`` (+ Suricata's event rules) with ``-S``.
    With an explicit ``config`` the rules come from that config's
    ``rule-files`` unless ``rules`` is given; ``eve_name`` is the eve file the
    config writes (relative to ``workdir``, which is passed as ``-l``).
    """

    def __init__(
        self,
        interface: str,
        *,
        netns: str,
        rules: Sequence[Path] | None,
        workdir: Path,
        config: Path | None = None,
        eve_name: str = "eve.json",
        set_options: Sequence[str] = (),
        extra_rules_from_suricata: Sequence[str] = DEFAULT_EVENT_RULES,
        startup_timeout: float = 40.0,
    ) -> None:
        self.interface = interface
        self.netns = netns
        self.rules = list(rules) if rules is not None else None
        self.workdir = Path(workdir)
        self.config = config
        self.eve_path = self.workdir / eve_name
        self.set_options = list(set_options)
        self.extra_rules = list(extra_rules_from_suricata)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.eve: EveLog | None = None
        self.output_path = self.workdir / "suricata.stdout"

    def argv(self) -> list[str]:
        suricata = require_suricata()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.config or minimal_config(self.workdir, eve_name=self.eve_path.name, af_packet=self.interface)
        argv = [
            _ip(), "netns", "exec", self.netns,
            suricata, "-c", str(config), f"--af-packet={self.interface}", "-v", "--init-errors-fatal",
            "-l", str(self.workdir), "--pidfile", str(self.workdir / "suricata.pid"),
        ]  # fmt: skip
        if self.rules is not None:
            combined = combine_rules(
                self.rules, self.extra_rules if self.config is None else (), self.workdir / "combined.rules"
            )
            argv += ["-S", str(combined)]
        for opt in self.set_options:
            argv += ["--set", opt]
        return argv

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def __enter__(self) -> Self:
        argv = self.argv()
        (self.workdir / "suricata.pid").unlink(missing_ok=True)
        self.eve_path.unlink(missing_ok=True)
        out = open(self.output_path, "wb")
        # `ip netns exec` execs suricata: self.proc.pid is suricata's pid.
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            text = self.output()
            if _READY.search(text):
                break
            if self.proc.poll() is not None:
                raise SuricataError(
                    f"suricata exited (rc={self.proc.returncode}) before starting: {' '.join(argv)}\n{text}"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise SuricataError(f"suricata did not report 'Engine started' within {self.startup_timeout}s:\n{text}")
            time.sleep(0.1)
        return self

    def current(self) -> EveLog:
        return EveLog.load(self.eve_path)

    def wait_for(self, predicate: Callable[[EveLog], bool], timeout: float = 15.0) -> EveLog:
        """Poll the eve file until ``predicate(eve)``; returns the last EveLog read (check it yourself)."""
        deadline = time.monotonic() + timeout
        while True:
            eve = self.current()
            if predicate(eve) or time.monotonic() > deadline:
                return eve
            if self.proc is not None and self.proc.poll() is not None:
                raise SuricataError(f"suricata died (rc={self.proc.returncode}):\n{self.output()}")
            time.sleep(0.2)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> EveLog:
        """SIGTERM, wait for a clean shutdown (flows are logged then), return the eve log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise SuricataError(f"suricata did not stop within {timeout}s of SIGTERM:\n{self.output()}") from None
        self.eve = self.current()
        return self.eve

    def __exit__(self, *exc) -> None:
        if self.eve is None or (self.proc is not None and self.proc.poll() is None):
            self.stop()


# ---------------------------------------------------------------------------
# sending frames inside a namespace
# ---------------------------------------------------------------------------

_SENDER = r"""
import socket, struct, sys, time
pcap, iface, gap = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = open(pcap, "rb").read()
magic = data[:4]
endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
linktype = struct.unpack(endian + "I", data[20:24])[0]
assert linktype == 1, f"linktype {linktype}: only Ethernet pcaps can be sent"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
off, n = 24, 0
while off + 16 <= len(data):
    _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
    frame = data[off + 16:off + 16 + incl]
    off += 16 + incl
    s.send(frame)
    n += 1
    if gap:
        time.sleep(gap)
print(n)
"""


def inject_pcap(pcap: Path, *, netns: str, iface: str, gap: float = 0.002, timeout: float = 30) -> int:
    """Send every frame of a classic Ethernet pcap out of ``iface`` inside ``netns``; returns the count."""
    r = subprocess.run(
        [_ip(), "netns", "exec", netns, sys.executable, "-c", _SENDER, str(pcap), iface, str(gap)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        raise SuricataError(f"sending {pcap} on {netns}/{iface} failed: {r.stderr}")
    return int(r.stdout.strip())


__all__ = [
    "DEFAULT_EVENT_RULES",
    "EveLog",
    "HttpRequest",
    "LiveSuricata",
    "SuricataError",
    "check_rules",
    "combine_rules",
    "inject_pcap",
    "minimal_config",
    "require_suricata",
    "run_offline",
    "system_rules_file",
]
