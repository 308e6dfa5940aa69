"""The test guest: a real Linux VM under QEMU (TCG) that serves HTTPS, for the VM
harvester's tests and ``tls-bridge demo --vm``.

    image = build_guest_image("6.1", directory=cache / "guest-6.1", progress=print)  # cache/guest-6.1/<key>/
    with Guest(image, pcap=tmp / "guest.pcap") as guest:    # user networking, ports forwarded
        guest.memory_path                                     # /dev/shm file = guest physical RAM
    with Guest(image, tap="dvtap0", netns="dv-demo"):       # or on a tap (10.0.2.15 behind 10.0.2.2)
        ...

The image is built from Debian packages only, in ``directory/<key digest>/`` (a
cache keyed by what goes in: kernel package and version, the openssl binary and
every library it loads, busybox, a second OpenSSL build if any, this module's image
revision; built when missing, so an apt upgrade of any of them makes a new one; the
builder below is the only way an image comes to be):

* kernel: ``linux-image-<abi>-amd64`` that bookworm's (or bookworm-backports')
  ``linux-image-amd64`` depends on, fetched with ``apt-get download`` and unpacked
  with ``dpkg-deb -x`` into ``pkg/`` (never installed on the host);
* initramfs (uncompressed newc cpio): busybox-static + applet links, the host's
  ``/usr/bin/openssl`` with the libraries ``ldd`` reports and the dynamic loader
  (same paths as on the host), optionally a second OpenSSL build under
  ``/opt/ossl35`` (``alt_openssl``), ``e1000.ko`` (and any ``modinfo``
  dependencies, decompressed), a self-signed RSA-2048 certificate for
  CN=guest.test and an ``/init`` that brings up eth0 (10.0.2.15/24 via 10.0.2.2,
  QEMU user networking or a tap whose host side has 10.0.2.2), starts ``openssl
  s_server -www`` on 4433 (host OpenSSL 3.0.x) and, with a second build, on 4434
  (same binary, ``LD_LIBRARY_PATH=/opt/ossl35``), then prints
  ``TLS-BRIDGE-GUEST-READY`` on ttyS0 and sleeps forever.

Inside the guest: s_server on 4433 maps ``/usr/lib/x86_64-linux-gnu/libssl.so.3``
(the host's file, byte-identical: calibrate on the host); the one on 4434 maps
``/opt/ossl35/libssl.so.3``. KASLR stays on.  Nothing of tls-bridge runs inside.

Missing tools are installed with apt-get when running as root; otherwise
:class:`GuestError` is raised.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bridge.errors import BridgeError

READY_MARKER = "TLS-BRIDGE-GUEST-READY"
SHELL_END = "TLS-BRIDGE-SHELL-END"
FAILED_MARKER = "TLS-BRIDGE-GUEST-FAILED"
SHM_PREFIX = "tls-bridge-guest-"

# Bump when the image layout or /init changes: cached images are rebuilt.
_IMAGE_REVISION = 4

# flavor -> how to pick the linux-image-amd64 version whose dependency we use
FLAVORS = {
    "6.1": {"prefix": "6.1.", "backports": False},
    "6.12": {"prefix": "6.12.", "backports": True},
}

ALT_OPENSSL_DIR = "/opt/ossl35"
GO_SERVER_PORT = 4435  # a Go HTTPS server (crypto/tls), when the image has one
GNUTLS_SERVER_PORT = 4436  # gnutls-serv --http, when the image has it
GO_SERVER_PATH = "/usr/bin/gohttps"
ALT_GO_SERVER_PORT = 4437  # a second Go build (another release), when the image has one
ALT_GO_SERVER_PATH = "/usr/bin/gohttps-alt"

GUEST_IP = "10.0.2.15"
GATEWAY_IP = "10.0.2.2"
SERVER_PORT = 4433  # s_server -www with the host's OpenSSL
ALT_SERVER_PORT = 4434  # the same binary on the second OpenSSL build, when the image has one

_APT_FOR_TOOL = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "modinfo": "kmod",
    "zstd": "zstd",
    "xz": "xz-utils",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "ldd": "libc-bin",
    "openssl": "openssl",
    "curl": "curl",
    "ip": "iproute2",
}

Progress = Callable[[str], None]


class GuestError(BridgeError):
    """Building or running the test guest failed."""


@dataclass(frozen=True)
class AltOpenSSL:
    """A second OpenSSL build for the guest (port 4434): a directory holding its
    ``libssl*.so*`` and ``libcrypto*.so*``, the library version ``openssl version``
    must then report (e.g. "3.5.9"), and a name for the records."""

    directory: Path
    version: str
    name: str


@dataclass(frozen=True)
class KeyLogServers:
    """Servers of TLS libraries hooked at their key-log function, for the guest: a
    static Go HTTPS server (``go_https CERT KEY ADDR``, built by the caller) on
    :data:`GO_SERVER_PORT` (and another build, e.g. of another Go release, on
    :data:`ALT_GO_SERVER_PORT`), and the host's ``gnutls-serv --http`` with its
    libraries on :data:`GNUTLS_SERVER_PORT`."""

    go_binary: Path | None = None
    gnutls: bool = False
    alt_go_binary: Path | None = None


# ---------------------------------------------------------------------------
# host tools
# ---------------------------------------------------------------------------


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    try:
        proc = subprocess.run(cmd, **kw)
    except FileNotFoundError as exc:
        raise GuestError(f"{cmd[0]}: not found ({exc})") from exc
    if proc.returncode != 0:
        err = proc.stderr if isinstance(proc.stderr, str) else (proc.stderr or b"").decode(errors="replace")
        raise GuestError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {err.strip()[-2000:]}")
    return proc


_apt_updated = False


def _apt_install(packages: list[str]) -> None:
    global _apt_updated
    if os.geteuid() != 0:
        raise GuestError(f"need host packages {packages}: run as root or `apt-get install {' '.join(packages)}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    try:
        _run(cmd, env=env)
    except GuestError:
        if _apt_updated:
            raise
        _run(["apt-get", "update", "-q"], env=env)
        _apt_updated = True
        _run(cmd, env=env)


def require_tool(name: str) -> str:
    """Absolute path of a host tool; apt-get installs it if missing (root only)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        _apt_install([_APT_FOR_TOOL.get(name, name)])
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
        if path is None:
            raise GuestError(f"{name}: still missing after installing {_APT_FOR_TOOL.get(name, name)}")
    return path


