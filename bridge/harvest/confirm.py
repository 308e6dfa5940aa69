"""Confirming a struct layout on a live connection, before anything read through it is published.

A layout that was not calibrated against this very build (a candidate taken from
another build of the same library, or one learned from live connections) may be
wrong.  Before a secret read through it leaves the harvester, the secrets are
checked against *cryptographic relations that no wrong offset can satisfy by
chance*, using only the process's (or guest's) own memory — so it works with
hooks, the wire search, sensors' requests, in processes and in VM guests alike:

TLS 1.3 (RFC 8446 §7.1)
    * ``master_secret = HKDF-Extract(Derive-Secret(handshake_secret, "derived", ""), 0)``:
      the handshake and master secrets are bound with no transcript;
    * the application traffic secrets (and the exporter secret) are
      ``Derive-Secret(master_secret, "c ap traffic" | "s ap traffic" | "exp master", H)``
      with ``H`` the transcript hash up to the server's Finished, which the
      library keeps beside the secrets (OpenSSL's ``server_finished_hash``):
      some hash-length run of the object's bytes must produce *all* of them.

TLS 1.2 (RFC 5246 §6.3)
    the key block derived from the master secret, the client random and the
    server random must decrypt and authenticate the client's first protected
    record (its Finished, captured on the wire by the harvester itself:
    :mod:`bridge.harvest.first_record`), so a connection that ended before it
    was looked at confirms too; without that record (no wire, or not captured
    yet), the key block's two write keys must be live in the process's cipher
    contexts (the server random then is the 32 bytes OpenSSL keeps before the
    client random): both keys are searched for in its writable memory.

A relation that holds is a confirmation as strong as a record decrypted: the
odds of a wrong secret satisfying an HMAC relation are 2^-256.  Pure over
bytes; the caller supplies the object's bytes and a memory search.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass

from bridge.errors import DecryptionError, GuestAccessError, RecordDecodeError
from bridge.harvest.first_record import FirstRecord
from bridge.secrets import TLS12, TLS13, ConnectionSecrets
from bridge.secrets import CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, EXPORTER_SECRET, HANDSHAKE_SECRET, SERVER_TRAFFIC_SECRET_0
from bridge.tls.ciphersuites import cipher_suite
from bridge.tls.keyschedule import derive_secret, empty_hash, hkdf_extract, key_block12
from bridge.tls.protection import RecordDecryptor12

#: Bytes of the connection object searched for the transcript hash.
OBJECT_SPAN = 0x3000


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the harvester can show about one live connection."""

    #: The bytes of the connection object (``OBJECT_SPAN`` from the ``SSL *``; fewer at a mapping's end).
    object_bytes: bytes
    #: The TLS 1.3 master secret read through the layout (None: the layout has no such field).
    master_secret: bytes | None
    #: The server random read through the layout (None: not known).
    server_random: bytes | None
    #: Which of these byte strings occur in the target's writable memory.
    find: Callable[[list[bytes]], set[bytes]]
    #: TLS 1.2: the connection's ServerHello and first client record, captured on the wire.
    captured: FirstRecord | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    #: Why not (a short reason for the status and the log), or how it was confirmed.
    reason: str
    #: A failure that proves the layout wrong (False: it may hold a moment later — the
    #: connection's keys are not installed yet — so the connection is tried again).
    conclusive: bool = True


