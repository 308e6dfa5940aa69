"""GnuTLS: hooked at its default key-log function, found by loading the library
in the sandbox.

``gnutls_init`` gives every session a key-log function,
``_gnutls_nss_keylog_func(session, label, secret)``, and GnuTLS calls it
through ``session->internals.keylog_func`` for every secret it derives
(``CLIENT_RANDOM`` for TLS 1.2's master secret; the TLS 1.3 handshake,
application and exporter secrets), whether or not ``SSLKEYLOGFILE`` is set: the
variable is tested inside, by ``_gnutls_nss_keylog_write``.  The function is
not exported and Debian strips the symbol table, but it is what the exported
``gnutls_session_get_keylog_function`` returns for a fresh session; and the
exported ``gnutls_session_get_random`` returns a pointer to the client random
*inside* the session.  So loading the library (in the confined child of
:mod:`bridge.harvest.sandbox`: the library comes from a watched process) and
calling those two on a session gives both facts for that exact build:

* the hook point: the function's offset in the file;
* where the client random lies in the session (the function's first argument).

The probe then copies, at each call, the label (``%si``), the secret behind the
``gnutls_datum_t`` (``%dx``: data pointer, then size) and the client random at
its offset from ``%di``.  No other layout is needed.  What is learned is kept
per build-id, in memory and in the profile cache (``gnutls-BUILDID.json``).

An application that installs its own key-log function
(``gnutls_session_set_keylog_function``) replaces the default one: its
sessions are not seen by this hook.

With no hook at all (a guest harvested from its traffic, :mod:`bridge.vmi.harvester`),
the session itself is read: it is one ``calloc``'d block that keeps the client
random, TLS 1.2's master secret (``security_parameters``) and TLS 1.3's handshake,
application and exporter secrets (``key.proto.tls13``, 64-byte slots written with
the hash's length, the rest left zero) for as long as the connection lives.  The
same child drives real handshakes between a client and a server session of the
library over memory (TLS 1.3 with SHA-256 and SHA-384 suites, TLS 1.2), with
``gnutls_session_set_keylog_function`` as ground truth, and finds each secret's
offset in the server session, and the ``security_parameters.pversion`` pointer
(its target's name is "TLS1.3" or "TLS1.2") with both targets' offsets from the
library's load base: :class:`GnuTlsLayout`.  A layout that does not come out
unique and consistent is None (the hook still works).

Run as a module (``python -m bridge.harvest.gnutls LIBRARY``) it is the
sandboxed child: it prints the facts as JSON.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from dataclasses import dataclass, field

from bridge.errors import BridgeError, ProfileError
from bridge.harvest.elf import ElfImage
from bridge.harvest.keylog_hooks import KeyLogBinary, decode_c_label

LIBRARY = "gnutls"
FUNCTION = "_gnutls_nss_keylog_func"
_LIBGNUTLS = re.compile(r"/libgnutls\.so[^/]*$")
#: Offsets of the client random in a session larger than this are not believed.
_MAX_SESSION_OFFSET = 1 << 16
TIME_LIMIT = 20.0


def is_libgnutls(path: str) -> bool:
    return bool(_LIBGNUTLS.search(path))


#: TLS 1.3 secrets kept in a session, by key log label.
TLS13_LABELS = ("CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET", "CLIENT_TRAFFIC_SECRET_0",
                "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET")
#: A TLS 1.3 secret's slot in the session (MAX_HASH_SIZE).
SLOT = 64


@dataclass(frozen=True, slots=True)
class GnuTlsLayout:
    """Where a session keeps its secrets (offsets from the session), and how to tell
    its version: ``pversion`` holds the load base plus ``tls13_entry`` or ``tls12_entry``."""

    master_secret: int
    tls13: dict[str, int] = field(hash=False)
    pversion: int
    tls13_entry: int
    tls12_entry: int
    chunk: int  # the session's heap block: glibc malloc's chunk size (the header before it, flags aside)

    def to_json(self) -> dict:
        return {"master_secret": self.master_secret, "tls13": self.tls13, "pversion": self.pversion,
                "tls13_entry": self.tls13_entry, "tls12_entry": self.tls12_entry, "chunk": self.chunk}

    @classmethod
    def from_body(cls, body: dict) -> GnuTlsLayout:
        layout = cls(int(body["master_secret"]), {str(k): int(v) for k, v in dict(body["tls13"]).items()},
                     int(body["pversion"]), int(body["tls13_entry"]), int(body["tls12_entry"]), int(body["chunk"]))
        offsets = [layout.master_secret, layout.pversion, *layout.tls13.values()]
        if set(layout.tls13) != set(TLS13_LABELS) or not all(0 <= o < _MAX_SESSION_OFFSET for o in offsets):
            raise ValueError("implausible layout")
        return layout


@dataclass(frozen=True, slots=True)
class GnuTlsFacts:
    """What loading one build told: its version, its key-log function's address
    (relative to the load base), the client random's offset in a session, and
    where a session keeps its secrets (None: not found)."""

    version: str
    keylog_function: int
    client_random: int
    layout: GnuTlsLayout | None = None

    @classmethod
    def from_json(cls, text: str) -> GnuTlsFacts:
        try:
            body = json.loads(text)
            layout = GnuTlsLayout.from_body(body["layout"]) if body.get("layout") else None
            facts = cls(str(body["version"])[:32], int(body["keylog_function"]), int(body["client_random"]), layout)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ProfileError("the GnuTLS probe's answer does not parse") from None
        if not 0 < facts.client_random < _MAX_SESSION_OFFSET or facts.keylog_function <= 0:
            raise ProfileError(f"the GnuTLS probe's answer is implausible ({facts})")
        return facts

    def to_json(self) -> str:
        return json.dumps({"format": 2, "version": self.version, "keylog_function": self.keylog_function,
                           "client_random": self.client_random,
                           "layout": self.layout.to_json() if self.layout else None})


def probe_args(facts: GnuTlsFacts) -> tuple[str, ...]:
    return ("label=+0(%si):x64[4]", "secret=+0(+0(%dx)):x64[6]", "secret_len=+8(%dx):u32",
            f"random=+{facts.client_random:#x}(%di):x64[4]")


decode = decode_c_label



_facts: dict[str, GnuTlsFacts] = {}


def _cached(cache_dir: str | None, build_id: str) -> GnuTlsFacts | None:
    if cache_dir is None:
        return None
    try:
        with open(os.path.join(cache_dir, f"gnutls-{build_id}.json"), encoding="ascii") as handle:
            text = handle.read()
        if json.loads(text).get("format") != 2:
            return None  # written before sessions' layouts were learned: probed again
        return GnuTlsFacts.from_json(text)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, ProfileError):
        return None


def _cache(cache_dir: str | None, build_id: str, facts: GnuTlsFacts) -> None:
    if cache_dir is None:
        return
    try:
        os.makedirs(cache_dir, exist_ok=True)
        partial = os.path.join(cache_dir, f".gnutls-{build_id}.json.{os.getpid()}")
        with open(partial, "w", encoding="ascii") as handle:
            handle.write(facts.to_json())
        os.replace(partial, os.path.join(cache_dir, f"gnutls-{build_id}.json"))
    except OSError:
        pass  # a cache only: probed again next time


def facts_for(build_id: str) -> GnuTlsFacts | None:
    """What probing a build taught, once :func:`hook_point` probed it."""
    return _facts.get(build_id)


def hook_point(path: str, image: ElfImage, cache_dir: str | None = None) -> KeyLogBinary | None:
    """The build's hook point (its facts learned in the sandbox once per build-id, kept
    in ``cache_dir``).  Raises ProfileError when the library cannot be probed."""
    if "gnutls_session_get_keylog_function" not in image.functions:
        raise ProfileError(f"{path}: GnuTLS older than 3.6.13 (no gnutls_session_get_keylog_function): not hooked")
    if not re.fullmatch(r"[0-9a-f]{8,80}", image.build_id):
        raise ProfileError(f"{path}: build-id {image.build_id[:80]!r} is not hexadecimal")
    facts = _facts.get(image.build_id) or _cached(cache_dir, image.build_id)
    if facts is None:
        facts = probe_sandboxed(path)
        _cache(cache_dir, image.build_id, facts)
    _facts[image.build_id] = facts
    return KeyLogBinary(path, image.build_id, f"{LIBRARY} {facts.version}", FUNCTION,
                        image.file_offset(facts.keylog_function), probe_args(facts), decode)


def probe_sandboxed(library: str, *, timeout: float = TIME_LIMIT) -> GnuTlsFacts:
    """Load ``library`` in a confined child and ask it; raises ProfileError with the reason."""
    from bridge.harvest.sandbox import run_child

    return GnuTlsFacts.from_json(run_child("bridge.harvest.gnutls", library, what=f"probing {library}",
                                           timeout=timeout))


class _Datum(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_uint)]


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p), ("sname", ctypes.c_char_p),
                ("saddr", ctypes.c_void_p)]


def probe_loaded(gnutls: ctypes.CDLL, certificate: tuple[bytes, bytes] | None = None) -> GnuTlsFacts:
    """The facts, from a loaded library (the sandboxed child)."""
    gnutls.gnutls_check_version.restype = ctypes.c_char_p
    gnutls.gnutls_check_version.argtypes = [ctypes.c_char_p]
    gnutls.gnutls_session_get_keylog_function.restype = ctypes.c_void_p
    gnutls.gnutls_session_get_keylog_function.argtypes = [ctypes.c_void_p]
    gnutls.gnutls_session_get_random.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Datum), ctypes.POINTER(_Datum)]
    gnutls.gnutls_init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
    gnutls.gnutls_deinit.argtypes = [ctypes.c_void_p]
    session = ctypes.c_void_p()
    if gnutls.gnutls_init(ctypes.byref(session), 1) != 0:  # GNUTLS_SERVER
        raise BridgeError("gnutls_init failed")
    try:
        function = gnutls.gnutls_session_get_keylog_function(session)
        client, server = _Datum(), _Datum()
        gnutls.gnutls_session_get_random(session, ctypes.byref(client), ctypes.byref(server))
        if not function or not client.data or client.size != 32:
            raise BridgeError("the session has no key-log function or no client random")
        info = _DlInfo()
        libc = ctypes.CDLL(None)
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        if not libc.dladdr(ctypes.c_void_p(function), ctypes.byref(info)) or not info.fbase:
            raise BridgeError("dladdr does not place the key-log function in a loaded object")
        version = (gnutls.gnutls_check_version(None) or b"?").decode("ascii", "replace")
        offset = client.data - session.value
    finally:
        gnutls.gnutls_deinit(session)
    try:
        layout = calibrate_sessions(gnutls, info.fbase, offset, certificate or _certificate())
    except BridgeError as exc:
        print(f"gnutls: no session layout: {exc}", file=sys.stderr)
        layout = None
    return GnuTlsFacts(version, function - info.fbase, offset, layout)


def _certificate() -> tuple[bytes, bytes]:
    """A throwaway EC certificate and key (PEM) for the calibration handshakes."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tls-bridge-calibration")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


