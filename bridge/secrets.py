"""TLS session secrets: the RFC 9850 vocabulary, and one connection's secrets.

The bottom of the dependency graph: it imports nothing of ours.  Everything
that names a secret — key log files, the key store, the key feed, the
harvesters, the decryptor — uses these labels and :class:`ConnectionSecrets`.

Labels are RFC 9850's (SSLKEYLOGFILE) plus one of our own,
``HANDSHAKE_SECRET`` (the TLS 1.3 handshake secret a memory harvester reads;
every traffic secret is derived from it and the transcript).  Key log files may
also name secrets by something other than the client random — an ``RSA`` line
by its encrypted pre-master secret, an ``RSA Session-ID:`` line by the session
ID; such secrets are kept by a *handle* (:func:`rsa_handle`,
:func:`session_handle`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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
#: TLS 1.2 pre-master secret by client random (Wireshark's key log form).
PMS_CLIENT_RANDOM = "PMS_CLIENT_RANDOM"
#: ``RSA <encrypted pre-master secret, first 8 bytes> <pre-master secret>``.
RSA = "RSA"
#: ``RSA Session-ID:<id> Master-Key:<master secret>`` (the line's label is ``RSA``).
RSA_SESSION_ID = "RSA_SESSION_ID"

#: The labels of a key feed record: RFC 9850's and our HANDSHAKE_SECRET.
FEED_LABELS = KNOWN_LABELS = frozenset(
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
#: The first bytes of the encrypted pre-master secret an ``RSA`` line names.
RSA_HANDLE_LENGTH = 8
TLS12, TLS13 = 0x0303, 0x0304

_TRAFFIC_SECRET_N = re.compile(r"(CLIENT|SERVER)_TRAFFIC_SECRET_([1-9][0-9]{0,9})")


def traffic_secret_label(direction: str, epoch: int) -> str:
    """``CLIENT_TRAFFIC_SECRET_<epoch>`` (``direction`` "CLIENT" or "SERVER")."""
    return f"{direction}_TRAFFIC_SECRET_{epoch}"


def traffic_secret_epoch(label: str) -> tuple[str, int] | None:
    """("CLIENT"|"SERVER", N) for a ``*_TRAFFIC_SECRET_N`` label (N > 0), else None."""
    match = _TRAFFIC_SECRET_N.fullmatch(label)
    return (match[1], int(match[2])) if match else None


def is_known_label(label: str) -> bool:
    """A label the decryptor uses (feed labels, the pre-master forms, later epochs)."""
    return (
        label in KNOWN_LABELS
        or label in (PMS_CLIENT_RANDOM, RSA, RSA_SESSION_ID)
        or traffic_secret_epoch(label) is not None
    )


def rsa_handle(encrypted_pre_master: bytes) -> bytes:
    """The handle of an ``RSA`` key log line: its encrypted pre-master secret's first 8 bytes."""
    return b"rsa:" + encrypted_pre_master[:RSA_HANDLE_LENGTH]


def session_handle(session_id: bytes) -> bytes:
    """The handle of an ``RSA Session-ID:`` key log line (a TLS 1.2 session's master secret)."""
    return b"sid:" + session_id


@dataclass(slots=True, repr=False)
class ConnectionSecrets:
    """Every secret known for one TLS connection, by RFC 9850 label, keyed by its
    client random; what else is known of it (version, suite) and where the
    secrets came from (``origin``: harvester metadata, never a secret)."""

    client_random: bytes
    secrets: dict[str, bytes] = field(default_factory=dict)
    tls_version: int | None = None
    cipher_suite: int | None = None
    origin: dict[str, object] | None = None

    def get(self, label: str) -> bytes | None:
        return self.secrets.get(label)

    @property
    def complete(self) -> bool:
        """Enough to decrypt the whole connection: TLS 1.3's handshake and both
        application traffic secrets (or both handshake traffic secrets too),
        TLS 1.2's master secret."""
        labels = self.secrets.keys()
        master = CLIENT_RANDOM in labels or PMS_CLIENT_RANDOM in labels
        application = {CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0} <= labels
        handshake = HANDSHAKE_SECRET in labels or {CLIENT_HANDSHAKE_TRAFFIC_SECRET,
                                                   SERVER_HANDSHAKE_TRAFFIC_SECRET} <= labels
        if self.tls_version == TLS13:
            return application and handshake
        if self.tls_version is not None:  # TLS 1.2 (or older): the master secret
            return master
        return master or (application and handshake)

    def __repr__(self) -> str:
        return (f"ConnectionSecrets({self.client_random.hex()[:16]}…, labels={sorted(self.secrets)}, "
                f"version={self.tls_version and hex(self.tls_version)})")
