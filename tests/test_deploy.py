"""The deployment files (deploy/): systemd units, sample configuration, env files,
sysctl file, the injection-interface script -- checked with the real tools
(systemd-analyze verify, the real CLI parser, tls-bridge config check, bash -n), the
script run in fresh network namespaces, and the sensor, broker and harvester doing
their job under their units' privileges and sandbox (capabilities, NoNewPrivileges,
SystemCallFilter, RestrictAddressFamilies, MemoryDenyWriteExecute; see `sandboxed`).

Root and real tools (systemd-analyze, ip, bash, setpriv, curl, openssl, /usr/bin/python3
with venv, libseccomp) are required: missing ones FAIL, never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from tests.support import tlslab

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT_DIR = DEPLOY / "systemd"
CONFIG_DIR = DEPLOY / "config"
SCRIPT = DEPLOY / "create-injection-interface.sh"
#: The tls-bridge of the venv running the tests (the units' /opt/tls-bridge stand-in).
VENV_TLS_BRIDGE = Path(sys.executable).parent / "tls-bridge"

#: Where the units expect the installed software (deploy/README.md, "Install").
INSTALLED_TLS_BRIDGE = "/opt/tls-bridge/bin/tls-bridge"
INSTALLED_SCRIPT = "/usr/lib/tls-bridge/create-injection-interface.sh"
INSTALLED_INLINE_SCRIPT = "/usr/lib/tls-bridge/create-inline-interfaces.sh"
INLINE_SCRIPT = DEPLOY / "create-inline-interfaces.sh"
DOC = "file:/usr/share/doc/tls-bridge/deploy/README.md"
#: Debian's interpreter: what /opt/tls-bridge is made from, runnable by any user.
SYSTEM_PYTHON = "/usr/bin/python3"

NET_RAW, NET_ADMIN = "CAP_NET_RAW", "CAP_NET_ADMIN"
#: unit file -> (instance to verify, User=, CapabilityBoundingSet=, AmbientCapabilities=, env file, %i)
UNITS = {
    "tls-bridge-sensor.service": ("tls-bridge-sensor.service", "tls-bridge", {NET_RAW}, {NET_RAW}, None, ""),
    "tls-bridge-injection@.service": ("tls-bridge-injection@tls0.service", None, {NET_ADMIN}, set(),
                                      "injection.env", "tls0"),
    "tls-bridge-harvester.service": ("tls-bridge-harvester.service", None,
                                     {"CAP_SYS_PTRACE", "CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", NET_RAW,
                                      "CAP_SETUID", "CAP_SETGID"},
                                     set(), "harvester.env", ""),
    "tls-bridge-harvester-vm@.service": ("tls-bridge-harvester-vm@web01.service", None,
                                         {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", NET_RAW}, set(),
                                         "vm-web01.env", "web01"),
    "tls-bridge-broker.service": ("tls-bridge-broker.service", "tls-bridge", set(), set(), None, ""),
    "tls-bridge-ips.service": ("tls-bridge-ips.service", "tls-bridge", {NET_RAW, NET_ADMIN}, {NET_RAW, NET_ADMIN},
                               "ips.env", ""),
    "tls-bridge-ips-inline.service": ("tls-bridge-ips-inline.service", "tls-bridge", {NET_RAW, NET_ADMIN},
                                      {NET_RAW, NET_ADMIN}, "ips-inline.env", ""),
}
ENV_FILES = {"harvester.env": {"HARVEST_ARGS", "FEED_ARGS"},
             "vm-web01.env": {"MEMORY_ARGS", "WIRE_ARGS", "SELECT_ARGS", "FEED_ARGS"},
             "ips.env": {"IPS_ARGS"},
             "ips-inline.env": {"INLINE_ARGS"},
             "injection.env": {"INJECTION_ARGS"}}


# --- helpers ---------------------------------------------------------------------------------


def _tool(name: str) -> str:
    return tlslab.require_tools(name)[name]


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """systemd unit file -> {section: [(key, value), ...]} (keys repeat; no continuations used)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        assert not stripped.endswith("\\"), f"{path.name}:{number}: no continuation lines, please"
        if stripped.startswith("["):
            current = stripped.strip("[]")
            sections.setdefault(current, [])
            continue
        key, sep, value = stripped.partition("=")
        assert sep and current, f"{path.name}:{number}: not KEY=VALUE in a section: {line!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit, section: str, key: str, default: str | None = None) -> str | None:
    values = unit_values(unit, section, key)
    return values[-1] if values else default


def parse_env_file(path: Path) -> dict[str, str]:
    """A systemd EnvironmentFile, restricted to what the units can split safely:
    KEY=VALUE or KEY="VALUE", no quote or backslash inside a value (systemd splits
    $KEY at whitespace, so no argument can contain a space)."""
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", stripped)
        assert match, f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        key, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        assert not re.search(r"[\"'\\]", value), f"{path.name}:{number}: quote or backslash inside the value"
        assert key not in env, f"{path.name}:{number}: {key} set twice"
        env[key] = value
    return env