_PRIORITIES = {
    "tls13-sha384": b"NORMAL:-VERS-ALL:+VERS-TLS1.3:-AES-128-GCM:-CHACHA20-POLY1305:-AES-128-CCM",
    "tls13-sha256": b"NORMAL:-VERS-ALL:+VERS-TLS1.3:-AES-256-GCM:-AES-256-CCM",
    "tls12": b"NORMAL:-VERS-ALL:+VERS-TLS1.2",
}


def _handshake(gnutls: ctypes.CDLL, credentials: ctypes.c_void_p, priority: bytes
               ) -> tuple[bytes, dict[str, bytes], list[object]]:
    """One handshake between a server and a client session over memory: the server
    session's bytes (its heap block, from malloc's chunk header), its key log, and
    what must outlive the session (callbacks, sessions)."""
    vp = ctypes.c_void_p
    push_type = ctypes.CFUNCTYPE(ctypes.c_ssize_t, vp, vp, ctypes.c_size_t)
    keylog_type = ctypes.CFUNCTYPE(ctypes.c_int, vp, ctypes.c_char_p, ctypes.POINTER(_Datum))
    gnutls.gnutls_init.argtypes = [ctypes.POINTER(vp), ctypes.c_uint]
    gnutls.gnutls_handshake.argtypes = [vp]
    gnutls.gnutls_priority_set_direct.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    gnutls.gnutls_credentials_set.argtypes = [vp, ctypes.c_int, vp]
    gnutls.gnutls_transport_set_push_function.argtypes = [vp, push_type]
    gnutls.gnutls_transport_set_pull_function.argtypes = [vp, push_type]
    gnutls.gnutls_transport_set_errno.argtypes = [vp, ctypes.c_int]
    gnutls.gnutls_session_set_keylog_function.argtypes = [vp, keylog_type]
    waiting: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
    sessions: dict[int, ctypes.c_void_p] = {}
    log: dict[str, bytes] = {}
    keep: list[object] = []
    for side in (1, 2):  # GNUTLS_SERVER, GNUTLS_CLIENT
        session = vp()
        if gnutls.gnutls_init(ctypes.byref(session), side) != 0:
            raise BridgeError("gnutls_init failed")
        sessions[side] = session
        if gnutls.gnutls_priority_set_direct(session, priority, None) != 0:
            raise BridgeError(f"priority {priority!r} refused")
        gnutls.gnutls_credentials_set(session, 1, credentials)  # GNUTLS_CRD_CERTIFICATE

        def push(_pointer, data, size, other=3 - side):  # type: ignore[no-untyped-def]
            waiting[other].extend(ctypes.string_at(data, size))
            return size

        def pull(_pointer, buffer, size, side=side, session=session):  # type: ignore[no-untyped-def]
            data = waiting[side]
            if not data:
                gnutls.gnutls_transport_set_errno(session, 11)  # EAGAIN
                return -1
            count = min(size, len(data))
            ctypes.memmove(buffer, bytes(data[:count]), count)
            del data[:count]
            return count

        def keylog(_session, label, secret, side=side):  # type: ignore[no-untyped-def]
            if side == 1:
                log[label.decode("ascii", "replace")] = ctypes.string_at(secret.contents.data, secret.contents.size)
            return 0

        callbacks = (push_type(push), push_type(pull), keylog_type(keylog))
        keep += [session, *callbacks]
        gnutls.gnutls_transport_set_push_function(session, callbacks[0])
        gnutls.gnutls_transport_set_pull_function(session, callbacks[1])
        gnutls.gnutls_session_set_keylog_function(session, callbacks[2])
    done = {1: False, 2: False}
    for _ in range(64):
        for side in (2, 1):
            if not done[side]:
                result = gnutls.gnutls_handshake(sessions[side])
                if result == 0:
                    done[side] = True
                elif result not in (-28, -52):  # GNUTLS_E_AGAIN, GNUTLS_E_INTERRUPTED
                    raise BridgeError(f"calibration handshake ({priority.decode()}) failed: {result}")
        if all(done.values()):
            break
    else:
        raise BridgeError("calibration handshake did not finish")
    base = sessions[1].value or 0
    size = ctypes.c_size_t.from_address(base - 8).value & ~7  # glibc malloc's chunk size
    if not 0 < size <= _MAX_SESSION_OFFSET:
        raise BridgeError(f"the session's heap block ({size} bytes) is implausible")
    return ctypes.string_at(base, size - 8), log, keep + [size]


