"""Hooks on OpenSSL entry points with kernel uprobes (tracefs ``uprobe_events``).

Each probe fetches, *in the kernel at hook time*, the fields of the profile by
dereferencing the first argument (``%di`` = ``SSL *``): ``+0x50(+0x918(%di))``
is ``ssl->session->master_key`` in 3.0.  No compiler, no ptrace, the process is
never stopped: a uprobe costs a trap into the kernel and a few small copies.
The events go to a tracing *instance* of our own (``instances/tlsbridge_PID``)
and are read from its ``trace_pipe``.

Probes are global per binary (every process mapping that libssl hits them), so
events are filtered by the process's tgid in user space.

A probe left behind is a stray breakpoint: every probe this session adds is
removed by :meth:`UprobeSession.close`, and, should the harvester be killed, by
a watchdog process (:mod:`bridge.harvest.uprobe_watchdog`) that waits for the
harvester's end on a pipe.  Probes of dead harvesters are removed at start.
"""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import HookError
from bridge.harvest.chain import field_path
from bridge.harvest.elf import ElfImage
from bridge.harvest.profile import Profile

#: Functions every connection reaches with the SSL * as first argument, at least
#: one of them after the handshake, in every server we know: s_server -www (no
#: SSL_read/SSL_write: SSL_get_session, SSL_shutdown, SSL_free), nginx and node
#: (SSL_do_handshake, SSL_read, SSL_write), Python's ssl (SSL_read_ex, SSL_write_ex).
HOOK_FUNCTIONS = ("SSL_do_handshake", "SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex",
                  "SSL_get_session", "SSL_shutdown", "SSL_free")
#: Named hook sets (bench/survey_hooks.py measured what each server calls):
#: ``early`` publishes at the first read or write after the handshake, at the cost
#: of a hit per SSL_read/SSL_write; ``late`` only when the connection closes
#: (SSL_shutdown, SSL_free: 2–3 hits per connection), the decryptor holding the
#: connection's records meanwhile (bounded by its --key-wait).
HOOK_SETS = {"early": HOOK_FUNCTIONS, "late": ("SSL_shutdown", "SSL_free")}


def hook_functions(spec: str) -> tuple[str, ...]:
    """``early``, ``late``, or a comma-separated list of SSL_* functions."""
    if spec in HOOK_SETS:
        return HOOK_SETS[spec]
    functions = tuple(name.strip() for name in spec.split(",") if name.strip())
    if not functions or not all(name.startswith("SSL_") and name.replace("_", "").isalnum() for name in functions):
        raise HookError(f"--hooks {spec!r}: use early, late, or SSL_* function names separated by commas")
    return functions
#: Profile fields fetched at hook time, and their tracefs types.
FETCHED = (
    ("version", "u32"),
    ("client_random", "x64[4]"),
    ("master_key_length", "u64"),
    ("master_key", "x64[6]"),
    ("cipher_id", "u32"),
    ("handshake_secret", "x64[6]"),
    ("client_app_traffic_secret", "x64[6]"),
    ("server_app_traffic_secret", "x64[6]"),
    ("exporter_master_secret", "x64[6]"),
    ("object_type", "u32"),  # OpenSSL 3.2+: the SSL * may be a QUIC object (bridge.harvest.chain.OBJECT_TYPE)
)
_FIELD_BYTES = {"u32": 4, "u64": 8}
#: A calibration probe (no profile yet) may copy memory at its first argument at hook
#: time: arguments ``m<OFFSET>`` of :data:`_WINDOW` bytes each (a tracefs array holds
#: at most 64 elements), at most :data:`_WINDOWS_PER_PROBE` per probe (the kernel
#: takes at most 3 KiB of fetched data per event); larger copies take several probes on the same
#: instruction, whose events :class:`UprobeSession` joins into one.
_WINDOW = 64 * 8
_WINDOWS_PER_PROBE = 5
_GROUP_PREFIX = "tlsbridge_"
_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+|-+)\)\s+\[\d+\]\s+\S+\s+(?P<ts>[\d.]+): "
    r"(?P<event>\w+): \(0x[0-9a-f]+\)(?P<args>.*)$"
)
_ARG = re.compile(r"(\w+)=(\{[^}]*\}|\S+)")