def unit_environment(unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit_values(unit, "Service", "Environment"):
        for word in shlex.split(value):
            key, _, val = word.partition("=")
            env[key] = val
    return env


def expand_exec(line: str, env: dict[str, str], instance: str) -> list[str]:
    """ExecStart= -> argv the way systemd builds it: quotes, %i, and a word that is
    exactly $VAR replaced by the variable's value split at whitespace."""
    argv: list[str] = []
    for word in shlex.split(line):
        word = word.replace("%i", instance)
        if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
            argv += env.get(word[1:], "").split()
        else:
            assert "$" not in word and "%" not in word, f"unexpected expansion in {word!r}"
            argv.append(word)
    return argv


def unit_argv(name: str, *, with_env_file: bool = True) -> list[str]:
    instance_name, _user, _bounding, _ambient, env_file, instance = UNITS[name]
    unit = parse_unit(UNIT_DIR / name)
    env = unit_environment(unit)
    if with_env_file and env_file:
        env.update(parse_env_file(CONFIG_DIR / env_file))
    return expand_exec(unit_value(unit, "Service", "ExecStart"), env, instance)


def caps_of(unit, key: str) -> set[str]:
    value = unit_value(unit, "Service", key, "")
    return set(value.split())


def _setpriv_caps(caps: set[str]) -> str:
    return ",".join(["-all"] + [f"+{c.removeprefix('CAP_').lower()}" for c in sorted(caps)])


#: The sandbox wrapper: runs argv[2:] after installing what systemd would for the
#: unit (argv[1], JSON): MemoryDenyWriteExecute as the kernel's own PR_SET_MDWE
#: (PR_MDWE_REFUSE_EXEC_GAIN, Linux 6.3+; the rule systemd 252 enforces with seccomp:
#: no W+X mapping, no PROT_EXEC added later), and with libseccomp (libseccomp2, a
#: dependency of systemd) SystemCallFilter= (the allow-list as `systemd-analyze
#: syscall-filter` expands it, everything else EPERM as SystemCallErrorNumber=EPERM)
#: and RestrictAddressFamilies= (socket(2) of other families: EAFNOSUPPORT), native
#: architecture only.  Runs after setpriv (whose setresuid/capset the filter may
#: forbid) with no_new_privs already set.
_SANDBOX_EXEC = """
import ctypes, json, os, sys
spec, argv = json.loads(sys.argv[1]), sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
if spec["mdwe"] and libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed (" + os.strerror(ctypes.get_errno()) + "): Linux 6.3+ is needed")
if spec["allow"]:
    seccomp = ctypes.CDLL("libseccomp.so.2")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.c_void_p]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    ctx = seccomp.seccomp_init(eperm)
    for name in spec["allow"]:
        number = seccomp.seccomp_syscall_resolve_name(name.encode())
        if number < 0 or (name == "socket" and spec["families"] is not None):
            continue
        if seccomp.seccomp_rule_add_array(ctx, allow, number, 0, None) != 0:
            sys.exit("seccomp_rule_add " + name)
    if spec["families"] is not None:  # as systemd: other families get EAFNOSUPPORT
        number = seccomp.seccomp_syscall_resolve_name(b"socket")
        for family in range(65):  # AF_MAX is 46; 64 stands for "and above"
            action = allow if family in spec["families"] else 0x00050000 | 97
            cmp = Cmp(0, 4 if family < 64 else 5, family, 0)  # SCMP_CMP_EQ / SCMP_CMP_GE on the family
            if seccomp.seccomp_rule_add_array(ctx, action, number, 1, ctypes.byref(cmp)) != 0:
                sys.exit("seccomp_rule_add socket")
    if seccomp.seccomp_load(ctx) != 0:
        sys.exit("seccomp_load failed")
os.execvp(argv[0], argv)
"""


def _syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run([_tool("systemd-analyze"), "syscall-filter"], capture_output=True, text=True, check=True)
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.stdout.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.startswith(" ") and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return found


def unit_sandbox_spec(unit) -> dict:
    """What the wrapper installs for a unit (SystemCallFilter= lines: the first an
    allow-list, later '~' lines deny-lists; RestrictAddressFamilies= an allow-list)."""
    groups = _syscall_groups()
    allowed: set[str] = set()
    for index, line in enumerate(unit_values(unit, "Service", "SystemCallFilter")):
        if line.startswith("~"):
            allowed -= _expand(line[1:].split(), groups)
        else:
            assert index == 0, "one allow-list, first"
            allowed |= _expand(line.split(), groups)
    families = unit_value(unit, "Service", "RestrictAddressFamilies")
    return {"mdwe": unit_value(unit, "Service", "MemoryDenyWriteExecute") == "yes",
            "allow": sorted(allowed),
            "families": None if families is None else [int(getattr(socket, f)) for f in families.split()]}


def sandboxed(unit_name: str, argv: list[str], *, user: str | None = None) -> list[str]:
    """argv under the unit's capability sets and NoNewPrivileges (setpriv), then its
    MemoryDenyWriteExecute, SystemCallFilter and RestrictAddressFamilies (the wrapper
    above); as ``user`` when given, else uid 0 with only those capabilities (as the
    harvester and injection units run).  Not emulated: the mount namespace options
    (ProtectSystem, PrivateTmp, ...), which only hide paths."""
    unit = parse_unit(UNIT_DIR / unit_name)
    bounding, ambient = caps_of(unit, "CapabilityBoundingSet"), caps_of(unit, "AmbientCapabilities")
    priv = [_tool("setpriv")]
    if user is not None:
        priv += [f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups"]
    priv += [f"--bounding-set={_setpriv_caps(bounding)}", f"--inh-caps={_setpriv_caps(ambient)}",
             f"--ambient-caps={_setpriv_caps(ambient)}", "--no-new-privs", "--"]
    return priv + [SYSTEM_PYTHON, "-c", _SANDBOX_EXEC, json.dumps(unit_sandbox_spec(unit))] + argv


@contextlib.contextmanager
def world_readable_tmpdir():
    """A temporary directory other users can enter (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="tls-bridge-deploy-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def system_python_venv(where: Path) -> Path:
    """A venv of Debian's /usr/bin/python3 that sees this checkout's venv packages: a
    python another user can run (the test venv's interpreter may live under a 0700
    /root, e.g. pyenv's) -- what deploy/README.md installs into /opt/tls-bridge."""
    system_python = SYSTEM_PYTHON
    if not os.access(system_python, os.X_OK):
        pytest.fail("/usr/bin/python3 is needed (Debian package python3)")
    version = subprocess.run([system_python, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == str(sys.version_info[:2]), f"/usr/bin/python3 is {version}, the test venv {sys.version_info[:2]}"
    venv = where / "venv"
    result = subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    assert result.returncode == 0, f"python3 -m venv failed (python3-venv installed?): {result.stderr}"
    site_packages = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages" / "checkout.pth").write_text(
        f"import site; site.addsitedir({site_packages!r})\n")
    return venv / "bin" / "python"


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}: {log.read_text() if log else ''}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}: {log.read_text() if log else ''}")


def stop(proc: subprocess.Popen, timeout: float = 40) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("did not stop on SIGTERM")


def link_info(ns: tlslab.Netns, name: str) -> dict:
    out = ns.run([_tool("ip"), "-j", "-d", "addr", "show", "dev", name], check=False)
    assert out.returncode == 0, f"no interface {name}: {out.stderr}"
    return json.loads(out.stdout)[0]


def sysctl_in(ns: tlslab.Netns, path: str) -> str:
    return ns.run(["cat", f"/proc/sys/{path}"]).stdout.decode().strip()


# --- systemd units ---------------------------------------------------------------------------


def test_unit_files_are_the_expected_ones():
    assert sorted(p.name for p in UNIT_DIR.iterdir()) == sorted(UNITS)


@pytest.fixture(scope="module")
def verify_dir(tmp_path_factory) -> Path:
    """The units, with the two install paths replaced by this checkout's files.

    `systemd-analyze verify` requires every ExecStart binary to exist and be
    executable ("Command ... is not executable: No such file or directory" and exit
    status 1 otherwise), and /opt/tls-bridge and /usr/lib/tls-bridge are not installed
    on a test machine. So the copies point at the venv's tls-bridge and at
    deploy/create-injection-interface.sh; nothing else is changed
    (test_only_the_install_paths_need_substituting proves it). User=tls-bridge need
    not exist: verify does not check users. Templates are verified through an
    instance (tls-bridge-injection@tls0.service) found in the same directory.
    """
    directory = tmp_path_factory.mktemp("units")
    for path in UNIT_DIR.iterdir():
        text = path.read_text()
        assert INSTALLED_TLS_BRIDGE in text or INSTALLED_SCRIPT in text, path.name
        text = text.replace(INSTALLED_TLS_BRIDGE, str(VENV_TLS_BRIDGE)).replace(INSTALLED_SCRIPT, str(SCRIPT))
        text = text.replace(INSTALLED_INLINE_SCRIPT, str(INLINE_SCRIPT))
        (directory / path.name).write_text(text)
    return directory


def _verify(directory: Path, instance: str) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("systemd-analyze"), "verify", f"./{instance}"], cwd=directory,
                          capture_output=True, text=True, timeout=120)


