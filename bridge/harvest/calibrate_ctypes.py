"""``tls-bridge profile calibrate --libssl PATH``: drive real handshakes through
that very library (ctypes, memory BIOs, no sockets), with the library's own key
log callback as ground truth, and find its struct offsets.

Both ends of every handshake are this library (one ``SSL_CTX`` per role, a
throw-away self-signed P-256 certificate), so each handshake yields two samples:
the server's ``SSL`` and the client's.  TLS 1.3 with a SHA-256 and a SHA-384
suite (the secrets' lengths differ), TLS 1.2 with GCM and ChaCha20, each twice.
Run it in a process of its own: the library is loaded into the calling process.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bridge import __version__
from bridge.errors import ProfileError
from bridge.harvest.calibrate import Sample, calibrate
from bridge.harvest.chain import MemoryFields, read_secrets
from bridge.harvest.elf import read_elf
from bridge.harvest.memory import ProcessMemory
from bridge.harvest.profile import Profile

_SSL_FILETYPE_PEM = 1
_SSL_CTRL_SET_MIN_PROTO_VERSION = 123
_SSL_CTRL_SET_MAX_PROTO_VERSION = 124
_SSL_ERROR_WANT_READ = 2
_BIO_CTRL_PENDING = 10
_KEYLOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p)

#: (version, TLS 1.3 suites or TLS 1.2 cipher list) — each run twice.
HANDSHAKES = (
    (0x0304, "TLS_AES_128_GCM_SHA256"),
    (0x0304, "TLS_AES_256_GCM_SHA384"),
    (0x0304, "TLS_CHACHA20_POLY1305_SHA256"),
    (0x0303, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (0x0303, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (0x0303, "ECDHE-ECDSA-CHACHA20-POLY1305"),
)

_SIGNATURES = {
    "TLS_server_method": ([], ctypes.c_void_p),
    "TLS_client_method": ([], ctypes.c_void_p),
    "SSL_CTX_new": ([ctypes.c_void_p], ctypes.c_void_p),
    "SSL_CTX_free": ([ctypes.c_void_p], None),
    "SSL_CTX_ctrl": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p], ctypes.c_long),
    "SSL_CTX_set_ciphersuites": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int),
    "SSL_CTX_set_cipher_list": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int),
    "SSL_CTX_use_certificate_file": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "SSL_CTX_use_PrivateKey_file": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "SSL_CTX_set_keylog_callback": ([ctypes.c_void_p, _KEYLOG_CALLBACK], None),
    "SSL_new": ([ctypes.c_void_p], ctypes.c_void_p),
    "SSL_free": ([ctypes.c_void_p], None),
    "SSL_set_bio": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None),
    "SSL_set_accept_state": ([ctypes.c_void_p], None),
    "SSL_set_connect_state": ([ctypes.c_void_p], None),
    "SSL_do_handshake": ([ctypes.c_void_p], ctypes.c_int),
    "SSL_get_error": ([ctypes.c_void_p, ctypes.c_int], ctypes.c_int),
    "SSL_read": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int], ctypes.c_int),
    "SSL_write": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "SSL_version": ([ctypes.c_void_p], ctypes.c_int),
    "SSL_get_current_cipher": ([ctypes.c_void_p], ctypes.c_void_p),
    "SSL_CIPHER_get_id": ([ctypes.c_void_p], ctypes.c_ulong),
    "BIO_s_mem": ([], ctypes.c_void_p),
    "BIO_new": ([ctypes.c_void_p], ctypes.c_void_p),
    "BIO_read": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int], ctypes.c_int),
    "BIO_write": ([ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
    "BIO_ctrl": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p], ctypes.c_long),
    "OpenSSL_version": ([ctypes.c_int], ctypes.c_char_p),
}


def _preload_libcrypto(path: str) -> None:
    """Wheels' bundled libssl (auditwheel) may name a libcrypto beside it without an
    $ORIGIN run path: load that one first, globally, so the loader finds it."""
    directory = os.path.dirname(os.path.abspath(path))
    candidates = sorted(p for p in os.listdir(directory) if p.startswith("libcrypto") and ".so" in p)
    if len(candidates) == 1:
        try:
            ctypes.CDLL(os.path.join(directory, candidates[0]), mode=os.RTLD_GLOBAL | os.RTLD_NOW)
        except (OSError, IndexError):
            pass


class _Library:
    def __init__(self, path: str) -> None:
        _preload_libcrypto(path)
        try:
            self.handle = ctypes.CDLL(path, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        except OSError as exc:
            raise ProfileError(f"cannot load {path} with ctypes: {exc} (a static build? calibrate against "
                               "a live process: --pid PID --keylog CLIENT_KEYLOG)") from None
        for name, (argtypes, restype) in _SIGNATURES.items():
            try:
                function = getattr(self.handle, name)
            except AttributeError:
                raise ProfileError(f"{path} does not export {name}: not OpenSSL 1.1.1 or later") from None
            function.argtypes, function.restype = argtypes, restype
            setattr(self, name, function)

    def check(self, result: int, what: str) -> None:
        if result != 1:
            raise ProfileError(f"calibration handshake: {what} failed")


@dataclass
class _Endpoint:
    ssl: int
    rbio: int
    wbio: int


def _self_signed_pem() -> tuple[bytes, bytes]:
    """A throw-away self-signed P-256 certificate and key, PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "calibration.invalid")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _self_signed(directory: Path) -> tuple[bytes, bytes]:
    """The certificate and key written to ``directory``; their paths."""
    cert_pem, key_pem = _self_signed_pem()
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return str(cert_path).encode(), str(key_path).encode()


