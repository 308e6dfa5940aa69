"""Following ``SSL → SSL_SESSION`` with a profile and reading a connection's secrets.

Pure logic over a :class:`FieldSource`: where the bytes come from is the
caller's business — ``/proc/PID/mem`` (:class:`MemoryFields`), a uprobe event
whose fields the kernel fetched at hook time, or guest memory.  The result is a
:class:`~bridge.secrets.ConnectionSecrets` (``complete`` once it decrypts the
whole connection).
"""

from __future__ import annotations

import re
from typing import Protocol

from bridge.errors import GuestAccessError
from bridge.harvest.profile import Profile
from bridge.secrets import (
    CLIENT_RANDOM,
    CLIENT_TRAFFIC_SECRET_0,
    EXPORTER_SECRET,
    HANDSHAKE_SECRET,
    SERVER_TRAFFIC_SECRET_0,
    TLS12,
    TLS13,
    ConnectionSecrets,
)

_VERSIONS = frozenset({0x0301, 0x0302, TLS12, TLS13})
#: OpenSSL 3.2 and later: an ``SSL *`` handed to the API may be a QUIC connection, stream
#: (XSO), listener or domain object instead of an ``SSL_CONNECTION``; every kind starts with
#: ``int type`` (``struct ssl_st``), 0 for ``SSL_TYPE_SSL_CONNECTION``, the TLS state whose
#: fields a profile names; QUIC kinds are 1 and 2 in 3.2's sources, 0x80-0x83 in later ones
#: (a DTLS listener has a kind too): anything but 0 is not read.  Before 3.2 the first field
#: is the protocol version.
OBJECT_TYPE = "object_type"
SSL_TYPE_SSL_CONNECTION = 0
_RELEASE = re.compile(r"(\d+)\.(\d+)\.")
#: TLS 1.3 suites by hash length; anything else falls back to the zero-tail test.
_SHA384_SUITES = frozenset({0x1302})
_SHA256_SUITES = frozenset({0x1301, 0x1303, 0x1304, 0x1305})
#: Field sizes read for each profile field.
FIELD_SIZES = {
    "version": 4,
    "client_random": 32,
    "master_key": 48,
    "master_key_length": 8,
    "cipher_id": 4,
    "handshake_secret": 48,
    "master_secret": 48,
    "client_app_traffic_secret": 48,
    "server_app_traffic_secret": 48,
    "exporter_master_secret": 48,
    OBJECT_TYPE: 4,
}
TLS13_LABELS = {
    "handshake_secret": HANDSHAKE_SECRET,
    "client_app_traffic_secret": CLIENT_TRAFFIC_SECRET_0,
    "server_app_traffic_secret": SERVER_TRAFFIC_SECRET_0,
    "exporter_master_secret": EXPORTER_SECRET,
}


def typed_objects(profile: Profile) -> bool:
    """The build's ``SSL *`` may point at objects other than a TLS connection (OpenSSL 3.2+)."""
    match = _RELEASE.search(profile.openssl_version or "")
    return match is not None and (int(match[1]), int(match[2])) >= (3, 2)


def field_path(profile: Profile, name: str) -> tuple[int, ...] | None:
    """A profile field's path, and the object type's (at offset 0) where the build has typed objects."""
    if name == OBJECT_TYPE:
        return (0,) if typed_objects(profile) else None
    return profile.path(name)


class FieldSource(Protocol):
    def field(self, name: str) -> bytes | None:
        """The bytes of a profile field (``FIELD_SIZES[name]`` long), or None."""
        ...


class MemoryFields:
    """Profile fields of one ``SSL *`` read through a memory reader."""

    def __init__(self, reader, profile: Profile, ssl: int) -> None:  # type: ignore[no-untyped-def]
        self.reader = reader
        self.profile = profile
        self.ssl = ssl

    def address(self, name: str) -> int | None:
        path = field_path(self.profile, name)
        if path is None:
            return None
        address = self.ssl
        for step in path[:-1]:
            address = int.from_bytes(self.reader.read(address + step, 8), "little")
            if address == 0:
                return None
        return address + path[-1]

    def field(self, name: str) -> bytes | None:
        try:
            address = self.address(name)
            return None if address is None else self.reader.read(address, FIELD_SIZES[name])
        except GuestAccessError:
            return None


def _u(data: bytes | None) -> int | None:
    return None if data is None else int.from_bytes(data, "little")


def _hash_length(suite: int | None, secret: bytes) -> int:
    if suite in _SHA384_SUITES:
        return 48
    if suite in _SHA256_SUITES:
        return 32
    return 32 if not any(secret[32:48]) else 48


def read_secrets(source: FieldSource) -> ConnectionSecrets | None:
    """The secrets of the connection, or None when the object holds no connection
    (yet): no plausible version, or an all-zero client random; or it is no TLS
    connection object at all (a QUIC object of OpenSSL 3.2+: :func:`is_other_object`)."""
    if is_other_object(source):
        return None
    version = _u(source.field("version"))
    client_random = source.field("client_random")
    if version not in _VERSIONS or client_random is None or not any(client_random):
        return None
    cipher_id = _u(source.field("cipher_id"))
    suite = cipher_id & 0xFFFF if cipher_id and cipher_id >> 16 == 0x0300 else None
    result = ConnectionSecrets(client_random, tls_version=version, cipher_suite=suite)
    if version == TLS13:
        for name, label in TLS13_LABELS.items():
            value = source.field(name)
            if value is not None and any(value):
                result.secrets[label] = value[: _hash_length(suite, value)]
    else:
        length = _u(source.field("master_key_length"))
        master_key = source.field("master_key")
        if length == 48 and master_key is not None and any(master_key):
            result.secrets[CLIENT_RANDOM] = master_key
    return result


def is_other_object(source: FieldSource) -> bool:
    """The ``SSL *`` is an object of OpenSSL 3.2+ other than a TLS connection (a QUIC
    connection or stream): following the profile's paths from it would read garbage."""
    kind = _u(source.field(OBJECT_TYPE))
    return kind is not None and kind != SSL_TYPE_SSL_CONNECTION
