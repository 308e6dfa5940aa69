"""Summaries of the server certificate chain for the flow log.

A server sends the same chain on every connection, and parsing one certificate
costs 25-80 µs (about a fifth of a short TLS 1.3 connection's whole cost in the engine):
:func:`describe_chain` remembers the summaries of the last
:data:`CACHE_ENTRIES` certificates it saw, by their SHA-256.  Only certificates
of at most :data:`CACHE_MAX_DER` bytes are remembered, so the cache holds at
most a few megabytes whatever the certificates a peer sends."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

#: Certificates whose summary is remembered (least recently seen forgotten first).
CACHE_ENTRIES = 1024
#: Larger certificates are described each time (a summary is at most about as large as its DER).
CACHE_MAX_DER = 4096


def describe_certificate(der: bytes) -> dict[str, object]:
    """Subject, issuer and DNS/IP subject alternative names of one DER certificate.

    `cryptography` parses lazily: a malformed name only fails when it is read, so
    every field access sits inside the error handling.
    """
    from cryptography import x509  # here: most runs never read a certificate (a fifth of the start-up)

    try:
        certificate = x509.load_der_x509_certificate(der)
        subject = certificate.subject.rfc4514_string()
        issuer = certificate.issuer.rfc4514_string()
    except ValueError as exc:
        return {"error": f"unparseable certificate: {exc}"}
    names: list[str] = []
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        names.append("<malformed subjectAltName>")
    else:
        names.extend(extension.value.get_values_for_type(x509.DNSName))
        names.extend(str(address) for address in extension.value.get_values_for_type(x509.IPAddress))
    return {
        "subject": subject,
        "issuer": issuer,
        "san": names,
    }


class _Summaries:
    """Summaries by the certificate's SHA-256, bounded; each caller gets its own copy."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._by_digest: OrderedDict[bytes, dict[str, object]] = OrderedDict()
        self._lock = threading.Lock()  # one cache for every engine of the process, whatever its thread
        self.hits = self.misses = 0

    def describe(self, der: bytes) -> dict[str, object]:
        if len(der) > CACHE_MAX_DER:
            return describe_certificate(der)
        digest = hashlib.sha256(der).digest()
        with self._lock:
            summary = self._by_digest.get(digest)
            if summary is not None:
                self._by_digest.move_to_end(digest)
                self.hits += 1
        if summary is None:
            summary = describe_certificate(der)
            with self._lock:
                self.misses += 1
                self._by_digest[digest] = summary
                while len(self._by_digest) > self.entries:
                    self._by_digest.popitem(last=False)
        return _copy(summary)

    def __len__(self) -> int:
        return len(self._by_digest)

    def clear(self) -> None:
        with self._lock:
            self._by_digest.clear()
            self.hits = self.misses = 0


def _copy(summary: dict[str, object]) -> dict[str, object]:
    copied = dict(summary)
    if "san" in copied:
        copied["san"] = list(copied["san"])  # type: ignore[call-overload]
    return copied


_SUMMARIES = _Summaries()


def describe_chain(chain: list[bytes]) -> list[dict[str, object]]:
    """The summaries of a chain (leaf first), as :func:`describe_certificate`'s."""
    return [_SUMMARIES.describe(der) for der in chain]
