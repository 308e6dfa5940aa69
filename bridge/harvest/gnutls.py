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

Run as a module (``python -m bridge.harvest.gnutls LIBRARY``) it is the
sandboxed child: it prints the facts as JSON.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import sys
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class GnuTlsFacts:
    """What loading one build told: its version, its key-log function's address
    (relative to the load base), the client random's offset in a session."""

    version: str
    keylog_function: int
    client_random: int

    @classmethod
    def from_json(cls, text: str) -> GnuTlsFacts:
        try:
            body = json.loads(text)
            facts = cls(str(body["version"])[:32], int(body["keylog_function"]), int(body["client_random"]))
        except (ValueError, KeyError, TypeError):
            raise ProfileError("the GnuTLS probe's answer does not parse") from None
        if not 0 < facts.client_random < _MAX_SESSION_OFFSET or facts.keylog_function <= 0:
            raise ProfileError(f"the GnuTLS probe's answer is implausible ({facts})")
        return facts


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
            return GnuTlsFacts.from_json(handle.read())
    except (OSError, UnicodeDecodeError, ProfileError):
        return None


def _cache(cache_dir: str | None, build_id: str, facts: GnuTlsFacts) -> None:
    if cache_dir is None:
        return
    try:
        os.makedirs(cache_dir, exist_ok=True)
        partial = os.path.join(cache_dir, f".gnutls-{build_id}.json.{os.getpid()}")
        with open(partial, "w", encoding="ascii") as handle:
            json.dump({"version": facts.version, "keylog_function": facts.keylog_function,
                       "client_random": facts.client_random}, handle)
        os.replace(partial, os.path.join(cache_dir, f"gnutls-{build_id}.json"))
    except OSError:
        pass  # a cache only: probed again next time


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


def probe_loaded(gnutls: ctypes.CDLL) -> GnuTlsFacts:
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
        return GnuTlsFacts(version, function - info.fbase, client.data - session.value)
    finally:
        gnutls.gnutls_deinit(session)


def _child(library: str) -> int:
    from bridge.harvest.sandbox import _confine

    try:
        fd = os.open(library, os.O_RDONLY | os.O_CLOEXEC)
        _confine()
        facts = probe_loaded(ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_NOW))
    except (BridgeError, OSError) as exc:
        print(exc if isinstance(exc, BridgeError) else f"sandbox: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"version": facts.version, "keylog_function": facts.keylog_function,
                      "client_random": facts.client_random}))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