def _self_signed_in_memory() -> tuple[bytes, bytes, list[int]]:
    """The certificate and key in anonymous memory files (no writable directory
    needed: the calibrating child runs with a read-only file system): their
    ``/proc/self/fd`` paths, and the descriptors to close."""
    fds = []
    for name, pem in zip(("cert.pem", "key.pem"), _self_signed_pem()):
        fd = os.memfd_create(name, 0)
        os.write(fd, pem)
        fds.append(fd)
    return f"/proc/self/fd/{fds[0]}".encode(), f"/proc/self/fd/{fds[1]}".encode(), fds


class _Handshaker:
    """Handshakes between two contexts of one library over memory BIOs."""

    def __init__(self, lib: _Library, cert: bytes, key: bytes) -> None:
        self.lib = lib
        self.secrets: dict[bytes, dict[str, bytes]] = {}
        self._callback = _KEYLOG_CALLBACK(self._keylog)  # referenced: must outlive the contexts
        self.server_ctx = lib.SSL_CTX_new(lib.TLS_server_method())
        self.client_ctx = lib.SSL_CTX_new(lib.TLS_client_method())
        if not self.server_ctx or not self.client_ctx:
            raise ProfileError("SSL_CTX_new failed")
        lib.check(lib.SSL_CTX_use_certificate_file(self.server_ctx, cert, _SSL_FILETYPE_PEM), "loading the certificate")
        lib.check(lib.SSL_CTX_use_PrivateKey_file(self.server_ctx, key, _SSL_FILETYPE_PEM), "loading the key")
        for ctx in (self.server_ctx, self.client_ctx):
            lib.SSL_CTX_set_keylog_callback(ctx, self._callback)
        self.kept: list[int] = []

    def _keylog(self, ssl: int, line: bytes) -> None:
        label, client_random, secret = line.decode("ascii").split()
        self.secrets.setdefault(bytes.fromhex(client_random), {})[label] = bytes.fromhex(secret)

    def _configure(self, version: int, suites: str) -> None:
        """The client caps the version; the server accepts any (so the negotiated
        version is told apart from the min/max settings kept beside it)."""
        lib = self.lib
        lib.SSL_CTX_ctrl(self.client_ctx, _SSL_CTRL_SET_MAX_PROTO_VERSION, version, None)
        for ctx in (self.server_ctx, self.client_ctx):
            if version == 0x0304:
                lib.check(lib.SSL_CTX_set_ciphersuites(ctx, suites.encode()), f"selecting {suites}")
            else:
                lib.check(lib.SSL_CTX_set_cipher_list(ctx, suites.encode()), f"selecting {suites}")

    def _endpoint(self, ctx: int, server: bool) -> _Endpoint:
        lib = self.lib
        ssl = lib.SSL_new(ctx)
        rbio, wbio = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(ssl, rbio, wbio)
        (lib.SSL_set_accept_state if server else lib.SSL_set_connect_state)(ssl)
        return _Endpoint(ssl, rbio, wbio)

    def _pump(self, source: _Endpoint, target: _Endpoint) -> int:
        lib = self.lib
        moved = 0
        buffer = ctypes.create_string_buffer(65536)
        while lib.BIO_ctrl(source.wbio, _BIO_CTRL_PENDING, 0, None) > 0:
            count = lib.BIO_read(source.wbio, buffer, len(buffer))
            if count <= 0:
                break
            lib.BIO_write(target.rbio, buffer.raw[:count], count)
            moved += count
        return moved

    def handshake(self, version: int, suites: str) -> tuple[_Endpoint, _Endpoint]:
        lib = self.lib
        self._configure(version, suites)
        client, server = self._endpoint(self.client_ctx, False), self._endpoint(self.server_ctx, True)
        done = {id(client): False, id(server): False}
        for _ in range(50):
            for side in (client, server):
                if not done[id(side)]:
                    result = lib.SSL_do_handshake(side.ssl)
                    if result == 1:
                        done[id(side)] = True
                    elif lib.SSL_get_error(side.ssl, result) != _SSL_ERROR_WANT_READ:
                        raise ProfileError(f"calibration handshake ({suites}) failed")
            moved = self._pump(client, server) + self._pump(server, client)
            if all(done.values()) and not moved:
                break
        else:
            raise ProfileError(f"calibration handshake ({suites}) did not finish")
        # Application data both ways: TLS 1.3 session tickets are processed, as in a real connection.
        buffer = ctypes.create_string_buffer(4096)
        for writer, reader in ((client, server), (server, client)):
            lib.SSL_write(writer.ssl, b"calibration", 11)
            self._pump(writer, reader)
            lib.SSL_read(reader.ssl, buffer, len(buffer))
            self._pump(reader, writer)
        self.kept += [client.ssl, server.ssl]
        return client, server

    def close(self) -> None:
        for ssl in self.kept:
            self.lib.SSL_free(ssl)
        self.lib.SSL_CTX_free(self.server_ctx)
        self.lib.SSL_CTX_free(self.client_ctx)


