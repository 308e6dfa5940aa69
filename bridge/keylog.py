"""RFC 9850 key log files (the SSLKEYLOGFILE format), parsed and written.

A line is ``LABEL <client_random hex> <secret hex>``; ``#`` starts a comment.
LF and CRLF line ends are accepted.  Unknown labels are ignored and counted.
We add one label of our own, ``HANDSHAKE_SECRET`` (the TLS 1.3 handshake
secret, which the harvester can read from OpenSSL's ``SSL`` object); the
handshake and application traffic secrets are derived from it and the transcript.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from bridge.errors import KeyLogFormatError

CLIENT_RANDOM = "CLIENT_RANDOM"
CLIENT_EARLY_TRAFFIC_SECRET = "CLIENT_EARLY_TRAFFIC_SECRET"
EARLY_EXPORTER_SECRET = "EARLY_EXPORTER_SECRET"
CLIENT_HANDSHAKE_TRAFFIC_SECRET = "CLIENT_HANDSHAKE_TRAFFIC_SECRET"
SERVER_HANDSHAKE_TRAFFIC_SECRET = "SERVER_HANDSHAKE_TRAFFIC_SECRET"
CLIENT_TRAFFIC_SECRET_0 = "CLIENT_TRAFFIC_SECRET_0"
SERVER_TRAFFIC_SECRET_0 = "SERVER_TRAFFIC_SECRET_0"
EXPORTER_SECRET = "EXPORTER_SECRET"
#: Our own label: the TLS 1.3 handshake secret (RFC 8446 §7.1 "Handshake Secret").
HANDSHAKE_SECRET = "HANDSHAKE_SECRET"

KNOWN_LABELS = frozenset(
    {
        CLIENT_RANDOM,
        CLIENT_EARLY_TRAFFIC_SECRET,
        EARLY_EXPORTER_SECRET,
        CLIENT_HANDSHAKE_TRAFFIC_SECRET,
        SERVER_HANDSHAKE_TRAFFIC_SECRET,
        CLIENT_TRAFFIC_SECRET_0,
        SERVER_TRAFFIC_SECRET_0,
        EXPORTER_SECRET,
        HANDSHAKE_SECRET,
    }
)
_SECRET_LENGTHS = {CLIENT_RANDOM: (48,)}
_DEFAULT_LENGTHS = (32, 48)


@dataclass(frozen=True, slots=True, repr=False)
class KeyLogEntry:
    label: str
    client_random: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"KeyLogEntry({self.label}, {self.client_random.hex()[:16]}…, <secret>)"

    def to_line(self) -> str:
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
    try:
        client_random = binascii.unhexlify(random_hex)
        secret = binascii.unhexlify(secret_hex)
    except (binascii.Error, ValueError):
        raise KeyLogFormatError(f"{label}: fields are not hex") from None
    if len(client_random) != 32:
        raise KeyLogFormatError(f"{label}: client random has {len(client_random)} bytes, expected 32")
    if label in KNOWN_LABELS and len(secret) not in _SECRET_LENGTHS.get(label, _DEFAULT_LENGTHS):
        raise KeyLogFormatError(f"{label}: secret has {len(secret)} bytes")
    return KeyLogEntry(label, client_random, secret)


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
        if entry.label not in KNOWN_LABELS:
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