def _our_complaints(result: subprocess.CompletedProcess, directory: Path) -> list[str]:
    """verify prints warnings (unknown keys, bad values) but still exits 0: every line
    about our units counts."""
    return [line for line in (result.stdout + result.stderr).splitlines()
            if "tls-bridge" in line or str(directory) in line]


@pytest.mark.parametrize("unit_file", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(unit_file, verify_dir):
    assert VENV_TLS_BRIDGE.is_file() and os.access(VENV_TLS_BRIDGE, os.X_OK), VENV_TLS_BRIDGE
    instance = UNITS[unit_file][0]
    result = _verify(verify_dir, instance)
    assert result.returncode == 0 and not _our_complaints(result, verify_dir), \
        f"systemd-analyze verify {instance}:\n{result.stdout}{result.stderr}"


def test_only_the_install_paths_need_substituting(tmp_path):
    """The unmodified units fail verify for exactly one reason: the install paths."""
    for path in UNIT_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    for unit_file, (instance, *_rest) in UNITS.items():
        result = _verify(tmp_path, instance)
        complaints = _our_complaints(result, tmp_path)
        assert complaints, f"{instance}: expected the missing install path to be reported"
        for line in complaints:
            assert re.search(rf"Command ({re.escape(INSTALLED_TLS_BRIDGE)}|{re.escape(INSTALLED_SCRIPT)}|"
                             rf"{re.escape(INSTALLED_INLINE_SCRIPT)}) "
                             r"is not executable", line), f"{instance}: {line}"


@pytest.mark.parametrize("unit_file", sorted(UNITS))
def test_unit_privileges_and_hardening(unit_file):
    _instance, user, bounding, ambient, env_file, _i = UNITS[unit_file]
    unit = parse_unit(UNIT_DIR / unit_file)
    assert unit_value(unit, "Unit", "Description")
    assert DOC in unit_value(unit, "Unit", "Documentation", "").split()
    service_type = unit_value(unit, "Service", "Type")
    if unit_file.startswith("tls-bridge-injection@"):
        assert service_type == "oneshot" and unit_value(unit, "Service", "RemainAfterExit") == "yes"
    else:
        assert service_type == "simple"
        assert unit_value(unit, "Service", "Restart") == "on-failure"
    exec_start = unit_value(unit, "Service", "ExecStart")
    assert exec_start.split()[0] in (INSTALLED_TLS_BRIDGE, INSTALLED_SCRIPT)
    assert unit_value(unit, "Service", "User") == user
    if user is not None:
        assert unit_value(unit, "Service", "Group") == user
    assert caps_of(unit, "CapabilityBoundingSet") == bounding
    assert caps_of(unit, "AmbientCapabilities") == ambient
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("LockPersonality", "yes"),
                       ("SystemCallArchitectures", "native"), ("RestrictSUIDSGID", "yes"),
                       ("MemoryDenyWriteExecute", "yes"),
                       ("ProtectKernelModules", "yes"), ("ProtectControlGroups", "yes")):
        assert unit_value(unit, "Service", key) == value, f"{unit_file}: {key}"
    # the process harvester's calibrating child takes a network namespace of its own; nothing else may
    namespaces = "net" if unit_file == "tls-bridge-harvester.service" else "yes"
    assert unit_value(unit, "Service", "RestrictNamespaces") == namespaces, unit_file
    families = set(unit_value(unit, "Service", "RestrictAddressFamilies", "").split())
    assert families and families <= {"AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET", "AF_NETLINK"}
    assert ("AF_PACKET" in families) == (NET_RAW in bounding)
    filters = unit_values(unit, "Service", "SystemCallFilter")
    assert "@system-service" in filters[0].split()
    if exec_start.startswith(INSTALLED_TLS_BRIDGE):
        # libzmq (pyzmq) aborts without these: getifaddrs (netlink) when it resolves an
        # address, pthread_setschedparam (@resources) in its I/O threads.
        assert "AF_NETLINK" in families
        assert not any("@resources" in f for f in filters[1:])
    # Ambient capabilities only reach a non-root user; PrivateUsers would void them.
    assert not (ambient and unit_value(unit, "Service", "PrivateUsers") == "yes")
    if user is None:  # uid 0: the bounding set is what limits it
        assert "CapabilityBoundingSet" in dict(unit["Service"])
    if env_file:
        env_line = unit_value(unit, "Service", "EnvironmentFile")
        assert env_line.lstrip("-") == f"/etc/tls-bridge/{env_file}".replace("web01", "%i")


