"""Hooks at a TLS library's own key-log function: the secrets straight from its
arguments, no layout needed.

Libraries that compute a key log line on every handshake whether or not one is
configured (Go's ``crypto/tls``, GnuTLS's default key-log function) are hooked
there: the probe's fetch-args copy the label, the client random and the secret
at hook time.  Each library's module (:mod:`bridge.harvest.golang`,
:mod:`bridge.harvest.gnutls`) finds its hook point in a binary and decodes its
probe's arguments into a :class:`KeyLogLine`; this module holds what they share:

* :class:`KeyLogBinary`: a hook point in one binary (path, file offset, the
  probe's fetch-args, the decoder), found by
  :func:`bridge.harvest.keylog_targets.find_hook_points`;
* :class:`KeyLogAssembler`: lines → one connection's secrets (keyed by the
  client random), ready when they decrypt the connection (TLS 1.3's handshake
  and application traffic secrets, TLS 1.2's master secret), again when a
  later line adds one (GnuTLS logs ``EXPORTER_SECRET`` last).  Bounded: at most
  :data:`MAX_CONNECTIONS` connections in the making, the oldest dropped and counted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.secrets import (
    CLIENT_HANDSHAKE_TRAFFIC_SECRET,
    CLIENT_RANDOM,
    CLIENT_TRAFFIC_SECRET_0,
    SERVER_HANDSHAKE_TRAFFIC_SECRET,
    SERVER_TRAFFIC_SECRET_0,
    TLS12,
    TLS13,
    ConnectionSecrets,
    is_known_label,
)

#: Connections whose lines are being gathered (an attacker opening handshakes it never finishes
#: costs at most this many entries).
MAX_CONNECTIONS = 4096
_SECRET_SIZES = (32, 48)
_TLS13_LABELS = frozenset({CLIENT_HANDSHAKE_TRAFFIC_SECRET, SERVER_HANDSHAKE_TRAFFIC_SECRET,
                           CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0})


@dataclass(frozen=True, slots=True, repr=False)
class KeyLogLine:
    """One key log line as the library computed it."""

    label: str
    client_random: bytes
    secret: bytes

    def __repr__(self) -> str:  # never the secret
        return f"KeyLogLine({self.label} {self.client_random[:4].hex()}…)"


Decoder = Callable[[dict[str, "bytes | int | None"]], "KeyLogLine | None"]


@dataclass(frozen=True, slots=True)
class KeyLogBinary:
    """A library's key-log function in one binary, ready to probe."""

    path: str  # usable from this host
    build_id: str
    library: str  # "go crypto/tls go1.19.8", "gnutls 3.7.9"
    function: str  # the hooked function's name, for key_origin
    offset: int  # file offset of its first instruction
    probe_args: tuple[str, ...]  # tracefs fetch-args
    decode: Decoder = field(compare=False)


def label_from(raw: bytes | int | None, length: bytes | int | None) -> str | None:
    """A label copied from memory: ``length`` bytes (None: up to the first NUL) of
    the copy, an RFC 9850 label or None."""
    if not isinstance(raw, bytes):
        return None
    if length is None:
        raw = raw.split(b"\0", 1)[0]
    else:
        count = length if isinstance(length, int) else int.from_bytes(length, "little")
        if not 0 < count <= len(raw):
            return None
        raw = raw[:count]
    try:
        label = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return label if is_known_label(label) else None


def secret_from(raw: bytes | int | None, length: bytes | int | None, sizes: tuple[int, ...] = (32, 48)) -> bytes | None:
    """The first ``length`` bytes of a copy, when ``length`` is one of ``sizes``."""
    if not isinstance(raw, bytes) or length is None:
        return None
    count = length if isinstance(length, int) else int.from_bytes(length, "little")
    if count not in sizes or count > len(raw):
        return None
    return raw[:count]


@dataclass(slots=True)
class AssemblerStats:
    lines: int = 0
    undecodable: int = 0  # probe hits whose arguments were not a key log line (a fault, an unknown label)
    evicted: int = 0  # connections dropped unfinished to stay within MAX_CONNECTIONS


class KeyLogAssembler:
    """Key log lines → each connection's secrets, when they decrypt it."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self.stats = AssemblerStats()
        self._pending: OrderedDict[bytes, dict[str, bytes]] = OrderedDict()

    def add(self, line: KeyLogLine | None) -> ConnectionSecrets | None:
        """The connection's secrets so far when they are enough to decrypt it (again
        with each line after that), else None."""
        if line is None:
            self.stats.undecodable += 1
            return None
        self.stats.lines += 1
        secrets = self._pending.get(line.client_random)
        if secrets is None:
            secrets = self._pending[line.client_random] = {}
            while len(self._pending) > self.limit:
                _, dropped = self._pending.popitem(last=False)
                if not _ready(dropped):
                    self.stats.evicted += 1
        self._pending.move_to_end(line.client_random)
        secrets[line.label] = line.secret
        if not _ready(secrets):
            return None
        version = TLS12 if CLIENT_RANDOM in secrets and not _TLS13_LABELS & secrets.keys() else TLS13
        return ConnectionSecrets(line.client_random, dict(secrets), tls_version=version)


def _ready(secrets: dict[str, bytes]) -> bool:
    return CLIENT_RANDOM in secrets or _TLS13_LABELS <= secrets.keys()


def decode_c_label(args: dict[str, bytes | int | None]) -> KeyLogLine | None:
    """The line of a C library's probe: ``label`` a copy of a NUL-terminated string,
    ``secret`` with ``secret_len``, ``random`` the 32-byte client random."""
    label = label_from(args.get("label"), None)
    secret = secret_from(args.get("secret"), args.get("secret_len"))
    random = args.get("random")
    if label is None or secret is None or not isinstance(random, bytes) or len(random) != 32:
        return None
    return KeyLogLine(label, random, secret)