@dataclass(slots=True, repr=False)
class HookEvent:
    """One hit of a probe: who, where, and the fields the kernel fetched."""

    tgid: int
    tid: int
    comm: str
    function: str
    binary: str
    ssl: int
    fields: dict[str, bytes | None] = field(default_factory=dict)
    #: When the hook fired, CLOCK_MONOTONIC seconds (our instance's trace clock).
    timestamp: float = 0.0
    #: Calibration probes: the bytes at the first argument copied at hook time (up to
    #: the first window the kernel could not read); None for other probes.
    memory: bytes | None = None
    #: The windows of one probe's part of that copy (offset → bytes; None: not readable).
    windows: dict[int, bytes | None] | None = None

    def field(self, name: str) -> bytes | None:
        return self.fields.get(name)

    def __repr__(self) -> str:
        return f"HookEvent({self.comm}[{self.tgid}] {self.function} ssl={self.ssl:#x})"


@dataclass(slots=True, repr=False)
class RawHookEvent:
    """One hit of a probe with fetch-args of its own (a library's key-log function,
    :mod:`bridge.harvest.keylog_hooks`): the arguments by name, arrays as bytes,
    scalars as ints, None where the kernel could not fetch."""

    tgid: int
    tid: int
    comm: str
    tag: str  # what the caller attached it as
    binary: str
    args: dict[str, bytes | int | None]
    timestamp: float = 0.0

    def __repr__(self) -> str:
        return f"RawHookEvent({self.comm}[{self.tgid}] {self.tag})"


def _raw_value(text: str) -> bytes | int | None:
    if text.startswith("(fault"):
        return None
    try:
        if text.startswith("{"):
            return b"".join(int(part, 16).to_bytes(8, "little") for part in text[1:-1].split(","))
        return int(text, 0)
    except (ValueError, OverflowError):
        return None


def parse_raw_event(line: str, probes: dict[str, tuple[str, str]]) -> RawHookEvent | None:
    """One ``trace_pipe`` line of a raw probe (``probes``: event name → (tag, binary))."""
    match = _LINE.match(line)
    if match is None or match["event"] not in probes:
        return None
    tag, binary = probes[match["event"]]
    args = {name: _raw_value(text) for name, text in _ARG.findall(match["args"])}
    tgid = int(match["tgid"]) if match["tgid"].isdigit() else int(match["tid"])
    return RawHookEvent(tgid, int(match["tid"]), match["comm"], tag, binary, args, float(match["ts"]))


def fetch_expression(path: tuple[int, ...]) -> str:
    """``(0x918, 0x50)`` → ``+0x50(+0x918(%di))``."""
    expression = "%di"
    for step in path:
        expression = f"+{step:#x}({expression})"
    return expression


def probe_definition(group: str, event: str, binary: str, offset: int, profile: Profile | None) -> str:
    """The probe; without a profile (calibration) it fetches only the ``SSL *``."""
    args = ["ssl=%di:x64"]
    for name, kind in FETCHED if profile is not None else ():
        path = field_path(profile, name)
        if path is not None:
            args.append(f"{name}={fetch_expression(path)}:{kind}")
    return f"p:{group}/{event} {binary}:{offset:#x} {' '.join(args)}"


def snapshot_definitions(group: str, event: str, binary: str, offset: int, size: int) -> list[tuple[str, str]]:
    """(event name, probe) for copying ``size`` bytes at the first argument at hook
    time: as many probes on the instruction as a page per event requires."""
    starts = list(range(0, size, _WINDOW))
    probes = []
    for part in range(0, len(starts), _WINDOWS_PER_PROBE):
        name = event if part == 0 else f"{event}_m{part // _WINDOWS_PER_PROBE}"
        args = ["ssl=%di:x64", *(f"m{start:x}=+{start:#x}(%di):x64[{_WINDOW // 8}]"
                                 for start in starts[part : part + _WINDOWS_PER_PROBE])]
        probes.append((name, f"p:{group}/{name} {binary}:{offset:#x} {' '.join(args)}"))
    return probes


