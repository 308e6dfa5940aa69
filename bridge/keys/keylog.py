"""RFC 9850 key log files (the SSLKEYLOGFILE format), parsed and written.

A line is ``LABEL <client_random hex> <secret hex>``; ``#`` starts a comment.
LF and CRLF line ends are accepted.  Unknown labels are ignored and counted.
We add one label of our own, ``HANDSHAKE_SECRET`` (the TLS 1.3 handshake
secret, which the harvester can read from OpenSSL's ``SSL`` object); the
handshake and application traffic secrets are derived from it and the transcript.

Every other line Wireshark reads is read too, and used by the decryptor:

* ``PMS_CLIENT_RANDOM <client random> <pre-master secret>`` (TLS 1.2: the
  master secret is derived from it, with the extended master secret when the
  handshake negotiated it);
* ``RSA <first 8 bytes of the encrypted pre-master secret> <pre-master secret>``
  (static-RSA TLS 1.2, as OpenSSL's client writes it): found by the
  ClientKeyExchange, not by the client random — ``client_random`` is empty and
  ``handle`` holds the 8 bytes;
* ``RSA Session-ID:<session id> Master-Key:<master secret>`` (NSS's old form):
  found by the session ID (label :data:`RSA_SESSION_ID`, ``handle`` = the ID);
* ``CLIENT_TRAFFIC_SECRET_N`` / ``SERVER_TRAFFIC_SECRET_N`` for N > 0, which
  some libraries write after a KeyUpdate.

The labels are :mod:`bridge.secrets`'s; :data:`~bridge.secrets.FEED_LABELS` are
those a key feed record carries: the pre-master and RSA forms never go on the feed.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from bridge.errors import KeyLogFormatError
from bridge.secrets import (
    CLIENT_RANDOM,
    PMS_CLIENT_RANDOM,
    RSA,
    RSA_HANDLE_LENGTH,
    RSA_SESSION_ID,
    is_known_label,
)

#: Secret lengths by label (TLS 1.2 master secrets, and RSA forms: 48 bytes).
_SECRET_LENGTHS = {CLIENT_RANDOM: (48,), RSA: (48,), RSA_SESSION_ID: (48,)}
_DEFAULT_LENGTHS = (32, 48)
#: Pre-master secrets of (EC)DHE can have many lengths; RSA's has 48 bytes.
_MAX_PRE_MASTER = 1024
_SESSION_FORM = re.compile(r"Session-ID:([0-9A-Fa-f]*)")
_MASTER_FORM = re.compile(r"Master-Key:([0-9A-Fa-f]*)")


@dataclass(frozen=True, slots=True, repr=False)
class KeyLogEntry:
    label: str
    #: Empty for :data:`RSA` and :data:`RSA_SESSION_ID` entries (see ``handle``).
    client_random: bytes
    secret: bytes
    #: What an RSA entry is found by: the encrypted pre-master secret's first
    #: 8 bytes (:data:`RSA`) or the session ID (:data:`RSA_SESSION_ID`).
    handle: bytes = b""

    def __repr__(self) -> str:
        return f"KeyLogEntry({self.label}, {(self.client_random or self.handle).hex()[:16]}…, <secret>)"

    def to_line(self) -> str:
        if self.label == RSA_SESSION_ID:
            return f"RSA Session-ID:{self.handle.hex()} Master-Key:{self.secret.hex()}"
        if self.label == RSA:
            return f"RSA {self.handle.hex()} {self.secret.hex()}"
        return f"{self.label} {self.client_random.hex()} {self.secret.hex()}"


@dataclass(slots=True)
class KeyLogStats:
    lines: int = 0
    entries: int = 0
    comments: int = 0
    unknown_labels: int = 0
    malformed: int = 0
    warnings: list[str] = field(default_factory=list)

    MAX_WARNINGS = 20

    def warn(self, message: str) -> None:
        if len(self.warnings) < self.MAX_WARNINGS:
            self.warnings.append(message)


def parse_line(line: str) -> KeyLogEntry | None:
    """One key log line → an entry; None for blank lines and comments.
    Raises :class:`KeyLogFormatError` for malformed lines (message without secrets)."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = text.split()
    if len(parts) != 3:
        raise KeyLogFormatError(f"expected 3 fields, found {len(parts)}")
    label, random_hex, secret_hex = parts
    if label == RSA and random_hex.startswith("Session-ID:"):
        return _session_id_line(random_hex, secret_hex)
    client_random = _unhex(label, random_hex)
    secret = _unhex(label, secret_hex)
    if label == RSA:
        if len(client_random) != RSA_HANDLE_LENGTH:
            raise KeyLogFormatError(
                f"RSA: encrypted pre-master prefix has {len(client_random)} bytes, expected {RSA_HANDLE_LENGTH}"
            )
        _check_length(label, secret)
        return KeyLogEntry(label, b"", secret, client_random)
    if len(client_random) != 32:
        raise KeyLogFormatError(f"{label}: client random has {len(client_random)} bytes, expected 32")
    if label == PMS_CLIENT_RANDOM:
        if not 1 <= len(secret) <= _MAX_PRE_MASTER:
            raise KeyLogFormatError(f"{label}: pre-master secret has {len(secret)} bytes")
    elif is_known_label(label):
        _check_length(label, secret)
    return KeyLogEntry(label, client_random, secret)