def _busybox_static() -> str:
    path = require_tool("busybox")
    # busybox (dynamic) and busybox-static both provide /bin/busybox: insist on static.
    if "statically linked" not in _file_kind(path):
        _apt_install(["busybox-static"])
        path = require_tool("busybox")
        if "statically linked" not in _file_kind(path):
            raise GuestError(f"{path} is not statically linked (install busybox-static)")
    return path


def _file_kind(path: str) -> str:
    # No `file` dependency: a static executable has no PT_INTERP program header.
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return "not an ELF64 file"
    phoff = int.from_bytes(data[0x20:0x28], "little")
    phentsize = int.from_bytes(data[0x36:0x38], "little")
    phnum = int.from_bytes(data[0x38:0x3A], "little")
    for i in range(phnum):
        if int.from_bytes(data[phoff + i * phentsize: phoff + i * phentsize + 4], "little") == 3:  # PT_INTERP
            return "dynamically linked"
    return "statically linked"


# ---------------------------------------------------------------------------
# image
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestImage:
    flavor: str
    kernel: Path  # bzImage (/boot/vmlinuz-* inside vmlinuz_package_dir)
    initrd: Path  # uncompressed newc cpio
    kernel_version: str  # e.g. "6.1.0-56-amd64" (uname -r in the guest)
    vmlinuz_package_dir: Path  # dpkg-deb -x root: boot/System.map-*, boot/config-*, lib/modules/*
    cert: Path  # PEM certificate of both guest servers (CN=guest.test)
    kernel_package: str = ""  # e.g. "linux-image-6.1.0-56-amd64=6.1.192-2"
    openssl_version: str = ""  # `openssl version` of the host binary/library (port 4433)
    alt_openssl_version: str = ""  # `openssl version` with LD_LIBRARY_PATH=/opt/ossl35 (port 4434)
    alt_openssl_build: str = ""  # build/openssl-builds/<this>/ it came from
    extra_ports: tuple[int, ...] = ()  # the key-log servers' (Go, gnutls-serv), when the image has them
    gnutls_version: str = ""  # gnutls-serv's library, when the image has it

    @property
    def ports(self) -> tuple[int, ...]:
        """The guest's HTTPS servers (s_server -www, then the key-log servers)."""
        base = (SERVER_PORT, ALT_SERVER_PORT) if self.alt_openssl_version else (SERVER_PORT,)
        return base + tuple(self.extra_ports)

    @property
    def system_map(self) -> Path:
        return self.vmlinuz_package_dir / "boot" / f"System.map-{self.kernel_version}"

    @property
    def modules_dir(self) -> Path:
        return self.vmlinuz_package_dir / "lib" / "modules" / self.kernel_version