def _expand_label(hash_name: str, secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """HKDF-Expand-Label for one output block (length ≤ the hash length): one HMAC."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context + b"\x01"
    return hmac.digest(secret, info, hash_name)[:length]


def confirm_tls13(secrets: ConnectionSecrets, evidence: Evidence) -> Verdict:
    handshake = secrets.secrets.get(HANDSHAKE_SECRET)
    client = secrets.secrets.get(CLIENT_TRAFFIC_SECRET_0)
    server = secrets.secrets.get(SERVER_TRAFFIC_SECRET_0)
    if handshake is None or client is None or server is None:
        return Verdict(False, "TLS 1.3 secrets incomplete")
    length = len(client)
    hash_name = "sha384" if length == 48 else "sha256"
    master = evidence.master_secret
    if master is None:
        return Verdict(False, "the layout has no master_secret field to check the handshake secret against")
    master = master[:length]
    expected = hkdf_extract(hash_name, salt=derive_secret(hash_name, handshake, b"derived", empty_hash(hash_name)),
                            ikm=bytes(length))
    if not hmac.compare_digest(expected, master):
        return Verdict(False, "handshake and master secrets are not bound as RFC 8446 §7.1 requires")
    data = evidence.object_bytes
    exporter = secrets.secrets.get(EXPORTER_SECRET)
    for offset in range(0, len(data) - length + 1, 4):
        transcript = data[offset : offset + length]
        if _expand_label(hash_name, master, b"c ap traffic", transcript, length) != client:
            continue
        if _expand_label(hash_name, master, b"s ap traffic", transcript, length) != server:
            continue
        if exporter is not None and _expand_label(hash_name, master, b"exp master", transcript, length) != exporter[:length]:
            return Verdict(False, "the exporter secret is not derived from the master secret")
        return Verdict(True, "TLS 1.3: handshake, master, traffic and exporter secrets bound (RFC 8446 §7.1)")
    return Verdict(False, "the traffic secrets are not derived from the master secret with any transcript hash "
                          "in the object (a layout from another build, or a KeyUpdate)")


#: Finished (RFC 5246 §7.4.9): handshake type 20, 12 bytes of verify_data.
_FINISHED = bytes([20, 0, 0, 12])


def confirm_tls12_record(secrets: ConnectionSecrets, captured: FirstRecord) -> Verdict:
    """Does the key block derived from the master secret decrypt and authenticate
    the client's first protected record (its Finished)?  Decides whether the
    connection is alive or not."""
    master = secrets.secrets.get(CLIENT_RANDOM)
    if master is None:
        return Verdict(False, "TLS 1.2 master secret missing")
    suite = cipher_suite(captured.cipher_suite)
    if suite is None or suite.tls13:
        return Verdict(False, f"cipher suite {captured.cipher_suite:#06x} of the ServerHello is not supported",
                       conclusive=False)
    if secrets.cipher_suite is None:
        return Verdict(False, "TLS 1.2 cipher suite not read (the layout's cipher_id)", conclusive=False)
    if secrets.cipher_suite != captured.cipher_suite:
        return Verdict(False, f"the cipher suite read ({secrets.cipher_suite:#06x}) is not the one the ServerHello "
                              f"chose ({captured.cipher_suite:#06x})")
    client_keys, _ = key_block12(suite, master_secret=master, client_random=captured.client_random,
                                 server_random=captured.server_random)
    decryptor = RecordDecryptor12(suite, client_keys, encrypt_then_mac=captured.encrypt_then_mac)
    try:
        _, plaintext = decryptor.decrypt(captured.content_type, captured.version, captured.fragment)
    except (DecryptionError, RecordDecodeError) as exc:
        return Verdict(False, f"the client's Finished record does not decrypt with the key block derived from the "
                              f"master secret ({exc})")
    if plaintext[:4] != _FINISHED or len(plaintext) != 16:
        return Verdict(False, "the client's first protected record decrypted, but is not a Finished message")
    return Verdict(True, "TLS 1.2: the client's Finished record decrypted and authenticated with the key block "
                         "derived from the master secret (RFC 5246 §6.3)")


def confirm_tls12(secrets: ConnectionSecrets, evidence: Evidence) -> Verdict:
    master = secrets.secrets.get(CLIENT_RANDOM)
    if master is None:
        return Verdict(False, "TLS 1.2 master secret missing")
    if evidence.captured is not None and evidence.captured.client_random == secrets.client_random:
        return confirm_tls12_record(secrets, evidence.captured)
    suite = cipher_suite(secrets.cipher_suite) if secrets.cipher_suite is not None else None
    # Fields that cannot be read now (a page the guest has not mapped yet, a pointer set a
    # moment later) decide nothing: only a relation that fails is proof of a wrong layout.
    if suite is None or suite.code >> 8 == 0x13:
        return Verdict(False, "TLS 1.2 cipher suite not read (the layout's cipher_id)", conclusive=False)
    if evidence.server_random is None or not any(evidence.server_random):
        return Verdict(False, "no server random beside the client random", conclusive=False)
    client_keys, server_keys = key_block12(suite, master_secret=master, client_random=secrets.client_random,
                                           server_random=evidence.server_random)
    wanted = [client_keys.key, server_keys.key]
    found = evidence.find(wanted)
    if set(wanted) <= found:
        return Verdict(True, "TLS 1.2: both write keys of the key block derived from the master secret are live "
                             "in the process (RFC 5246 §6.3)")
    # The master secret exists before the cipher contexts: right after the key exchange, the
    # keys may not be installed yet.  Not proof of a wrong layout: tried again a moment later.
    return Verdict(False, "the key block derived from the master secret is not (yet) in the process's memory",
                   conclusive=False)


def confirm(secrets: ConnectionSecrets, evidence: Evidence) -> Verdict:
    """Do the secrets read through a layout hold on this live connection?"""
    if secrets.tls_version == TLS13:
        return confirm_tls13(secrets, evidence)
    if secrets.tls_version == TLS12:
        return confirm_tls12(secrets, evidence)
    return Verdict(False, f"version {secrets.tls_version or 0:#06x} is not harvested")


def memory_evidence(reader, profile, ssl: int, find: Callable[[list[bytes]], set[bytes]]) -> Evidence:  # type: ignore[no-untyped-def]
    """The evidence about the connection at ``ssl`` read through ``profile`` from a
    reader (``read``/``read_upto``: a process's or a guest process's memory)."""
    from bridge.harvest.chain import MemoryFields

    fields = MemoryFields(reader, profile, ssl)
    try:
        object_bytes = reader.read_upto(ssl, OBJECT_SPAN)
    except GuestAccessError:
        object_bytes = b""
    server_random = None
    try:
        address = fields.address("client_random")
        if address is not None:
            server_random = reader.read(address - 32, 32)  # OpenSSL: s3.server_random precedes s3.client_random
    except GuestAccessError:
        server_random = None
    return Evidence(object_bytes, fields.field("master_secret"), server_random, find)