def test_sensor_unit_orders_after_the_injection_interface():
    unit = parse_unit(UNIT_DIR / "tls-bridge-sensor.service")
    for key in ("Wants", "After"):
        assert "tls-bridge-injection@tls0.service" in " ".join(unit_values(unit, "Unit", key)).split()
    assert unit_value(unit, "Service", "ExecStart").endswith("run --config /etc/tls-bridge/sensor.toml")
    assert unit_value(unit, "Service", "ReadWritePaths") == "/var/log/tls-bridge"
    assert unit_value(unit, "Service", "StateDirectoryMode") == "0700"
    assert unit_value(unit, "Service", "LogsDirectoryMode") == "0750"
    assert unit_value(unit, "Service", "ConfigurationDirectoryMode") == "0750"
    injection = parse_unit(UNIT_DIR / "tls-bridge-injection@.service")
    assert unit_value(injection, "Service", "ExecStart") == f"{INSTALLED_SCRIPT} $INJECTION_ARGS %i"


# --- command lines ---------------------------------------------------------------------------


@pytest.mark.parametrize("with_env_file", [True, False], ids=["env-file", "unit-defaults"])
@pytest.mark.parametrize("unit_file", sorted(u for u in UNITS if not u.startswith("tls-bridge-injection@")))
def test_exec_start_parses_with_the_real_cli(unit_file, with_env_file, capsys):
    """Each unit's command line, with its env file (or, where that file is optional,
    without it), is accepted by tls-bridge's own argument parser."""
    from bridge.cli import build_parser

    unit = parse_unit(UNIT_DIR / unit_file)
    optional = (unit_value(unit, "Service", "EnvironmentFile") or "-").startswith("-")
    # a required env file (no '-') is always there when the unit starts
    argv = unit_argv(unit_file, with_env_file=with_env_file or not optional)
    assert argv[0] == INSTALLED_TLS_BRIDGE
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"{unit_file}: {shlex.join(argv)}\nrejected ({exc.code}): {capsys.readouterr().err}")
    assert callable(args.handler)
    if unit_file == "tls-bridge-harvester.service":
        assert args.all and args.bind == "tcp://0.0.0.0:5555"
        assert args.server_cert == "/etc/tls-bridge/certs/harvester.key_secret"
        assert args.allow == "/etc/tls-bridge/certs/sensors/"
    if unit_file == "tls-bridge-harvester-vm@.service":
        assert args.name == "web01" and args.memory_file == "/dev/shm/web01.ram" and args.wire == "tap-web01"
        assert args.comm == ["nginx"] and args.connect
        from bridge.cli.common import parse_triggers

        assert parse_triggers(args.trigger, ("wire", "hooks", "requests"), args) == {"wire", "requests"}
    if unit_file == "tls-bridge-broker.service":
        assert (args.frontend, args.backend) == ("tcp://0.0.0.0:5556", "tcp://0.0.0.0:5558")
        assert args.allow_publishers == "/etc/tls-bridge/certs/harvesters/"
        assert args.allow_subscribers == "/etc/tls-bridge/certs/sensors/"
    if unit_file == "tls-bridge-ips.service":
        assert args.interface == ["eth0", "eth1"] and args.nft_table == "inet tls_bridge" and args.nft_set == "blocked"
    if unit_file == "tls-bridge-ips-inline.service":
        assert args.inline and args.queue_num == 13 and (args.suricata_in, args.suricata_out) == ("ipsin0", "ipsout0")
        assert args.keys == ["tcp://broker:5558"] and args.exception_policy == "drop-flow"
        assert args.flows == "/var/log/tls-bridge/flows-inline.jsonl"


def test_inline_unit_creates_the_interfaces_the_overlay_names():
    """ExecStartPre runs create-inline-interfaces.sh with its defaults: the bridge's ends
    the env file names, Suricata's the overlay's af-packet interfaces."""
    unit = parse_unit(UNIT_DIR / "tls-bridge-ips-inline.service")
    assert unit_values(unit, "Service", "ExecStartPre") == [f"+{INSTALLED_INLINE_SCRIPT}"]
    args = unit_argv("tls-bridge-ips-inline.service")
    assert args[args.index("--suricata-in") + 1] == "ipsin0" and args[args.index("--suricata-out") + 1] == "ipsout0"
    overlay = (DEPLOY / "suricata" / "tls-bridge-inline.yaml").read_text()
    assert re.findall(r"^\s+- interface:\s*(\S+)", overlay, re.M) == ["ipsin1", "ipsout1"]
    assert re.findall(r"^\s+copy-iface:\s*(\S+)", overlay, re.M) == ["ipsout1", "ipsin1"]


def test_env_files_are_key_value_and_match_their_units():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.env")) == sorted(ENV_FILES)
    for name, keys in ENV_FILES.items():
        env = parse_env_file(CONFIG_DIR / name)
        assert set(env) == keys, name
        unit_file = next(u for u, spec in UNITS.items() if spec[4] == name)
        exec_start = unit_value(parse_unit(UNIT_DIR / unit_file), "Service", "ExecStart")
        referenced = set(re.findall(r"\$([A-Z_][A-Z0-9_]*)", exec_start))
        assert referenced == keys, f"{name} vs {unit_file}"
        assert (CONFIG_DIR / name).read_text().lstrip().startswith("#"), f"{name}: start with a comment"


def test_paths_agree_across_files():
    sensor = tomllib.loads((CONFIG_DIR / "sensor.toml").read_text())
    flows = sensor["output"]["flows"]
    assert os.path.dirname(flows) == "/var/log/tls-bridge"
    for key in ("server_key", "client_cert"):
        assert sensor["keys"][key].startswith("/etc/tls-bridge/certs/")
    assert sensor["keys"]["insecure"] is False and sensor["capture"]["interfaces"] == ["eth1"]
    from bridge.cli import build_parser

    ips = build_parser().parse_args(unit_argv("tls-bridge-ips.service")[1:])
    assert ips.flows == flows
    # The eve file of the Suricata instance on tls0: the overlay's eve-log filename,
    # in Suricata's default log directory.
    overlay = (DEPLOY / "suricata" / "tls-bridge.yaml").read_text()
    eve_names = re.findall(r"^\s+filename:\s*(\S+\.json)\s*$", overlay, re.M)
    assert eve_names and ips.eve == f"/var/log/suricata/{eve_names[0]}"
    # sysctl: the capture buffer limit covers the sample's buffer_mb; the IPv6 lines
    # name the script's default interface and its veth peer.
    sysctl = dict(_sysctl_lines())
    assert int(sysctl["net.core.rmem_max"]) >= sensor["capture"]["buffer_mb"] << 20
    assert sensor["inject"]["interface"] == "tls0"
    assert sysctl["net.ipv6.conf.tls0.disable_ipv6"] == "1" and sysctl["net.ipv6.conf.tls0peer.disable_ipv6"] == "1"