def _dpkg_version_gt(a: str, b: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def resolve_kernel_package(flavor: str) -> tuple[str, str]:
    """(package, version) of the kernel that linux-image-amd64 depends on for this flavor."""
    spec = FLAVORS[flavor]

    def candidates() -> list[tuple[str, str]]:
        out = subprocess.run(["apt-cache", "show", "linux-image-amd64"], capture_output=True, text=True).stdout
        found = []
        for stanza in out.split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
            version = fields.get("Version", "")
            if not version.startswith(spec["prefix"]) or ("bpo" in version) != spec["backports"]:
                continue
            m = re.search(r"(linux-image-[^\s,(]+)\s*\(=\s*([^)\s]+)\)", fields.get("Depends", ""))
            if m:
                found.append((m.group(1), m.group(2)))
        return found

    found = candidates()
    if not found:
        if os.geteuid() == 0:
            _run(["apt-get", "update", "-q"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            found = candidates()
    if not found:
        where = "bookworm-backports" if spec["backports"] else "bookworm"
        raise GuestError(f"no linux-image-amd64 {spec['prefix']}* from {where} in the apt lists "
                         f"(is {where} in /etc/apt/sources.list.d? run apt-get update)")
    best = found[0]
    for cand in found[1:]:
        if _dpkg_version_gt(cand[1], best[1]):
            best = cand
    return best


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise GuestError(f"{directory}: expected one {pattern}, found {[p.name for p in found]}")
    return found[0]


def _ldd(path: Path, env: dict | None = None) -> list[Path]:
    """Absolute paths ldd reports for `path` (libraries + loader), not vdso."""
    out = _run([require_tool("ldd"), str(path)], env=env).stdout
    libs = []
    for line in out.splitlines():
        if "not found" in line:
            raise GuestError(f"ldd {path}: {line.strip()}")
        m = re.search(r"=>\s*(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _decompress_module(src: Path, dst: Path) -> None:
    name = src.name
    if name.endswith(".ko"):
        shutil.copyfile(src, dst)
    elif name.endswith(".ko.xz"):
        dst.write_bytes(lzma.decompress(src.read_bytes()))
    elif name.endswith(".ko.zst"):
        with open(dst, "wb") as out:
            _run([require_tool("zstd"), "-dc", str(src)], stdout=out, text=False, capture_output=False,
                 stderr=subprocess.PIPE)
    elif name.endswith(".ko.gz"):
        import gzip

        dst.write_bytes(gzip.decompress(src.read_bytes()))
    else:
        raise GuestError(f"{src}: unknown module compression")


def _module_load_order(modules_dir: Path, wanted: list[str], scratch: Path) -> list[tuple[str, Path]]:
    """[(name, decompressed .ko)] with dependencies first (modinfo -F depends)."""
    index: dict[str, Path] = {}
    for p in modules_dir.rglob("*.ko*"):
        base = p.name.split(".ko")[0].replace("-", "_")
        index.setdefault(base, p)
    modinfo = require_tool("modinfo")
    scratch.mkdir(parents=True, exist_ok=True)
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        if key in stack:
            raise GuestError(f"module dependency cycle: {stack + (key,)}")
        src = index.get(key)
        if src is None:
            raise GuestError(f"module {name} not in {modules_dir}")
        ko = scratch / f"{key}.ko"
        _decompress_module(src, ko)
        deps = _run([modinfo, "-F", "depends", str(ko)]).stdout.strip()
        for dep in filter(None, (d.strip() for d in deps.split(","))):
            visit(dep, stack + (key,))
        seen.add(key)
        order.append((key, ko))

    for name in wanted:
        visit(name, ())
    return order


_INIT = r"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/null >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /tmp /run
mount -t tmpfs tmpfs /tmp
echo "guest-init: kernel $(uname -r)"
for m in @MODULES@; do
    insmod /lib/modules/guest/$m.ko || echo "guest-init: insmod $m failed"
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip link set lo up
ip addr add @IP@/24 dev eth0
ip link set eth0 up
ip route add default via @GATEWAY@
cd /tmp
@SERVERS@
# LISTEN sockets (s_server binds [::], so /proc/net/tcp6): port 4433 = 0x1151, 4434 = 0x1152, state 0A
listening() {
    grep -Eq ":$1 0+:0000 0A" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
n=0
while ! { @LISTENING@; }; do
    n=$((n+1))
    if [ $n -gt 300 ]; then
        echo "@FAILED@: s_server not listening"; cat /proc/net/tcp /proc/net/tcp6
        while :; do sleep 3600; done
    fi
    sleep 0.1
done
# A control shell on the second serial port (the tests' Guest.shell): run a command
# line, print its output and an end marker with its exit status.
( while read -r line; do sh -c "$line" 2>&1; echo "@SHELL_END@ $?"; done </dev/ttyS1 >/dev/ttyS1 ) &
echo @READY@
while :; do sleep 3600; done
"""


def _write_cpio(staging: Path, out: Path) -> None:
    cpio = require_tool("cpio")
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    listing = "\0".join(["."] + names) + "\0"
    with open(out, "wb") as fh:
        proc = subprocess.run([cpio, "--null", "-o", "-H", "newc", "-R", "0:0", "--reproducible", "--quiet"],
                              cwd=staging, input=listing.encode(), stdout=fh, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise GuestError(f"cpio: {proc.stderr.decode(errors='replace')}")


_SERVER = ('echo "guest-init: openssl-{port} $({env}openssl version)"\n'
           '{env}openssl s_server -accept {port} -www -quiet -cert /etc/guest/cert.pem -key /etc/guest/key.pem '
           '</dev/null &\n'
           'echo "guest-init: s_server {port} pid $!"')


_KEYLOG_SERVERS = {
    GO_SERVER_PORT: (f'{GO_SERVER_PATH} /etc/guest/cert.pem /etc/guest/key.pem :{GO_SERVER_PORT} '
                     f'</dev/null >/tmp/gohttps.log 2>&1 &\necho "guest-init: gohttps {GO_SERVER_PORT} pid $!"'),
    ALT_GO_SERVER_PORT: (f'{ALT_GO_SERVER_PATH} /etc/guest/cert.pem /etc/guest/key.pem :{ALT_GO_SERVER_PORT} '
                         f'</dev/null >/tmp/gohttps-alt.log 2>&1 &\n'
                         f'echo "guest-init: gohttps-alt {ALT_GO_SERVER_PORT} pid $!"'),
    GNUTLS_SERVER_PORT: (f'gnutls-serv --http --x509certfile /etc/guest/cert.pem --x509keyfile /etc/guest/key.pem '
                         f'-p {GNUTLS_SERVER_PORT} </dev/null >/tmp/gnutls-serv.log 2>&1 &\n'
                         f'echo "guest-init: gnutls-serv {GNUTLS_SERVER_PORT} pid $!"'),
}


def _init_script(modules: list[str], alt: bool, extra_ports: tuple[int, ...] = ()) -> str:
    servers = [(SERVER_PORT, "")] + ([(ALT_SERVER_PORT, f"LD_LIBRARY_PATH={ALT_OPENSSL_DIR} ")] if alt else [])
    lines = [_SERVER.format(port=port, env=env) for port, env in servers] + [_KEYLOG_SERVERS[p] for p in extra_ports]
    return (_INIT.replace("@MODULES@", " ".join(modules)).replace("@IP@", GUEST_IP)
            .replace("@GATEWAY@", GATEWAY_IP)
            .replace("@SERVERS@", "\n".join(lines))
            .replace("@LISTENING@", " && ".join(f"listening {port:04X}"
                                                for port in [p for p, _ in servers] + list(extra_ports)))
            .replace("@READY@", READY_MARKER).replace("@FAILED@", FAILED_MARKER).replace("@SHELL_END@", SHELL_END))


def _host_openssl() -> Path:
    return Path("/usr/bin/openssl") if Path("/usr/bin/openssl").is_file() else Path(require_tool("openssl"))


def _gnutls_serv() -> Path:
    return Path(require_tool("gnutls-serv"))


def image_key(flavor: str, alt_openssl: AltOpenSSL | None = None, keylog: KeyLogServers | None = None) -> dict:
    """What goes into an image: a cached image whose key differs is stale."""
    package, version = resolve_kernel_package(flavor)
    openssl = _host_openssl()
    key = {
        "revision": _IMAGE_REVISION,
        "flavor": flavor,
        "kernel_package": f"{package}={version}",
        "openssl_sha256": _sha256(openssl.resolve()),
        "libraries_sha256": {str(lib): _sha256(lib.resolve()) for lib in _ldd(openssl)},
        "busybox_sha256": _sha256(Path(_busybox_static()).resolve()),
    }
    if alt_openssl is not None:
        key["alt_libssl_sha256"] = _sha256(_one(alt_openssl.directory, "libssl*.so*"))
        key["alt_libcrypto_sha256"] = _sha256(_one(alt_openssl.directory, "libcrypto*.so*"))
    if keylog is not None and keylog.go_binary is not None:
        key["go_server_sha256"] = _sha256(Path(keylog.go_binary))
    if keylog is not None and keylog.alt_go_binary is not None:
        key["alt_go_server_sha256"] = _sha256(Path(keylog.alt_go_binary))
    if keylog is not None and keylog.gnutls:
        serv = _gnutls_serv()
        key["gnutls_serv_sha256"] = _sha256(serv.resolve())
        key["gnutls_libraries_sha256"] = {str(lib): _sha256(lib.resolve()) for lib in _ldd(serv)}
    return key


#: An image nobody used for this long is removed when another is built beside it.
UNUSED_IMAGE_SECONDS = 6 * 3600


def build_guest_image(flavor: str = "6.1", *, directory: Path, alt_openssl: AltOpenSSL | None = None,
                      keep_modules: bool = True, progress: Progress | None = None,
                      force: bool = False, keylog_servers: KeyLogServers | None = None) -> GuestImage:
    """The test guest for `flavor` ("6.1" or "6.12"): the image in
    ``directory/<key digest>/`` when there is one for today's key
    (:func:`image_key`), else built there.  An image for another key stays
    untouched (a guest may be running from it) until it has gone unused for
    :data:`UNUSED_IMAGE_SECONDS`.  `progress` is told each step.  Without
    `keep_modules` only ``boot/`` of the kernel package is kept (the modules the
    guest needs are in its initramfs)."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {sorted(FLAVORS)}, not {flavor!r}")
    say = progress or (lambda text: None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        key = {**image_key(flavor, alt_openssl, keylog_servers), "modules_kept": keep_modules}
        out = directory / _digest(key)
        image = None if force else _cached(out, key)
        if image is not None:
            os.utime(out / "guest.json")  # in use: not pruned
            say(f"guest image cached in {out} ({image.kernel_package}, {image.openssl_version})")
            return image
        say(f"building the guest image in {out} ({'rebuild asked for' if force else _why_build(directory, key)})")
        if out.exists():
            shutil.rmtree(out)
        image = _build(flavor, out, alt_openssl, key, keep_modules, say, keylog_servers)
        _prune(directory, keep=out)
        return image


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _images(directory: Path) -> list[Path]:
    """Image directories (named by their key's digest), most recently used first."""
    found = [d for d in directory.iterdir() if re.fullmatch(r"[0-9a-f]{16}", d.name) and (d / "guest.json").is_file()]
    return sorted(found, key=lambda d: (d / "guest.json").stat().st_mtime, reverse=True)


def _cached(out: Path, key: dict) -> GuestImage | None:
    try:
        data = json.loads((out / "guest.json").read_text())
        image = _image_from_manifest(out, data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if data.get("key") != key or not (image.kernel.is_file() and image.initrd.is_file() and image.cert.is_file()):
        return None
    return image


def _why_build(directory: Path, key: dict) -> str:
    for previous in _images(directory):
        try:
            old = json.loads((previous / "guest.json").read_text()).get("key", {})
        except (OSError, ValueError):
            continue
        changed = sorted(k for k in set(key) | set(old) if key.get(k) != old.get(k))
        if changed:
            return f"stale: {', '.join(changed)} changed since {previous.name}"
    return "no image yet"


def _prune(directory: Path, *, keep: Path) -> None:
    now = time.time()
    for image in _images(directory):
        if image != keep and now - (image / "guest.json").stat().st_mtime > UNUSED_IMAGE_SECONDS:
            shutil.rmtree(image, ignore_errors=True)
    # an image of the layout before keyed directories (revision 3), in `directory` itself
    legacy = directory / "guest.json"
    if legacy.is_file() and now - legacy.stat().st_mtime > UNUSED_IMAGE_SECONDS:
        for name in ("pkg", "work"):
            shutil.rmtree(directory / name, ignore_errors=True)
        for name in ("initrd.cpio", "cert.pem", "key.pem", "guest.json"):
            (directory / name).unlink(missing_ok=True)


def _image_from_manifest(out: Path, data: dict) -> GuestImage:
    fields = dict(data["image"])
    for name in ("kernel", "initrd", "vmlinuz_package_dir", "cert"):
        fields[name] = out / fields[name]
    fields["extra_ports"] = tuple(fields.get("extra_ports", ()))
    return GuestImage(**fields)


def _build(flavor: str, out: Path, alt: AltOpenSSL | None, key: dict, keep_modules: bool,
           say: Progress, keylog: KeyLogServers | None = None) -> GuestImage:
    package, version = key["kernel_package"].split("=", 1)
    kernel_version = package.removeprefix("linux-image-")
    for tool in ("apt-get", "dpkg-deb", "cpio", "modinfo", "ldd", "openssl"):
        require_tool(tool)
    busybox = _busybox_static()

    pkg_dir = out / "pkg"
    work = out / "work"
    (out / "guest.json").unlink(missing_ok=True)
    for d in (pkg_dir, work):
        if d.exists():
            shutil.rmtree(d)
    work.mkdir(parents=True)

    # --- kernel package: download + extract, never install
    say(f"downloading {package} {version} (apt-get download)")
    apt_opts = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    _run(["apt-get", "download", "-q", *apt_opts, f"{package}={version}"], cwd=work)
    deb = _one(work, f"{package}_*.deb")
    say(f"unpacking {deb.name} ({deb.stat().st_size >> 20} MiB)")
    pkg_dir.mkdir()
    _run(["dpkg-deb", "-x", str(deb), str(pkg_dir)])
    deb.unlink()
    kernel = pkg_dir / "boot" / f"vmlinuz-{kernel_version}"
    if not kernel.is_file():
        raise GuestError(f"{package}: no boot/vmlinuz-{kernel_version}")

    # --- initramfs staging
    say("initramfs: busybox, openssl and its libraries" + (f", OpenSSL {alt.version} in {ALT_OPENSSL_DIR}"
                                                            if alt else "") + ", e1000, a certificate")
    staging = work / "root"
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/lib/modules/guest", "usr/lib64", "proc", "sys", "dev",
              "tmp", "run", "etc/guest"):
        (staging / d).mkdir(parents=True, exist_ok=True)
    # merged /usr like the host, so the guest's maps name the same paths (/usr/lib/x86_64-linux-gnu/...)
    os.symlink("usr/lib", staging / "lib")
    os.symlink("usr/lib64", staging / "lib64")
    shutil.copyfile(busybox, staging / "bin/busybox")
    os.chmod(staging / "bin/busybox", 0o755)
    applets = _run([busybox, "--list-full"]).stdout.split()
    for applet in applets:
        dst = staging / applet
        if dst.exists() or dst.is_symlink():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(staging / "bin/busybox", dst.parent), dst)

    def copy_host_file(src: Path) -> None:
        rel = str(src).lstrip("/")
        if rel.startswith(("lib/", "lib64/")):
            rel = "usr/" + rel
        dst = staging / rel
        if dst.exists():
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.resolve(), dst)
        os.chmod(dst, 0o755)

    openssl = _host_openssl()
    (staging / "usr/bin/openssl").unlink(missing_ok=True)  # never a busybox link
    shutil.copyfile(openssl.resolve(), staging / "usr/bin/openssl")
    os.chmod(staging / "usr/bin/openssl", 0o755)
    for lib in _ldd(openssl):
        copy_host_file(lib)
    host_version = _run([str(openssl), "version"]).stdout.strip()

    # --- second OpenSSL (e.g. wheel-bundled): /opt/ossl35/lib{ssl,crypto}.so.3
    alt_version = ""
    if alt is not None:
        alt_root = staging / ALT_OPENSSL_DIR.lstrip("/")
        alt_root.mkdir(parents=True)
        alt_ssl = _one(alt.directory, "libssl*.so*")
        alt_crypto = _one(alt.directory, "libcrypto*.so*")
        shutil.copyfile(alt_ssl, alt_root / "libssl.so.3")
        shutil.copyfile(alt_crypto, alt_root / "libcrypto.so.3")
        for original, short in ((alt_ssl, "libssl.so.3"), (alt_crypto, "libcrypto.so.3")):
            os.chmod(alt_root / short, 0o755)
            if original.name != short:  # libssl's NEEDED names the hashed soname (RPATH $ORIGIN)
                os.symlink(short, alt_root / original.name)
        env_alt = {**os.environ, "LD_LIBRARY_PATH": str(alt_root)}
        for lib in [*_ldd(alt_root / "libssl.so.3", env_alt), *_ldd(alt_root / "libcrypto.so.3", env_alt)]:
            if str(lib).startswith(str(alt_root)):
                continue
            copy_host_file(lib)
        alt_version = _run([str(openssl), "version"], env=env_alt).stdout.strip()
        if f"Library: OpenSSL {alt.version}" not in alt_version:
            raise GuestError(f"host openssl with LD_LIBRARY_PATH={alt.directory} reports {alt_version!r}, "
                             f"expected library {alt.version}")

    # --- servers of libraries hooked at their key-log function: a static Go binary, gnutls-serv
    extra_ports: tuple[int, ...] = ()
    gnutls_version = ""
    for binary, inside, port in ((keylog.go_binary, GO_SERVER_PATH, GO_SERVER_PORT),
                                 (keylog.alt_go_binary, ALT_GO_SERVER_PATH, ALT_GO_SERVER_PORT)) if keylog else ():
        if binary is None:
            continue
        if "statically linked" not in _file_kind(str(binary)):
            raise GuestError(f"{binary}: the guest's Go server must be static (CGO_ENABLED=0)")
        shutil.copyfile(binary, staging / inside.lstrip("/"))
        os.chmod(staging / inside.lstrip("/"), 0o755)
        extra_ports += (port,)
    if keylog is not None and keylog.gnutls:
        serv = _gnutls_serv()
        (staging / "usr/bin/gnutls-serv").unlink(missing_ok=True)
        shutil.copyfile(serv.resolve(), staging / "usr/bin/gnutls-serv")
        os.chmod(staging / "usr/bin/gnutls-serv", 0o755)
        for lib in _ldd(serv):
            copy_host_file(lib)
        gnutls_version = _run([str(serv), "--version"]).stdout.strip().splitlines()[0]
        extra_ports += (GNUTLS_SERVER_PORT,)

    # --- modules
    order = _module_load_order(pkg_dir / "lib" / "modules" / kernel_version, ["e1000"], work / "ko")
    for name, ko in order:
        shutil.copyfile(ko, staging / "lib/modules/guest" / f"{name}.ko")

    # --- certificate (RSA 2048, CN=guest.test)
    cert = out / "cert.pem"
    keyfile = out / "key.pem"
    _run([str(openssl), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "3650",
          "-subj", "/CN=guest.test", "-addext", "subjectAltName=DNS:guest.test",
          "-keyout", str(keyfile), "-out", str(cert)])
    shutil.copyfile(cert, staging / "etc/guest/cert.pem")
    shutil.copyfile(keyfile, staging / "etc/guest/key.pem")

    # --- /init
    (staging / "init").write_text(_init_script([name for name, _ in order], alt is not None, extra_ports))
    os.chmod(staging / "init", 0o755)
    (staging / "etc/hostname").write_text("guest\n")
    (staging / "etc/hosts").write_text(f"127.0.0.1 localhost\n{GUEST_IP} guest.test guest\n")

    say("writing the initramfs (cpio)")
    initrd = out / "initrd.cpio"
    tmp_initrd = out / "initrd.cpio.tmp"
    _write_cpio(staging, tmp_initrd)
    os.replace(tmp_initrd, initrd)
    shutil.rmtree(work)
    if not keep_modules:
        shutil.rmtree(pkg_dir / "lib", ignore_errors=True)
        shutil.rmtree(pkg_dir / "usr", ignore_errors=True)

    image = GuestImage(
        flavor=flavor, kernel=kernel, initrd=initrd, kernel_version=kernel_version,
        vmlinuz_package_dir=pkg_dir, cert=cert, kernel_package=f"{package}={version}",
        openssl_version=host_version, alt_openssl_version=alt_version,
        alt_openssl_build=alt.name if alt else "",
        extra_ports=extra_ports, gnutls_version=gnutls_version,
    )
    record = {k: (str(v.relative_to(out)) if isinstance(v, Path) else v) for k, v in asdict(image).items()}
    tmp_manifest = out / "guest.json.tmp"
    tmp_manifest.write_text(json.dumps({"key": key, "image": record}, indent=2) + "\n")
    os.replace(tmp_manifest, out / "guest.json")
    say(f"guest image built: {image.kernel_package}, initramfs {initrd.stat().st_size >> 20} MiB")
    return image


# ---------------------------------------------------------------------------
# running guest
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_shm() -> list[Path]:
    """Remove /dev/shm/tls-bridge-guest-<pid>-* files whose creating process is gone."""
    removed = []
    for p in Path("/dev/shm").glob(f"{SHM_PREFIX}*"):
        m = re.match(rf"{re.escape(SHM_PREFIX)}(\d+)-", p.name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass
    os.setsid()


class _Qmp:
    """Minimal QMP client over a unix socket (events are recorded, not returned)."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self._read_message()  # greeting
        self.execute("qmp_capabilities")

    def _read_message(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise GuestError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command: str, **arguments) -> object:
        with self.lock:
            msg = {"execute": command}
            if arguments:
                msg["arguments"] = arguments
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                reply = self._read_message()
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    raise GuestError(f"QMP {command}: {reply['error']}")
                if "return" in reply:
                    return reply["return"]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


_live_guests: "weakref.WeakSet[Guest]" = weakref.WeakSet()


@atexit.register
def _close_live_guests() -> None:
    for guest in list(_live_guests):
        try:
            guest.close()
        except Exception:
            pass


class Guest:
    """A booted test guest (context manager). See the module docstring.

    QEMU is started with PR_SET_PDEATHSIG=SIGKILL: it dies if the thread that
    created it exits, so create guests from a thread that outlives them.
    """

    def __init__(self, image: GuestImage, *, memory_mb: int = 512, name: str | None = None,
                 gdb_port: int | None = None, hostfwd: dict[int, int] | None = None,
                 pcap: Path | None = None, workdir: Path | None = None,
                 boot_timeout: float = 90.0, append: str = "", tap: str | None = None,
                 netns: str | None = None, progress: Progress | None = None):
        self.image = image
        self.memory_mb = memory_mb
        self.memory_bytes = memory_mb * 1024 * 1024
        self.name = name or f"guest-{image.flavor}"
        if tap is not None and (hostfwd or pcap is not None):
            raise GuestError("a guest on a tap has no forwarded ports and no filter-dump: capture the tap")
        self.tap, self.netns = tap, netns
        self._auto_ports = hostfwd is None and tap is None
        self.hostfwd: dict[int, int] = dict(hostfwd) if hostfwd else {}
        self.gdb_port = free_port() if gdb_port == 0 else gdb_port
        self.pcap = Path(pcap) if pcap is not None else None
        self.boot_timeout = boot_timeout
        self.extra_append = append
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else None
        self.memory_path: Path | None = None
        self.console_path: Path | None = None
        self.qmp_path: Path | None = None
        self.shell_path: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.qemu_pid: int | None = None
        self._qmp: _Qmp | None = None
        self._closed = False
        self.boot_seconds: float | None = None
        self._final_console: str | None = None
        self._progress = progress  # told the guest's boot milestones (its /init's console lines)
        self._told = 0

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Guest":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def host_port(self, guest_port: int) -> int:
        for hp, gp in self.hostfwd.items():
            if gp == guest_port:
                return hp
        raise KeyError(f"guest port {guest_port} is not forwarded ({self.hostfwd})")

    def command_line(self) -> list[str]:
        mem = self.memory_mb
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{hp}-:{gp}" for hp, gp in sorted(self.hostfwd.items()))
        if self.tap is not None:
            netdev = f"tap,id=n0,ifname={self.tap},script=no,downscript=no"
        else:
            netdev = "user,id=n0" + ("," + fwd if fwd else "")
        append = " ".join(filter(None, ["console=ttyS0", "panic=-1", "loglevel=4", self.extra_append]))
        cmd = [
            require_tool("qemu-system-x86_64"), "-accel", "tcg", "-smp", "1", "-m", str(mem),
            "-name", self.name,
            "-object", f"memory-backend-file,id=mem,size={mem}M,mem-path={self.memory_path},share=on",
            "-machine", "pc,memory-backend=mem",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd), "-append", append,
            "-display", "none", "-vga", "none", "-nodefaults",
            "-serial", f"file:{self.console_path}",
            "-chardev", f"socket,id=ctl,path={self.shell_path},server=on,wait=off", "-serial", "chardev:ctl",
            "-netdev", netdev, "-device", "e1000,netdev=n0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-no-reboot",
        ]
        if self.pcap is not None:
            cmd += ["-object", f"filter-dump,id=f0,netdev=n0,file={self.pcap}"]
        if self.gdb_port is not None:
            cmd += ["-gdb", f"tcp:127.0.0.1:{self.gdb_port}"]
        if self.netns is not None:  # the tap lives there; `ip netns exec` execs QEMU (same pid)
            cmd = [require_tool("ip"), "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self) -> None:
        if self.proc is not None:
            raise GuestError("guest already started")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tls-bridge-guest-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.workdir / "console.log"
        self.qmp_path = self.workdir / "qmp.sock"
        self.shell_path = self.workdir / "shell.sock"
        if self.pcap is not None:
            self.pcap.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_shm()
        _live_guests.add(self)
        attempts = 3 if self._auto_ports else 1
        for attempt in range(attempts):
            if self._auto_ports:
                ports = set()
                while len(ports) < len(self.image.ports):
                    ports.add(free_port())
                self.hostfwd = dict(zip(sorted(ports), self.image.ports))
            try:
                self._launch()
                return
            except GuestError as exc:
                retry = self._auto_ports and attempt + 1 < attempts and "host forwarding" in str(exc)
                self._stop_qemu()
                if not retry:
                    raise

    def _launch(self) -> None:
        self.memory_path = Path("/dev/shm") / f"{SHM_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        for p in (self.console_path, self.qmp_path, self.shell_path):
            p.unlink(missing_ok=True)
        if self.pcap is not None:
            self.pcap.unlink(missing_ok=True)
        stderr_path = self.workdir / "qemu.stderr"
        t0 = time.monotonic()
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.command_line(), stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         preexec_fn=_die_with_parent, close_fds=True)
        self.qemu_pid = self.proc.pid
        deadline = t0 + self.boot_timeout
        while self._qmp is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._error("QMP socket never answered")
            if self.qmp_path.exists():
                try:
                    self._qmp = _Qmp(self.qmp_path)
                    break
                except (OSError, GuestError, ValueError):
                    pass
            time.sleep(0.05)
        self._wait_ready(1, deadline)
        self.boot_seconds = time.monotonic() - t0

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self._error(f"qemu exited with {self.proc.returncode}")

    def _error(self, what: str) -> GuestError:
        stderr = ""
        if self.workdir is not None and (self.workdir / "qemu.stderr").exists():
            stderr = (self.workdir / "qemu.stderr").read_text(errors="replace")[-2000:]
        console = self.console_text()[-3000:]
        return GuestError(f"guest {self.name}: {what}\n--- qemu stderr ---\n{stderr}\n--- console tail ---\n{console}")

    def ready_count(self) -> int:
        return self.console_text().count(READY_MARKER)

    def _tell_progress(self) -> None:
        if self._progress is None:
            return
        lines = [line.strip() for line in self.console_text().splitlines() if line.startswith("guest-init: ")]
        for line in lines[self._told:]:
            self._progress(line.removeprefix("guest-init: "))
        self._told = len(lines)

    def _wait_ready(self, count: int, deadline: float) -> None:
        while self.ready_count() < count:
            self._tell_progress()
            self._check_alive()
            if self.console_text().count(FAILED_MARKER) >= count:
                raise self._error("guest /init reported failure")
            if time.monotonic() > deadline:
                raise self._error(f"{READY_MARKER} #{count} not seen in time")
            time.sleep(0.1)
        pending = {gp: self.host_port(gp) for gp in self.hostfwd.values()}
        while pending:
            for gp, hp in list(pending.items()):
                if self._port_accepts(hp):
                    del pending[gp]
            if not pending:
                break
            self._check_alive()
            if time.monotonic() > deadline:
                raise self._error(f"forwarded ports not accepting: {pending}")
            time.sleep(0.2)

    @staticmethod
    def _port_accepts(port: int) -> bool:
        """slirp accepts on the host at once; the guest's refusal shows as an immediate EOF."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(0.5)
                try:
                    return s.recv(1) != b""
                except socket.timeout:
                    return True  # held open: the guest server accepted and waits for a ClientHello
        except OSError:
            return False

    # -- interaction -------------------------------------------------------

    def console_text(self) -> str:
        if self._final_console is not None:
            return self._final_console
        if self.console_path is None or not self.console_path.exists():
            return ""
        return self.console_path.read_bytes().decode("utf-8", errors="replace")

    def qmp(self, command: str, **arguments) -> object:
        if self._qmp is None:
            raise GuestError("guest not running")
        return self._qmp.execute(command, **arguments)

    def shell(self, command: str, timeout: float = 30.0) -> tuple[int, str]:
        """Run a command line in the guest (busybox sh, as root) over the second serial
        port; returns (exit status, output).  For tests only: the harvester needs nothing
        in the guest."""
        import socket as _socket

        if "\n" in command:
            raise GuestError("one command line at a time")
        with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.shell_path))
            sock.sendall(command.encode() + b"\n")
            data = b""
            deadline = time.monotonic() + timeout
            end = re.compile(re.escape(SHELL_END.encode()) + rb" (\d+)\r?\n")
            while not end.search(data):
                if time.monotonic() > deadline:
                    raise GuestError(f"guest shell: no answer to {command!r} in {timeout} s: {data[-500:]!r}")
                chunk = sock.recv(65536)
                if not chunk:
                    raise GuestError("guest shell: connection closed")
                data += chunk
        text = data.decode("utf-8", "replace").replace("\r", "")
        output, _, tail = text.rpartition(SHELL_END)
        if output.startswith(command + "\n"):  # the tty's echo of the command line
            output = output[len(command) + 1 :]
        return int(tail.split()[0]), output

    def monitor(self, command: str) -> str:
        """An HMP command (e.g. "info registers", "system_reset"); returns its output."""
        return str(self.qmp("human-monitor-command", **{"command-line": command}))

    def reboot(self, timeout: float | None = None) -> float:
        """system_reset and wait for the next READY; returns the seconds it took."""
        before = self.ready_count()
        t0 = time.monotonic()
        # -no-reboot turns every reset request (QMP's included) into a shutdown: allow one reset.
        self.qmp("set-action", reboot="reset")
        try:
            self.qmp("system_reset")
            self._wait_ready(before + 1, t0 + (timeout or self.boot_timeout))
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.qmp("set-action", reboot="shutdown")
        return time.monotonic() - t0

    # -- teardown ----------------------------------------------------------

    def _stop_qemu(self) -> None:
        if self._qmp is not None:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self._qmp.execute("quit")
                except Exception:
                    pass
            self._qmp.close()
            self._qmp = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        if self.memory_path is not None:
            self.memory_path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_qemu()
        finally:
            if self.memory_path is not None:
                self.memory_path.unlink(missing_ok=True)
            self._final_console = self.console_text()
            if self._own_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
            _live_guests.discard(self)