def _unhex(label: str, text: str) -> bytes:
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise KeyLogFormatError(f"{label[:40]}: fields are not hex") from None


def _check_length(label: str, secret: bytes) -> None:
    if len(secret) not in _SECRET_LENGTHS.get(label, _DEFAULT_LENGTHS):
        raise KeyLogFormatError(f"{label}: secret has {len(secret)} bytes")


def _session_id_line(session_field: str, master_field: str) -> KeyLogEntry:
    """``RSA Session-ID:<hex> Master-Key:<hex>``."""
    session = _SESSION_FORM.fullmatch(session_field)
    master = _MASTER_FORM.fullmatch(master_field)
    if session is None or master is None:
        raise KeyLogFormatError("RSA Session-ID: expected 'Session-ID:<hex> Master-Key:<hex>'")
    session_id = _unhex(RSA, session[1])
    if not 1 <= len(session_id) <= 32:
        raise KeyLogFormatError(f"RSA Session-ID: session ID has {len(session_id)} bytes")
    secret = _unhex(RSA, master[1])
    _check_length(RSA_SESSION_ID, secret)
    return KeyLogEntry(RSA_SESSION_ID, b"", secret, session_id)


def parse_lines(lines: Iterable[str], stats: KeyLogStats) -> Iterator[KeyLogEntry]:
    """Entries of known labels; comments, unknown labels and bad lines are counted."""
    for number, line in enumerate(lines, start=stats.lines + 1):
        stats.lines = number
        try:
            entry = parse_line(line)
        except KeyLogFormatError as exc:
            stats.malformed += 1
            stats.warn(f"line {number}: {exc}")
            continue
        if entry is None:
            if line.lstrip().startswith("#"):
                stats.comments += 1
            continue
        if not is_known_label(entry.label):
            stats.unknown_labels += 1
            continue
        stats.entries += 1
        yield entry


def read_keylog(path: str | os.PathLike[str], stats: KeyLogStats | None = None) -> list[KeyLogEntry]:
    """All entries of a key log file.  Raises OSError when the file cannot be read."""
    stats = stats if stats is not None else KeyLogStats()
    with open(path, encoding="ascii", errors="replace", newline=None) as handle:
        return list(parse_lines(handle, stats))


def format_keylog(entries: Iterable[KeyLogEntry]) -> str:
    return "".join(entry.to_line() + "\n" for entry in entries)


class KeyLogWriter:
    """Entries as RFC 9850 lines to a file created readable by its owner only
    (``-``: standard output), flushed after every batch; with ``once``, each line
    is written once (a feed's repairs and snapshots repeat records)."""

    def __init__(self, path: str, *, append: bool = True, once: bool = False) -> None:
        import sys

        if path == "-":
            self.stream = sys.stdout
        else:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
            self.stream = os.fdopen(os.open(path, flags, 0o600), "a" if append else "w", encoding="ascii")
        self._written: set[str] | None = set() if once else None
        self.lines = 0

    def write(self, entries: Iterable[KeyLogEntry]) -> None:
        for entry in entries:
            line = entry.to_line()
            if self._written is not None:
                if line in self._written:
                    continue
                self._written.add(line)
            self.stream.write(line + "\n")
            self.lines += 1
        self.stream.flush()

    def close(self) -> None:
        import sys

        if self.stream is not sys.stdout:
            self.stream.close()