def calibrate_sessions(gnutls: ctypes.CDLL, load_base: int, client_random: int,
                       certificate: tuple[bytes, bytes]) -> GnuTlsLayout:
    """The session layout, from real handshakes of the loaded library (see the module)."""
    vp = ctypes.c_void_p
    gnutls.gnutls_certificate_allocate_credentials.argtypes = [ctypes.POINTER(vp)]
    gnutls.gnutls_certificate_set_x509_key_mem.argtypes = [vp, ctypes.POINTER(_Datum), ctypes.POINTER(_Datum),
                                                           ctypes.c_int]
    credentials = vp()
    gnutls.gnutls_certificate_allocate_credentials(ctypes.byref(credentials))
    cert, key = (ctypes.create_string_buffer(part) for part in certificate)
    if gnutls.gnutls_certificate_set_x509_key_mem(credentials, ctypes.byref(_Datum(ctypes.cast(cert, vp), len(cert) - 1)),
                                                  ctypes.byref(_Datum(ctypes.cast(key, vp), len(key) - 1)), 1) != 0:
        raise BridgeError("the calibration certificate was refused")
    runs = {name: _handshake(gnutls, credentials, priority) for name, priority in _PRIORITIES.items()}

    def only(memory: bytes, value: bytes, what: str) -> int:
        hits = [i for i in range(len(memory) - len(value) + 1) if memory.startswith(value, i)]
        if len(hits) != 1:
            raise BridgeError(f"{what}: found {len(hits)} times in the session")
        return hits[0]

    tls13: dict[str, int] = {}
    for name in ("tls13-sha384", "tls13-sha256"):
        memory, log, _ = runs[name]
        if set(TLS13_LABELS) - set(log):
            raise BridgeError(f"{name}: the key log lacks {sorted(set(TLS13_LABELS) - set(log))}")
        if memory[client_random : client_random + 32] == bytes(32):
            raise BridgeError("no client random at its offset")
        for label in TLS13_LABELS:
            offset = only(memory, log[label], f"{name} {label}")
            if tls13.setdefault(label, offset) != offset:
                raise BridgeError(f"{label}: at {offset:#x} and {tls13[label]:#x}")
            length = len(log[label])
            if memory[offset + length : offset + SLOT] != bytes(SLOT - length):
                raise BridgeError(f"{label}: its slot is not zero after the secret")
    memory12, log12, _ = runs["tls12"]
    if set(log12) != {"CLIENT_RANDOM"}:
        raise BridgeError(f"tls12: the key log has {sorted(log12)}")
    master_secret = only(memory12, log12["CLIENT_RANDOM"], "tls12 master secret")
    # security_parameters.pversion: the same in both TLS 1.3 sessions, another in TLS 1.2's,
    # pointing into the library at a version entry whose name is "TLS1.3" / "TLS1.2"
    pversion = None
    memory384, memory256 = runs["tls13-sha384"][0], runs["tls13-sha256"][0]
    for offset in range(0, min(client_random + 0x400, len(memory12)) - 7, 8):
        v13, v13b, v12 = (int.from_bytes(m[offset : offset + 8], "little") for m in (memory384, memory256, memory12))
        if v13 != v13b or v13 == v12 or not (load_base < v13 < load_base + (1 << 26)) or \
                not (load_base < v12 < load_base + (1 << 26)):
            continue
        names = [ctypes.string_at(ctypes.c_void_p.from_address(v).value or 0, 6) for v in (v13, v12)]
        if names == [b"TLS1.3", b"TLS1.2"]:
            if pversion is not None:
                raise BridgeError("two version pointers in the session")
            pversion = (offset, v13 - load_base, v12 - load_base)
    if pversion is None:
        raise BridgeError("no version pointer in the session")
    chunks = {run[2][-1] for run in runs.values()}
    if len(chunks) != 1:
        raise BridgeError(f"sessions in heap blocks of {sorted(chunks)} bytes")  # type: ignore[type-var]
    return GnuTlsLayout(master_secret, tls13, *pversion, chunks.pop())  # type: ignore[arg-type]


def _child(library: str) -> int:
    from bridge.harvest.sandbox import _confine

    try:
        fd = os.open(library, os.O_RDONLY | os.O_CLOEXEC)
        certificate = _certificate()  # (before the limits: cryptography's own libraries)
        _confine()
        facts = probe_loaded(ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_NOW), certificate)
    except (BridgeError, OSError) as exc:
        print(exc if isinstance(exc, BridgeError) else f"sandbox: {exc}", file=sys.stderr)
        return 1
    print(facts.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
