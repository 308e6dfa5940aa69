"""A passively observed TLS connection's life cycle, in one place.

Each direction of a connection goes through *phases*; every change of phase is
one of the :class:`Move` s below, and :data:`TRANSITIONS` is the whole table (as
h11 keeps its state machine in one module).  Nothing else sets a phase: the
record layer asks :func:`advance`.

====================  =========================================================
phase                 records of this direction are ...
====================  =========================================================
``PLAINTEXT``         not protected (hellos, TLS 1.2's handshake before
                      ChangeCipherSpec)
``EARLY``             TLS 1.3 0-RTT data under the client's early traffic secret
``HANDSHAKE``         TLS 1.3 handshake messages under the handshake secrets
``ENCRYPTED``         protected with the application keys (TLS 1.3 after its
                      Finished, TLS 1.2 after ChangeCipherSpec)
``STOPPED``           never decrypted: a gap, a wrong key, not TLS, ...
====================  =========================================================

A mirror (SPAN, TAP) delivers the two directions with no order between them: the
rules that make a record wait for the other direction (:func:`must_wait`) are
here too, as are the rules that decide which protected phase a direction enters
(:func:`entering_protection`).
"""

from __future__ import annotations

import enum

from bridge.tls.records import CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE

TLS12, TLS13 = 0x0303, 0x0304


class Direction(enum.IntEnum):
    """A direction of a TCP connection: the one definition in the project."""

    C2S = 0
    S2C = 1

    @property
    def peer(self) -> "Direction":
        return _PEERS[self]


#: Each direction's peer, by direction (a lookup: the enum's call costs ten times more, per packet).
_PEERS = (Direction.S2C, Direction.C2S)


class Phase(enum.Enum):
    PLAINTEXT = "plaintext"
    EARLY = "early"
    HANDSHAKE = "handshake"
    ENCRYPTED = "encrypted"
    STOPPED = "stopped"


class Move(enum.Enum):
    """What moves a direction to another phase."""

    #: TLS 1.3 client: the first protected record, 0-RTT offered and not (yet) rejected.
    EARLY_DATA = "early data"
    #: TLS 1.3: the ServerHello (server), the first protected record, the end of early data (client).
    HANDSHAKE_KEYS = "handshake keys"
    #: TLS 1.3: this direction's Finished; TLS 1.2: its ChangeCipherSpec (again on renegotiation).
    APPLICATION_KEYS = "application keys"
    #: Nothing more can be decrypted in this direction.
    STOP = "stop"


_P, _M = Phase, Move
#: (phase, move) → next phase.  STOPPED is final: every move leaves it there.
TRANSITIONS: dict[tuple[Phase, Move], Phase] = {
    (_P.PLAINTEXT, _M.EARLY_DATA): _P.EARLY,
    (_P.PLAINTEXT, _M.HANDSHAKE_KEYS): _P.HANDSHAKE,
    (_P.EARLY, _M.HANDSHAKE_KEYS): _P.HANDSHAKE,
    (_P.HANDSHAKE, _M.HANDSHAKE_KEYS): _P.HANDSHAKE,
    (_P.PLAINTEXT, _M.APPLICATION_KEYS): _P.ENCRYPTED,
    (_P.EARLY, _M.APPLICATION_KEYS): _P.ENCRYPTED,
    (_P.HANDSHAKE, _M.APPLICATION_KEYS): _P.ENCRYPTED,
    (_P.ENCRYPTED, _M.APPLICATION_KEYS): _P.ENCRYPTED,
    **{(phase, _M.STOP): _P.STOPPED for phase in Phase},
    **{(_P.STOPPED, move): _P.STOPPED for move in Move},
}


class TransitionError(Exception):
    """A move the table does not allow (a bug, or input the handshake rules let through)."""


def advance(phase: Phase, move: Move) -> Phase:
    try:
        return TRANSITIONS[(phase, move)]
    except KeyError:
        raise TransitionError(f"{move.value} in phase {phase.value}") from None


def entering_protection(direction: Direction, *, version: int | None, early_data_offered: bool,
                        early_data_accepted: bool | None) -> Move | None:
    """The move of a direction still in PLAINTEXT when its first protected TLS 1.3
    record comes (None: a protected record there is an error)."""
    if version == TLS13 or (version is None and early_data_offered):
        if direction is Direction.C2S and early_data_offered and early_data_accepted is not False:
            return Move.EARLY_DATA
        return Move.HANDSHAKE_KEYS
    return None


def tls13_protected(direction: Direction, content_type: int, *, version: int | None,
                    early_data_offered: bool) -> bool:
    """A TLS 1.3 protected record (outer type application_data), 0-RTT records the
    client sends before the ServerHello included."""
    if content_type != CONTENT_APPLICATION_DATA:
        return False
    if version == TLS13:
        return True
    return version is None and direction is Direction.C2S and early_data_offered


def must_wait(direction: Direction, content_type: int, *, client_hello: bool, server_hello: bool,
              version: int | None, server_finished: bool, client_phase: Phase,
              early_data_accepted: bool | None) -> bool:
    """Must this record wait for the other direction?  Server records wait for the
    ClientHello; client records after the hello wait for the ServerHello; TLS 1.3
    client application records wait for the server's Finished (the order of the
    transcript and of key installation), unless 0-RTT was accepted."""
    if direction is Direction.S2C:
        return not client_hello
    if not server_hello:
        return client_hello and content_type != CONTENT_HANDSHAKE and content_type != CONTENT_ALERT
    return (
        version == TLS13
        and not server_finished
        and content_type == CONTENT_APPLICATION_DATA
        and client_phase in (Phase.PLAINTEXT, Phase.HANDSHAKE)
        and early_data_accepted is not True
    )
