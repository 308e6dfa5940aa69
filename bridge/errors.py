"""The project's error tree.

Every failure that input can provoke is one of these types.  Parsers translate
``struct.error``/``IndexError``/``ValueError`` at their boundary, so callers only
ever catch :class:`BridgeError` subclasses.  Messages never contain secret
material (keys, secrets, plaintext).
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error raised on purpose by tls-ids-bridge."""


class CaptureFormatError(BridgeError):
    """A capture file (pcap/pcapng) is unreadable or malformed."""


class PacketDecodeError(BridgeError):
    """A frame's link, IP or TCP header is malformed."""


class RecordDecodeError(BridgeError):
    """A TLS record or handshake message is malformed."""


class DecryptionError(BridgeError):
    """A TLS record failed authentication (AEAD tag, MAC or padding)."""


class KeyLogFormatError(BridgeError):
    """A key log line is not in the RFC 9850 (SSLKEYLOGFILE) format."""


class UnsupportedError(BridgeError):
    """Well-formed input that this version does not handle (e.g. a cipher suite)."""


class TransportError(BridgeError):
    """The key feed transport failed."""


class GuestAccessError(BridgeError):
    """Guest or process memory could not be read."""


class FeedMessageError(TransportError):
    """A key feed message is malformed, oversized or of an unknown schema.

    ``reason`` is a short code for counters (``not_msgpack``, ``too_large``,
    ``bad_version``, ``bad_type``, ``bad_field``, ``bad_label``); the message
    names fields, never their values.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ProfileError(BridgeError):
    """An OpenSSL struct-offset profile is missing, ambiguous or malformed."""


class HookError(BridgeError):
    """A hook (uprobe, breakpoint) could not be placed or read."""