def calibrate_library(path: str, *, rounds: int = 2, name: str | None = None) -> Profile:
    """Calibrate the libssl at ``path``; raises ProfileError when the result is not unique."""
    started = time.monotonic()
    image = read_elf(path)
    lib = _Library(path)
    cert, key, fds = _self_signed_in_memory()
    try:
        handshaker = _Handshaker(lib, cert, key)
        try:
            samples: list[Sample] = []
            for _ in range(rounds):
                for version, suites in HANDSHAKES:
                    seen = set(handshaker.secrets)
                    client, server = handshaker.handshake(version, suites)
                    fresh = [random for random in handshaker.secrets if random not in seen]
                    if len(fresh) != 1:
                        raise ProfileError(f"calibration handshake ({suites}): {len(fresh)} client randoms logged")
                    for endpoint in (client, server):
                        cipher = lib.SSL_get_current_cipher(endpoint.ssl)
                        samples.append(Sample(endpoint.ssl, lib.SSL_version(endpoint.ssl),
                                              lib.SSL_CIPHER_get_id(cipher) & 0xFFFF, fresh[0],
                                              handshaker.secrets[fresh[0]]))
            memory = ProcessMemory(os.getpid())
            try:
                fields = calibrate(memory.read_upto, samples)
                profile = Profile(
                    build_id=image.build_id,
                    openssl_version=(lib.OpenSSL_version(0) or b"").decode("ascii", "replace") or image.openssl_version,
                    library=name or os.path.basename(path),
                    fields=fields,
                    made={
                        "method": "calibrate --libssl (ctypes, memory BIOs, key log callback as ground truth)",
                        "tool": f"tls-bridge {__version__}",
                        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                        "samples": len(samples),
                        "handshakes": [suites for _, suites in HANDSHAKES],
                    },
                )
                verify(profile, memory, samples)
            finally:
                memory.close()
        finally:
            handshaker.close()
    finally:
        for fd in fds:
            os.close(fd)
    profile.made["seconds"] = round(time.monotonic() - started, 3)
    return profile


def verify(profile: Profile, reader, samples: list[Sample]) -> None:  # type: ignore[no-untyped-def]
    """Read every sample back through the profile: the secrets must equal the key log's."""
    for sample in samples:
        secrets = read_secrets(MemoryFields(sample.reader or reader, profile, sample.ssl))
        if secrets is None or not secrets.complete or secrets.client_random != sample.client_random:
            found = "nothing" if secrets is None else f"{sorted(secrets.secrets)} (version {secrets.tls_version or 0:#06x})"
            raise ProfileError(f"calibration: the profile reads back {found} from a TLS {sample.version:#06x} "
                               "sample, not its secrets; refusing to write it")
        for label, value in secrets.secrets.items():
            if label in sample.secrets and sample.secrets[label] != value:
                raise ProfileError(f"calibration: {label} read through the profile differs from the key log")