def _windows(args: dict[str, str]) -> dict[int, bytes | None] | None:
    windows: dict[int, bytes | None] = {}
    for name, text in args.items():
        if name[:1] == "m" and len(name) > 1:
            try:
                start = int(name[1:], 16)
            except ValueError:
                continue
            data = _value(text, "x64")
            windows[start] = data if data is not None and len(data) == _WINDOW else None
    return windows or None


def join_windows(windows: dict[int, bytes | None]) -> bytes:
    """The copy's bytes from offset 0 up to the first window missing or not readable."""
    memory = bytearray()
    while windows.get(len(memory)) is not None:
        memory += windows[len(memory)]  # type: ignore[operator]
    return bytes(memory)


def _value(text: str, kind: str) -> bytes | None:
    if text.startswith("(fault"):
        return None
    try:
        if text.startswith("{"):
            return b"".join(int(part, 16).to_bytes(8, "little") for part in text[1:-1].split(","))
        return int(text, 0).to_bytes(_FIELD_BYTES.get(kind, 8), "little")
    except (ValueError, OverflowError):
        return None


def parse_event(line: str, functions: dict[str, tuple[str, str]]) -> HookEvent | None:
    """One ``trace_pipe`` line → an event (None for lines of other events).
    ``functions``: event name → (SSL function, binary)."""
    match = _LINE.match(line)
    if match is None or match["event"] not in functions:
        return None
    args = dict(_ARG.findall(match["args"]))
    try:
        ssl = int(args.pop("ssl"), 16)
    except (KeyError, ValueError):
        return None
    kinds = dict(FETCHED)
    fields = {name: _value(text, kinds.get(name, "u64")) for name, text in args.items() if name in kinds}
    tgid = int(match["tgid"]) if match["tgid"].isdigit() else int(match["tid"])
    function, binary = functions[match["event"]]
    return HookEvent(tgid, int(match["tid"]), match["comm"], function, binary, ssl, fields, float(match["ts"]),
                     windows=_windows(args))


# --- tracefs --------------------------------------------------------------------------------


def tracefs() -> Path:
    """The mounted tracefs; mounts it when it is not (needs CAP_SYS_ADMIN)."""
    for candidate in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(f"{candidate}/uprobe_events"):
            return Path(candidate)
    target = "/sys/kernel/tracing"
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", target], capture_output=True, text=True)
    if result.returncode != 0 or not os.path.exists(f"{target}/uprobe_events"):
        raise HookError(
            "tracefs is not mounted and could not be mounted "
            f"({result.stderr.strip() or 'no uprobe_events'}): hooks need root, or CAP_SYS_ADMIN and CAP_PERFMON; "
            "a kernel with CONFIG_UPROBE_EVENTS"
        )
    return Path(target)