# --- sample configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sensor.toml", "sensor-lab.toml"])
def test_sample_config_passes_config_check(name):
    result = subprocess.run([str(VENV_TLS_BRIDGE), "config", "check", str(CONFIG_DIR / name)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and ": OK (" in result.stdout, result.stdout + result.stderr


def test_sample_configs_are_the_only_ones():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.toml")) == ["sensor-lab.toml", "sensor.toml"]


def test_sensor_toml_has_every_option_of_the_defaults():
    defaults = tomllib.loads(subprocess.run([str(VENV_TLS_BRIDGE), "config", "defaults"], capture_output=True,
                                            text=True, check=True).stdout)
    for name in ("sensor.toml", "sensor-lab.toml"):
        sample = tomllib.loads((CONFIG_DIR / name).read_text())
        assert {s: sorted(v) for s, v in sample.items()} == {s: sorted(v) for s, v in defaults.items()}, name
    lab = tomllib.loads((CONFIG_DIR / "sensor-lab.toml").read_text())
    assert lab["keys"]["keylogs"] and not lab["keys"]["feeds"] and lab["keys"]["insecure"] is False


# --- sysctl ------------------------------------------------------------------------------------


def _sysctl_lines() -> list[tuple[str, str]]:
    lines, commented = [], False
    for number, line in enumerate((DEPLOY / "sysctl" / "90-tls-bridge.conf").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            commented = False
            continue
        if stripped.startswith(("#", ";")):
            commented = True
            continue
        match = re.fullmatch(r"([a-z0-9_.]+)\s*=\s*(\S+)", stripped)
        assert match, f"90-tls-bridge.conf:{number}: not 'key = value': {line!r}"
        assert commented, f"90-tls-bridge.conf:{number}: every setting is explained by a comment above it"
        lines.append(match.groups())
    return lines


def test_sysctl_file_settings_exist():
    settings = _sysctl_lines()
    assert settings
    for key, _value in settings:
        if ".conf.tls0" in key:
            continue  # per-interface: exists once the interface does (applied by udev then)
        assert Path("/proc/sys", key.replace(".", "/")).exists(), key


# --- the injection interface script ------------------------------------------------------------------


def test_script_is_an_executable_bash_script():
    assert os.access(SCRIPT, os.X_OK) and SCRIPT.stat().st_mode & 0o111 == 0o111
    first = SCRIPT.read_text().splitlines()[0]
    assert first in ("#!/usr/bin/env bash", "#!/bin/bash"), first
    result = subprocess.run([_tool("bash"), "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def ns():
    tlslab.require_root()
    _tool("ip")
    with tlslab.Netns(mirror_segments=False) as namespace:
        yield namespace


def _script(ns: tlslab.Netns, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The script as tls-bridge-injection@.service runs it: root with only CAP_NET_ADMIN."""
    argv = sandboxed("tls-bridge-injection@.service", [str(SCRIPT), *args])
    return ns.run(argv, check=False, env=env, timeout=60)


def _assert_injection_interface(ns: tlslab.Netns, name: str, mac: str, kind: str) -> None:
    info = link_info(ns, name)
    assert info["linkinfo"]["info_kind"] == kind
    assert info["address"] == mac
    assert int(mac.split(":")[0], 16) & 0x03 == 0x02, "locally administered unicast"
    assert info["addr_info"] == [], f"{name} has addresses: {info['addr_info']}"
    assert "UP" in info["flags"] and "NOARP" in info["flags"] and "MULTICAST" not in info["flags"]
    assert "PROMISC" not in info["flags"]
    assert info["mtu"] == 1500
    assert sysctl_in(ns, f"net/ipv6/conf/{name}/disable_ipv6") == "1"
    if kind == "veth":
        assert "LOWER_UP" in info["flags"] and info["operstate"] == "UP"


def test_script_creates_a_veth_injection_interface(ns):
    result = _script(ns, "--veth")
    assert result.returncode == 0, result.stderr.decode()
    _assert_injection_interface(ns, "tls0", "02:00:00:00:00:fe", "veth")
    _assert_injection_interface(ns, "tls0peer", "02:00:00:00:00:ff", "veth")
    assert b"tls0 up" in result.stderr
    # Idempotent: again (with or without --veth, as the unit would) changes nothing.
    for args in (["--veth"], [], ["tls0"]):
        again = _script(ns, *args)
        assert again.returncode == 0, again.stderr.decode()
        assert b"exists (veth): reconfiguring" in again.stderr
        _assert_injection_interface(ns, "tls0", "02:00:00:00:00:fe", "veth")
    # ... and a frame sent on it by an AF_PACKET socket is seen by a capture on it
    # (what the sensor and Suricata do), while the host never answers on it.
    probe = ns.run([sys.executable, "-c", (
        "import socket\n"
        "rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); rx.bind(('tls0', 0)); rx.settimeout(5)\n"
        "tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0); tx.bind(('tls0', 0))\n"
        "frame = bytes.fromhex('020000000002020000000001') + b'\\x08\\x00' + bytes(46)\n"
        "tx.send(frame)\n"
        "print(rx.recv(2048) == frame)\n")], check=False)
    assert probe.stdout.strip() == b"True", probe.stderr.decode()
    deleted = _script(ns, "--delete")
    assert deleted.returncode == 0 and ns.run([_tool("ip"), "link", "show", "tls0"], check=False).returncode != 0


def test_script_options(ns):
    result = _script(ns, "--veth", "--mtu", "9000", "--mac", "0a:11:22:33:44:50", "inj1")
    assert result.returncode == 0, result.stderr.decode()
    info = link_info(ns, "inj1")
    assert info["mtu"] == 9000 and info["address"] == "0a:11:22:33:44:50" and info["addr_info"] == []
    assert link_info(ns, "inj1peer")["address"] == "0a:11:22:33:44:51"
    for args, code, message in ((["lo"], 1, b"is not a dummy or veth interface"),
                                (["--mac", "01:00:00:00:00:01", "x"], 1, b"not a locally administered"),
                                (["--mtu", "12", "x"], 1, b"bad MTU"),
                                (["--bogus"], 2, b"unknown option"),
                                (["a", "b"], 2, b"")):
        bad = _script(ns, *args)
        assert bad.returncode == code and message in bad.stderr, (args, bad.returncode, bad.stderr)


def _dummy_supported(ns: tlslab.Netns) -> bool:
    probe = ns.run([_tool("ip"), "link", "add", "dummyprobe", "type", "dummy"], check=False)
    if probe.returncode == 0:
        ns.run([_tool("ip"), "link", "delete", "dummyprobe"])
        return True
    assert b"Unknown device type" in probe.stderr or b"not supported" in probe.stderr.lower(), probe.stderr
    return False


def _assert_no_dummy_message(result: subprocess.CompletedProcess) -> None:
    err = result.stderr.decode()
    assert result.returncode == 3, (result.returncode, err)
    assert "no 'dummy' interface support" in err and "--veth tls0" in err and "INJECTION_ARGS" in err, err


def test_script_default_is_a_dummy_or_a_clear_error(ns):
    """This kernel decides: with the dummy module the default creates a dummy
    interface; without it (the CI kernel) the script says so, suggests --veth, exits 3."""
    result = _script(ns)
    if _dummy_supported(ns):
        assert result.returncode == 0, result.stderr.decode()
        _assert_injection_interface(ns, "tls0", "02:00:00:00:00:fe", "dummy")
    else:
        _assert_no_dummy_message(result)
        assert ns.run([_tool("ip"), "link", "show", "tls0"], check=False).returncode != 0


def test_script_no_dummy_message_on_any_kernel(ns, tmp_path):
    """The missing-dummy path, whatever the kernel: an `ip` that rejects the dummy kind
    the way iproute2 does on a kernel without it."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "ip").write_text(
        "#!/bin/bash\n"
        "if [[ $1 == link && $2 == add && \" $* \" == *' type dummy '* ]]; then\n"
        "    echo 'Error: Unknown device type.' >&2; exit 2\n"
        "fi\n"
        f"exec {_tool('ip')} \"$@\"\n")
    (shim / "ip").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
    _assert_no_dummy_message(_script(ns, env=env))


# --- the services under their units' privileges --------------------------------------------------


@pytest.fixture
def stack():
    with contextlib.ExitStack() as exit_stack:
        yield exit_stack


def _metrics(ns: tlslab.Netns) -> dict[str, float]:
    out = ns.run(["curl", "-sf", "http://127.0.0.1:9814/metrics"], check=False, timeout=10)
    if out.returncode != 0:
        return {}
    values: dict[str, float] = {}
    for line in out.stdout.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{")[0]
            values[base] = values.get(base, 0) + float(value)
    return values


def _gen_certs(certs: Path, owner: pwd.struct_passwd | None = None) -> None:
    """broker/publisher, harvester and sensor1 certificates, allow-list directories."""
    for name, sub in (("broker", ""), ("harvester", "harvesters"), ("sensor1", "sensors")):
        subprocess.run([str(VENV_TLS_BRIDGE), "keys", "gen-cert", name, "--dir", str(certs / sub)], check=True,
                       capture_output=True)
    if owner is not None:
        for path in [certs, *certs.rglob("*")]:
            os.chown(path, owner.pw_uid, owner.pw_gid)


def test_sensor_runs_as_an_unprivileged_user_with_only_cap_net_raw(ns):
    """tls-bridge run as the unit runs it: a non-root user (nobody here), ambient and
    bounding set CAP_NET_RAW only, no_new_privs, and the unit's MemoryDenyWriteExecute,
    system call filter and address families. Two workers share a capture interface by
    fanout, open the injection interface, subscribe to a CurveZMQ key feed and receive
    a record, count the frames; SIGTERM stops them cleanly."""
    _tool("curl")
    _tool("setpriv")
    ip = _tool("ip")
    ns.run([ip, "link", "add", "mirror0", "type", "veth", "peer", "name", "mirror0peer"])
    ns.run([ip, "link", "set", "mirror0", "up"])
    ns.run([ip, "link", "set", "mirror0peer", "up"])
    assert _script(ns, "--veth").returncode == 0
    nobody = pwd.getpwnam("nobody")
    with world_readable_tmpdir() as work, contextlib.ExitStack() as cleanup:
        python = system_python_venv(work)
        logs = work / "log"
        logs.mkdir()
        os.chown(logs, nobody.pw_uid, nobody.pw_gid)
        certs = work / "certs"
        _gen_certs(certs, nobody)
        # the key feed: a publisher following a key log (the harvester's stand-in)
        feed_keylog = work / "feed.keylog"
        feed_keylog.write_text("")
        publisher = ns.popen([str(VENV_TLS_BRIDGE), "keys", "publish", "--keylog", str(feed_keylog), "--follow",
                              "--bind", "tcp://127.0.0.1:5555", "--server-cert", str(certs / "broker.key_secret"),
                              "--allow", str(certs / "sensors"), "-q"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cleanup.callback(stop, publisher)
        config = work / "sensor.toml"
        config.write_text(
            '[capture]\ninterfaces = ["mirror0"]\nworkers = 2\nbuffer_mb = 8\n'
            f'[keys]\nfeeds = ["tcp://127.0.0.1:5555"]\nserver_key = "{certs}/broker.key"\n'
            f'client_cert = "{certs}/sensors/sensor1.key_secret"\n'
            f'[output]\nflows = "{logs}/flows.jsonl"\n'
            '[metrics]\nlisten = "127.0.0.1:9814"\nlog_interval = 1.0\n')
        config.chmod(0o644)
        stderr = work / "stderr"
        with open(stderr, "wb") as err:
            argv = sandboxed("tls-bridge-sensor.service",
                             [str(python), "-m", "bridge.cli", "run", "--config", str(config)], user="nobody")
            proc = ns.popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_for(lambda: _metrics(ns).get("tls_bridge_workers_up") == 2, 60, "two workers up", proc, stderr)
            # frames on the mirror port (Ethernet + a minimal IPv4 header), in bursts until
            # the workers' sockets (up a moment after their processes) have counted them
            sender = ("import socket\n"
                      "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('mirror0peer', 0))\n"
                      "for i in range(20):\n"
                      "    s.send(bytes.fromhex('020000000010020000000011') + b'\\x08\\x00' + bytes([0x45]) + bytes(45))\n")

            def captured():
                ns.run([sys.executable, "-c", sender])
                metrics = _metrics(ns)
                return metrics if metrics.get("tls_bridge_packets_total", 0) >= 60 else None

            metrics = wait_for(captured, 60, "captured frames", proc, stderr)
            assert metrics["tls_bridge_worker_restarts_total"] == 0, stderr.read_text()
            # a record through the feed reaches both workers
            with open(feed_keylog, "a") as handle:
                handle.write("CLIENT_RANDOM " + "ab" * 32 + " " + "cd" * 48 + "\n")
            wait_for(lambda: _metrics(ns).get("tls_bridge_feed_records_total", 0) >= 2, 60, "the feed record",
                     proc, stderr)
            statuses = [Path(f"/proc/{pid}/status").read_text() for pid in ns.pids()
                        if "bridge.cli" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                        or "multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
            assert len(statuses) >= 3, "supervisor and two workers"
            for status in statuses:
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                assert fields["Uid"].split()[0] == str(nobody.pw_uid)
                assert int(fields["CapEff"], 16) == 1 << 13 and int(fields["CapBnd"], 16) == 1 << 13  # CAP_NET_RAW
                assert fields["NoNewPrivs"].strip() == "1"
        finally:
            code = stop(proc)
        log = stderr.read_text()
        assert code == 0 and "tls-bridge: stopped:" in log, log
        assert "exited (code" not in log and "Traceback" not in log, log


def _without_options(argv: list[str], *names: str) -> list[str]:
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in names:
            skip = True
        else:
            out.append(word)
    return out


def test_inline_ips_runs_as_its_unit_runs_it(ns):
    """tls-bridge ips --inline as tls-bridge-ips-inline.service runs it: its ExecStartPre
    (the veths) as root, as its "+" does, then the unit's command line and env file as a
    non-root user (nobody here) with CAP_NET_ADMIN and CAP_NET_RAW ambient only,
    no_new_privs, the unit's MemoryDenyWriteExecute, system call filter and address
    families.  It binds the queue, opens the veths and serves its metrics; a TCP
    exchange on loopback whose packets an NFQUEUE rule hands it completes (each packet
    got its verdict; not TLS: passed untouched); SIGTERM stops it cleanly."""
    _tool("curl")
    _tool("setpriv")
    iptables = _tool("iptables")
    nobody = pwd.getpwnam("nobody")
    unit = parse_unit(UNIT_DIR / "tls-bridge-ips-inline.service")
    pre = unit_value(unit, "Service", "ExecStartPre")
    assert pre == f"+{INSTALLED_INLINE_SCRIPT}"
    assert ns.run([str(INLINE_SCRIPT)], check=False).returncode == 0
    for name in ("ipsin0", "ipsin1", "ipsout0", "ipsout1"):
        info = link_info(ns, name)
        assert info["mtu"] == 65535 and info["addr_info"] == [] and "UP" in info["flags"], info
    with world_readable_tmpdir() as work:
        python = system_python_venv(work)
        logs = work / "log"
        logs.mkdir()
        os.chown(logs, nobody.pw_uid, nobody.pw_gid)
        keylog = work / "keys.keylog"
        keylog.write_text("")
        keylog.chmod(0o644)
        argv = unit_argv("tls-bridge-ips-inline.service")
        assert argv[1:3] == ["ips", "--inline"]
        # the lab's secrets: a key log instead of the feed's broker; metrics where _metrics reads
        argv = _without_options(argv[1:], "--keys", "--server-key", "--client-cert", "--metrics")
        argv = [str(python), "-m", "bridge.cli", *[a.replace("/var/log/tls-bridge", str(logs)) for a in argv],
                "--keylog", str(keylog), "--metrics", "127.0.0.1:9814"]
        for chain, port in (("OUTPUT", "--dport"), ("OUTPUT", "--sport")):
            ns.run([iptables, "-A", chain, "-p", "tcp", port, "4433", "-j", "NFQUEUE", "--queue-num", "13"])
        stderr = work / "stderr"
        with open(stderr, "wb") as err:
            proc = ns.popen(sandboxed("tls-bridge-ips-inline.service", argv, user="nobody"),
                            stdout=subprocess.DEVNULL, stderr=err)
        server = None
        try:
            wait_for(lambda: "ips --inline: queue 13" in stderr.read_text(), 60, "the queue bound", proc, stderr)
            wait_for(lambda: "tls_bridge_ips_inline_packets_total" in _metrics(ns), 30, "the metrics", proc, stderr)
            server = ns.popen([sys.executable, "-c",
                               "import socket; s = socket.create_server(('127.0.0.1', 4433)); c, _ = s.accept(); "
                               "c.sendall(c.recv(100).upper()); c.close()"])
            exchange = ("import socket, time\n"
                        "for _ in range(100):\n"
                        "    try:\n"
                        "        c = socket.create_connection(('127.0.0.1', 4433), 5); break\n"
                        "    except ConnectionRefusedError:\n"
                        "        time.sleep(0.1)\n"
                        "c.settimeout(10); c.sendall(b'hello inline'); print(c.recv(100).decode())\n")
            out = ns.run([sys.executable, "-c", exchange], check=False, timeout=60)
            assert out.stdout.decode().strip() == "HELLO INLINE", (out.stdout, out.stderr, stderr.read_text())
            metrics = wait_for(lambda: (m := _metrics(ns)).get("tls_bridge_ips_inline_packets_total", 0) >= 4 and m,
                               30, "the packets counted", proc, stderr)
            assert metrics["tls_bridge_ips_inline_dropped_total"] == 0 and metrics["tls_bridge_ips_inline_held_total"] == 0
            statuses = [Path(f"/proc/{pid}/status").read_text() for pid in ns.pids()
                        if "bridge.cli" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
            assert statuses, "the bridge's process"
            for status in statuses:
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                assert fields["Uid"].split()[0] == str(nobody.pw_uid)
                assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == (1 << 12) | (1 << 13)  # ADMIN, RAW
                assert fields["NoNewPrivs"].strip() == "1"
        finally:
            if server is not None:
                stop(server)
            code = stop(proc)
        log = stderr.read_text()
        assert code == 0 and "Traceback" not in log, log
        flows = [json.loads(line) for line in (logs / "flows-inline.jsonl").read_text().splitlines()]
        # (attempts refused before the server listened are connections of their own: SYN, RST)
        assert {f["server"] for f in flows} == {"127.0.0.1:4433"}, flows
        assert [(f["ips"]["verdict"], f["ips"]["reason"]) for f in flows if f["ips"]["verdict"] != "passed"] == [
            ("unmonitored", "not TLS")], flows
        assert all(f["ips"]["held_packets"] == f["ips"]["released_packets"] for f in flows), flows


def test_broker_runs_without_any_capability(ns, tmp_path):
    """tls-bridge keys broker as its unit runs it (a non-root user, no capabilities,
    MemoryDenyWriteExecute) forwards a record from a publisher to a subscriber."""
    _tool("setpriv")
    nobody = pwd.getpwnam("nobody")
    with world_readable_tmpdir() as work:
        python = system_python_venv(work)
        certs = work / "certs"
        _gen_certs(certs, nobody)
        argv = unit_argv("tls-bridge-broker.service")
        argv = [str(python), "-m", "bridge.cli", *argv[1:]]
        argv = [a.replace("0.0.0.0", "127.0.0.1").replace("/etc/tls-bridge/certs", str(certs)) for a in argv]
        stderr = work / "broker.stderr"
        with open(stderr, "wb") as err:
            broker = ns.popen(sandboxed("tls-bridge-broker.service", argv, user="nobody"), stdout=subprocess.DEVNULL,
                              stderr=err)
        keylog = tmp_path / "in.keylog"
        keylog.write_text("CLIENT_RANDOM " + "ab" * 32 + " " + "cd" * 48 + "\n")
        publisher = None
        try:
            def listening() -> bool:
                return ns.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 5558), 1)"],
                              check=False).returncode == 0
            wait_for(listening, 30, "the broker's backend", broker, stderr)
            publisher = ns.popen([str(VENV_TLS_BRIDGE), "keys", "publish", "--keylog", str(keylog), "--connect",
                                  "tcp://127.0.0.1:5556", "--server-key", str(certs / "broker.key"), "--client-cert",
                                  str(certs / "harvesters" / "harvester.key_secret"), "-q"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            out = tmp_path / "out.keylog"
            dump = ns.run([str(VENV_TLS_BRIDGE), "keys", "dump", "--connect", "tcp://127.0.0.1:5558", "--server-key",
                           str(certs / "broker.key"), "--client-cert", str(certs / "sensors" / "sensor1.key_secret"),
                           "-o", str(out), "--timeout", "8"], check=False, timeout=60)
            assert dump.returncode == 0, dump.stderr.decode()
            assert out.read_text() == keylog.read_text(), dump.stderr.decode() + stderr.read_text()
        finally:
            if publisher is not None:
                stop(publisher)
            code = stop(broker)
        assert code == 0, stderr.read_text()
        assert "Traceback" not in stderr.read_text()


def test_harvester_runs_with_its_capability_bounding_set(ns, tmp_path, stack):
    """tls-bridge harvest process under the unit's bounding set (uid 0, as the unit),
    no_new_privs, MemoryDenyWriteExecute, system call filter and address families,
    with the unit's feed options (bound on loopback here): hooks an openssl s_server
    running as another user with uprobes; the secrets of a connection to it reach a
    sensor's `keys dump` through the CurveZMQ feed."""
    openssl = _tool("openssl")
    _tool("setpriv")
    pki = stack.enter_context(world_readable_tmpdir())
    certs = tlslab.make_cert(pki, key_type="ec", ca=False)
    for path in (certs.cert, certs.key):
        path.chmod(0o644)  # s_server runs as nobody
    server = ns.popen([_tool("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups", openssl, "s_server",
                       "-accept", "4433", "-cert", str(certs.cert), "-key", str(certs.key), "-www", "-quiet"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(server.wait)
    stack.callback(server.kill)
    feed_certs = tmp_path / "certs"
    _gen_certs(feed_certs)
    shutil.copy(feed_certs / "broker.key_secret", feed_certs / "harvester.key_secret")
    shutil.copy(feed_certs / "broker.key", feed_certs / "harvester.key")
    stderr = tmp_path / "harvester.stderr"
    argv = unit_argv("tls-bridge-harvester.service", with_env_file=False)
    assert argv[1:4] == ["harvest", "process", "--all"]
    # the unit's command line, with the feed on loopback and this test's certificates,
    # and only openssl instead of --all (other tests' processes are none of its business)
    # and every shipped profile ignored: the build is calibrated at first sight, in the
    # confined child, under the unit's own capabilities and system call filter
    argv = [str(VENV_TLS_BRIDGE), "harvest", "process", "--comm", "openssl", *argv[4:], "--no-shipped-profiles",
            "--profile-cache", str(tmp_path / "profiles")]
    argv = [a.replace("0.0.0.0", "127.0.0.1").replace("/etc/tls-bridge/certs", str(feed_certs)) for a in argv]
    with open(stderr, "wb") as err:
        harvester = ns.popen(sandboxed("tls-bridge-harvester.service", argv), stdout=subprocess.DEVNULL, stderr=err)
    try:
        # s_server, and any other openssl of the host (another test's client: --comm matches them too)
        wait_for(lambda: re.search(r"harvesting [1-9]\d* processes", stderr.read_text()), 60,
                 "the harvester hooking s_server", harvester, stderr)
        for _ in range(2):
            ns.run([openssl, "s_client", "-connect", "127.0.0.1:4433", "-quiet"], input=b"GET / HTTP/1.0\r\n\r\n",
                   check=False, timeout=20)
        out = tmp_path / "dumped.keylog"
        dump = ns.run([str(VENV_TLS_BRIDGE), "keys", "dump", "--connect", "tcp://127.0.0.1:5555", "--server-key",
                       str(feed_certs / "harvester.key"), "--client-cert",
                       str(feed_certs / "sensors" / "sensor1.key_secret"), "-o", str(out), "--timeout", "4"],
                      check=False, timeout=60)
        assert dump.returncode == 0, dump.stderr.decode()
        assert out.read_text().count("CLIENT_TRAFFIC_SECRET_0") >= 2, dump.stderr.decode() + stderr.read_text()
    finally:
        code = stop(harvester)
    assert code == 0, stderr.read_text()
    assert re.search(r"\b[2-9] connections published", stderr.read_text()), stderr.read_text()
    assert "layout calibrated here" in stderr.read_text(), stderr.read_text()
