"""Recognising a TLS hello at the start of a TCP payload, without parsing it.

The one place that looks at raw bytes for a ClientHello or a ServerHello: the
engine orients a connection picked up without its SYN, the harvesters' wire
trigger and the IPS take the client random from a captured ClientHello.  A
record header (type 22, version 3.x, length) then a handshake header (type,
24-bit length) then, for both hellos, a 2-byte version and the 32-byte random.
"""

from __future__ import annotations

CLIENT_HELLO = 1
SERVER_HELLO = 2
_HANDSHAKE = 22
#: record header (5) + handshake header (4) + legacy_version (2)
_RANDOM_AT = 11
_RANDOM_END = _RANDOM_AT + 32


def hello_type(payload: bytes | memoryview) -> int | None:
    """:data:`CLIENT_HELLO` or :data:`SERVER_HELLO` when ``payload`` starts with a
    handshake record whose first message is one, else None."""
    if len(payload) >= 6 and payload[0] == _HANDSHAKE and payload[1] == 3:
        kind = payload[5]
        if kind == CLIENT_HELLO or kind == SERVER_HELLO:
            return kind
    return None


def client_hello_random(payload: bytes | memoryview) -> bytes | None:
    """The client random of a payload that starts with a ClientHello record."""
    if len(payload) >= _RANDOM_END and hello_type(payload) == CLIENT_HELLO:
        return bytes(payload[_RANDOM_AT:_RANDOM_END])
    return None