def _write_raw(path: Path, text: str) -> None:
    """One ``write(2)`` of the whole line: tracefs parses each write as a command
    (Python's buffered text files may split or seek)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def _write(path: Path, text: str) -> None:
    try:
        _write_raw(path, text)
    except PermissionError:
        raise HookError(f"cannot write {path}: hooks need root (or CAP_SYS_ADMIN and CAP_PERFMON)") from None
    except OSError as exc:
        raise HookError(f"{path}: {exc.strerror} ({text[:120]})") from None


def remove_group(root: Path, instance: str, group: str) -> None:
    """Disable and delete every probe of ``group`` and the instance (idempotent, never raises)."""
    instance_dir = root / "instances" / instance
    enable = instance_dir / "events" / group / "enable"
    for attempt in range(50):
        try:
            if enable.exists():
                _write_raw(enable, "0")
            if instance_dir.exists():
                instance_dir.rmdir()
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                break
            time.sleep(0.02)  # a reader still has trace_pipe open
    events_dir = root / "events" / group
    if events_dir.is_dir():
        for event in sorted(p.name for p in events_dir.iterdir() if p.is_dir()):
            try:
                _write_raw(root / "uprobe_events", f"-:{group}/{event}")
            except OSError:
                pass


def remove_stale_groups(root: Path) -> list[str]:
    """Probes left by harvesters that are gone (their group names carry their pid)."""
    removed = []
    events = root / "events"
    for entry in events.iterdir() if events.is_dir() else ():
        name = entry.name
        if name.startswith(_GROUP_PREFIX) and name[len(_GROUP_PREFIX):].isdigit():
            owner = int(name[len(_GROUP_PREFIX):])
            if not os.path.exists(f"/proc/{owner}"):
                remove_group(root, name, name)
                removed.append(name)
    return removed


@dataclass(slots=True)
class UprobeStats:
    probes: int = 0
    lines: int = 0
    events: int = 0
    unparsed: int = 0


class UprobeSession:
    """Our probes, our tracing instance, our watchdog."""

    def __init__(self, *, buffer_kb: int = 8192, watchdog: bool = True) -> None:
        self.root = tracefs()
        self.stale_removed = remove_stale_groups(self.root)
        self.group = self.instance = f"{_GROUP_PREFIX}{os.getpid()}"
        self.stats = UprobeStats()
        self._functions: dict[str, tuple[str, str]] = {}  # event name → (SSL function, binary)
        self._raw: dict[str, tuple[str, str]] = {}  # event name → (tag, binary): probes of attach_raw
        self._attached: set[tuple[str, int]] = set()
        #: (function, binary) → probes copying memory at each hit; parts of a hit seen, per thread
        self._parts: dict[tuple[str, str], int] = {}
        self._pending_parts: dict[int, tuple[tuple, HookEvent, dict[int, bytes | None], list[int]]] = {}
        self._attach_calls = 0
        self._pipe: int | None = None
        self._partial = b""
        instance_dir = self.root / "instances" / self.instance
        try:
            instance_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise HookError(f"cannot create tracing instance {instance_dir}: {exc.strerror}") from None
        (instance_dir / "options" / "record-tgid").write_text("1\n")
        _write_raw(instance_dir / "trace_clock", "mono")  # event times comparable with time.monotonic()
        (instance_dir / "buffer_size_kb").write_text(f"{buffer_kb}\n")
        self._watchdog = subprocess.Popen(
            [sys.executable, "-m", "bridge.harvest.uprobe_watchdog", str(self.root), self.instance, self.group],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C for the harvester is not one for the watchdog
        ) if watchdog else None

    def attach(self, binary: str, image: ElfImage, profile: Profile | None,
               functions: tuple[str, ...] = HOOK_FUNCTIONS, *, snapshot: dict[str, int] | None = None) -> list[str]:
        """Probe the hook functions of one binary (by path; ``/proc/PID/root/...`` for a
        container's); returns the functions hooked.  ``snapshot``: function → bytes
        of memory at its first argument copied at hook time (calibration)."""
        hooked = []
        index = self._attach_calls  # event names never reused (a replaced probe's events may still be queued)
        self._attach_calls += 1
        for function in functions:
            offset = image.symbol_offset(function)
            if offset is None or (binary, offset) in self._attached:
                continue
            event = f"{function}_{index}"
            size = (snapshot or {}).get(function, 0) if profile is None else 0
            probes = (snapshot_definitions(self.group, event, binary, offset, size) if size
                      else [(event, probe_definition(self.group, event, binary, offset, profile))])
            for name, definition in probes:
                _write(self.root / "uprobe_events", definition)
                self._functions[name] = (function, binary)
                _write(self.root / "instances" / self.instance / "events" / self.group / name / "enable", "1")
            if size:
                self._parts[(function, binary)] = len(probes)
            self._attached.add((binary, offset))
            hooked.append(function)
            self.stats.probes += 1
        if not hooked and not any(key[0] == binary for key in self._attached):
            raise HookError(f"{binary}: none of {', '.join(functions)} is exported")
        return hooked

    def attach_raw(self, binary: str, offset: int, tag: str, args: tuple[str, ...]) -> str:
        """One probe at ``offset`` of ``binary`` with fetch-args of the caller's;
        its hits are :class:`RawHookEvent` s named ``tag``.  Returns the event name.
        The caller probes each file once (the kernel resolves ``binary`` to the file
        there now: a file replaced at the same path is another probe)."""
        event = f"k{len(self._raw)}_{self._attach_calls}"
        self._attach_calls += 1
        _write(self.root / "uprobe_events", f"p:{self.group}/{event} {binary}:{offset:#x} {' '.join(args)}")
        self._raw[event] = (tag, binary)
        _write(self.root / "instances" / self.instance / "events" / self.group / event / "enable", "1")
        self._attached.add((binary, offset))
        self.stats.probes += 1
        return event

    def reattach(self, binary: str, image: ElfImage, profile: Profile,
                 functions: tuple[str, ...] = HOOK_FUNCTIONS) -> list[str]:
        """Probe a binary again, now fetching ``profile``'s fields at hook time (its
        layout became known after it was hooked for the ``SSL *`` alone).  The new
        probes are enabled before the old ones are disabled (a call in between is
        seen twice, published once).  The old ones are only disabled: deleting a
        probe event makes the kernel clear every trace buffer, and with them the
        events nobody has read yet (they go with the group at :meth:`close`)."""
        old = [event for event, (_, path) in self._functions.items() if path == binary]
        kept = {key for key in self._attached if key[0] != binary}
        previous, self._attached = self._attached, kept
        try:
            hooked = self.attach(binary, image, profile, functions)
        except HookError:
            self._attached = previous
            raise
        self._parts = {key: parts for key, parts in self._parts.items() if key[1] != binary}
        for event in old:  # their names stay known: the events they queued are still read
            try:
                _write_raw(self.root / "instances" / self.instance / "events" / self.group / event / "enable", "0")
            except OSError:
                pass
        return hooked

    def _joined(self, event: HookEvent) -> HookEvent | None:
        """A copying probe's part: None until every part of that hit arrived (the
        probes on one instruction fire one after the other on the thread), then
        the first part with the whole copy in :attr:`HookEvent.memory`."""
        parts = self._parts.get((event.function, event.binary))
        if parts is None or event.windows is None:
            return event
        key = (event.tid, event.function, event.binary, event.ssl)
        pending = self._pending_parts.get(event.tid)
        if pending is None or pending[0] != key or set(pending[2]) & set(event.windows):
            pending = self._pending_parts[event.tid] = (key, event, {}, [0])  # a new hit (a part lost: dropped)
        pending[2].update(event.windows)
        pending[3][0] += 1
        if pending[3][0] < parts:
            return None
        del self._pending_parts[event.tid]
        first = pending[1]
        first.memory = join_windows(pending[2])
        first.windows = None
        return first

    def read(self, timeout: float) -> list[HookEvent | RawHookEvent]:
        """Events that arrived within ``timeout`` seconds."""
        if self._pipe is None:
            self._pipe = os.open(self.root / "instances" / self.instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)
        ready, _, _ = select.select([self._pipe], [], [], timeout)
        if not ready:
            return []
        try:
            chunk = os.read(self._pipe, 1 << 20)
        except BlockingIOError:
            return []
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        events = []
        for raw in lines:
            self.stats.lines += 1
            if self._raw:
                hit = parse_raw_event(raw.decode("ascii", "replace"), self._raw)
                if hit is not None:
                    self.stats.events += 1
                    events.append(hit)
                    continue
            event = parse_event(raw.decode("ascii", "replace"), self._functions)
            if event is None:
                self.stats.unparsed += 1
                continue
            self.stats.events += 1
            joined = self._joined(event)
            if joined is not None:
                events.append(joined)
        return events

    def overruns(self) -> int:
        """Events the kernel dropped because we read too slowly (all CPUs)."""
        total = 0
        per_cpu = self.root / "instances" / self.instance / "per_cpu"
        for stats in per_cpu.glob("cpu*/stats"):
            match = re.search(r"overrun: (\d+)", stats.read_text())
            total += int(match.group(1)) if match else 0
        return total

    def close(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        remove_group(self.root, self.instance, self.group)
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # type: ignore[union-attr]
            self._watchdog.wait(timeout=10)
            self._watchdog = None

    def __enter__(self) -> UprobeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
