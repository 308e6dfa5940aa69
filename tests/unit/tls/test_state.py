"""The TLS life cycle's table: every transition, and the ordering rules."""

from __future__ import annotations

import pytest

from bridge.tls.records import CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE
from bridge.tls.state import (
    TLS12,
    TLS13,
    TRANSITIONS,
    Direction,
    Move,
    Phase,
    TransitionError,
    advance,
    entering_protection,
    must_wait,
    tls13_protected,
)


def test_the_table_is_complete_where_it_must_be():
    # Every phase can stop; STOPPED absorbs everything; nothing leads back to PLAINTEXT.
    assert all(TRANSITIONS[(phase, Move.STOP)] is Phase.STOPPED for phase in Phase)
    assert all(TRANSITIONS[(Phase.STOPPED, move)] is Phase.STOPPED for move in Move)
    assert Phase.PLAINTEXT not in TRANSITIONS.values()


@pytest.mark.parametrize("phase, move, after", [
    (Phase.PLAINTEXT, Move.EARLY_DATA, Phase.EARLY),
    (Phase.PLAINTEXT, Move.HANDSHAKE_KEYS, Phase.HANDSHAKE),
    (Phase.EARLY, Move.HANDSHAKE_KEYS, Phase.HANDSHAKE),
    (Phase.HANDSHAKE, Move.APPLICATION_KEYS, Phase.ENCRYPTED),
    (Phase.PLAINTEXT, Move.APPLICATION_KEYS, Phase.ENCRYPTED),  # TLS 1.2 ChangeCipherSpec
    (Phase.ENCRYPTED, Move.APPLICATION_KEYS, Phase.ENCRYPTED),  # TLS 1.2 renegotiation
])
def test_moves(phase, move, after):
    assert advance(phase, move) is after


@pytest.mark.parametrize("phase, move", [(Phase.ENCRYPTED, Move.EARLY_DATA), (Phase.HANDSHAKE, Move.EARLY_DATA),
                                         (Phase.ENCRYPTED, Move.HANDSHAKE_KEYS)])
def test_moves_the_protocol_never_makes_are_refused(phase, move):
    with pytest.raises(TransitionError):
        advance(phase, move)


def test_which_protected_phase_a_direction_enters():
    kw = dict(early_data_offered=True, early_data_accepted=None)
    assert entering_protection(Direction.C2S, version=TLS13, **kw) is Move.EARLY_DATA
    assert entering_protection(Direction.S2C, version=TLS13, **kw) is Move.HANDSHAKE_KEYS
    assert entering_protection(Direction.C2S, version=TLS13, early_data_offered=True,
                               early_data_accepted=False) is Move.HANDSHAKE_KEYS
    assert entering_protection(Direction.C2S, version=TLS12, early_data_offered=False,
                               early_data_accepted=None) is None
    assert tls13_protected(Direction.C2S, CONTENT_APPLICATION_DATA, version=None, early_data_offered=True)
    assert not tls13_protected(Direction.S2C, CONTENT_APPLICATION_DATA, version=None, early_data_offered=True)
    assert not tls13_protected(Direction.C2S, CONTENT_HANDSHAKE, version=TLS13, early_data_offered=False)


def test_a_mirror_s_reordering_makes_records_wait():
    base = dict(server_hello=False, version=None, server_finished=False, client_phase=Phase.PLAINTEXT,
                early_data_accepted=None)
    # the server's records before the ClientHello
    assert must_wait(Direction.S2C, CONTENT_HANDSHAKE, client_hello=False, **base)
    assert not must_wait(Direction.S2C, CONTENT_HANDSHAKE, client_hello=True, **base)
    # the client's protected records before the ServerHello; its alerts and handshake go on
    assert must_wait(Direction.C2S, CONTENT_APPLICATION_DATA, client_hello=True, **base)
    assert not must_wait(Direction.C2S, CONTENT_ALERT, client_hello=True, **base)
    tls13 = dict(base, server_hello=True, version=TLS13)
    # TLS 1.3 client application data before the server's Finished, unless 0-RTT was accepted
    assert must_wait(Direction.C2S, CONTENT_APPLICATION_DATA, client_hello=True, **tls13)
    assert not must_wait(Direction.C2S, CONTENT_APPLICATION_DATA, client_hello=True,
                         **dict(tls13, early_data_accepted=True))
    assert not must_wait(Direction.C2S, CONTENT_APPLICATION_DATA, client_hello=True,
                         **dict(tls13, server_finished=True))
