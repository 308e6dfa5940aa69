"""End to end through TlsConnection with the wire records of RFC 8448 §3
"Simple 1-RTT Handshake" (TLS_AES_128_GCM_SHA256).

Every ``*_RECORD`` constant is a "complete record" line of RFC 8448 §3: what goes on
the wire, 5-byte record header included.  The secrets are the RFC's values (see
tests/test_keyschedule.py, which checks them against the transcript).  The values
shared with that file (CLIENT_RANDOM, the secrets, SERVER_FLIGHT_RECORD) live in
tests/support/rfc8448.py.
"""

from __future__ import annotations

import pytest

from bridge.secrets import CLIENT_HANDSHAKE_TRAFFIC_SECRET, CLIENT_TRAFFIC_SECRET_0, HANDSHAKE_SECRET, SERVER_HANDSHAKE_TRAFFIC_SECRET, SERVER_TRAFFIC_SECRET_0
from bridge.keys.store import KeyStore
from bridge.tls.connection import ApplicationData, Status, TlsConnection
from bridge.tls.state import Direction

# RFC 8448 §3 values shared with tests/test_keyschedule.py.  The secrets get RFC_*
# names so they do not clash with the keylog labels imported from bridge.secrets.
from tests.support.rfc8448 import (
    CLIENT_APPLICATION_TRAFFIC_SECRET_0 as RFC_CLIENT_AP_TRAFFIC,
    CLIENT_HANDSHAKE_TRAFFIC_SECRET as RFC_CLIENT_HS_TRAFFIC,
    CLIENT_RANDOM,
    HANDSHAKE_SECRET as RFC_HANDSHAKE_SECRET,
    SERVER_APPLICATION_TRAFFIC_SECRET_0 as RFC_SERVER_AP_TRAFFIC,
    SERVER_FLIGHT_RECORD,
    SERVER_HANDSHAKE_TRAFFIC_SECRET as RFC_SERVER_HS_TRAFFIC,
    hexbytes,
)

C2S, S2C = Direction.C2S, Direction.S2C

# --- wire records (RFC 8448 §3 "complete record" lines) ------------------------------

# RFC 8448 §3, "{client} send handshake record": complete record (201 octets) — ClientHello
CLIENT_HELLO_RECORD = hexbytes(
    """16 03 01 00 c4 01 00 00 c0 03 03 cb
    34 ec b1 e7 81 63 ba 1c 38 c6 da cb 19 6a 6d ff a2 1a 8d 99 12
    ec 18 a2 ef 62 83 02 4d ec e7 00 00 06 13 01 13 03 13 02 01 00
    00 91 00 00 00 0b 00 09 00 00 06 73 65 72 76 65 72 ff 01 00 01
    00 00 0a 00 14 00 12 00 1d 00 17 00 18 00 19 01 00 01 01 01 02
    01 03 01 04 00 23 00 00 00 33 00 26 00 24 00 1d 00 20 99 38 1d
    e5 60 e4 bd 43 d2 3d 8e 43 5a 7d ba fe b3 c0 6e 51 c1 3c ae 4d
    54 13 69 1e 52 9a af 2c 00 2b 00 03 02 03 04 00 0d 00 20 00 1e
    04 03 05 03 06 03 02 03 08 04 08 05 08 06 04 01 05 01 06 01 02
    01 04 02 05 02 06 02 02 02 00 2d 00 02 01 01 00 1c 00 02 40 01"""
)

# RFC 8448 §3, "{server} send handshake record": complete record (95 octets) — ServerHello
SERVER_HELLO_RECORD = hexbytes(
    """16 03 03 00 5a 02 00 00 56 03 03 a6
    af 06 a4 12 18 60 dc 5e 6e 60 24 9c d3 4c 95 93 0c 8a c5 cb 14
    34 da c1 55 77 2e d3 e2 69 28 00 13 01 00 00 2e 00 33 00 24 00
    1d 00 20 c9 82 88 76 11 20 95 fe 66 76 2b db f7 c6 72 e1 56 d6
    cc 25 3b 83 3d f1 dd 69 b1 b0 4e 75 1f 0f 00 2b 00 02 03 04"""
)

# RFC 8448 §3, "{client} send handshake record": complete record (58 octets) — client
# Finished (client handshake key)
CLIENT_FINISHED_RECORD = hexbytes(
    """17 03 03 00 35 75 ec 4d c2 38 cc e6
    0b 29 80 44 a7 1e 21 9c 56 cc 77 b0 51 7f e9 b9 3c 7a 4b fc 44
    d8 7f 38 f8 03 38 ac 98 fc 46 de b3 84 bd 1c ae ac ab 68 67 d7
    26 c4 05 46"""
)

# RFC 8448 §3, "{server} send handshake record": complete record (227 octets) —
# NewSessionTicket (server application key, sequence 0)
NEW_SESSION_TICKET_RECORD = hexbytes(
    """17 03 03 00 de 3a 6b 8f 90 41 4a 97
    d6 95 9c 34 87 68 0d e5 13 4a 2b 24 0e 6c ff ac 11 6e 95 d4 1d
    6a f8 f6 b5 80 dc f3 d1 1d 63 c7 58 db 28 9a 01 59 40 25 2f 55
    71 3e 06 1d c1 3e 07 88 91 a3 8e fb cf 57 53 ad 8e f1 70 ad 3c
    73 53 d1 6d 9d a7 73 b9 ca 7f 2b 9f a1 b6 c0 d4 a3 d0 3f 75 e0
    9c 30 ba 1e 62 97 2a c4 6f 75 f7 b9 81 be 63 43 9b 29 99 ce 13
    06 46 15 13 98 91 d5 e4 c5 b4 06 f1 6e 3f c1 81 a7 7c a4 75 84
    00 25 db 2f 0a 77 f8 1b 5a b0 5b 94 c0 13 46 75 5f 69 23 2c 86
    51 9d 86 cb ee ac 87 aa c3 47 d1 43 f9 60 5d 64 f6 50 db 4d 02
    3e 70 e9 52 ca 49 fe 51 37 12 1c 74 bc 26 97 68 7e 24 87 46 d6
    df 35 30 05 f3 bc e1 86 96 12 9c 81 53 55 6b 3b 6c 67 79 b3 7b
    f1 59 85 68 4f"""
)

# RFC 8448 §3, "{client} send application_data record": complete record (72 octets)
CLIENT_APPLICATION_DATA_RECORD = hexbytes(
    """17 03 03 00 43 a2 3f 70 54 b6 2c 94
    d0 af fa fe 82 28 ba 55 cb ef ac ea 42 f9 14 aa 66 bc ab 3f 2b
    98 19 a8 a5 b4 6b 39 5b d5 4a 9a 20 44 1e 2b 62 97 4e 1f 5a 62
    92 a2 97 70 14 bd 1e 3d ea e6 3a ee bb 21 69 49 15 e4"""
)

# RFC 8448 §3, "{server} send application_data record": complete record (72 octets)
SERVER_APPLICATION_DATA_RECORD = hexbytes(
    """17 03 03 00 43 2e 93 7e 11 ef 4a c7
    40 e5 38 ad 36 00 5f c4 a4 69 32 fc 32 25 d0 5f 82 aa 1b 36 e3
    0e fa f9 7d 90 e6 df fc 60 2d cb 50 1a 59 a8 fc c4 9c 4b f2 e5
    f0 a2 1c 00 47 c2 ab f3 32 54 0d d0 32 e1 67 c2 95 5d"""
)

# RFC 8448 §3, "{client} send alert record": complete record (24 octets) — close_notify
CLIENT_ALERT_RECORD = hexbytes("17 03 03 00 13 c9 87 27 60 65 56 66 b7 4d 7f f1 15 3e fd 6d b6 d0 b0 e3")

# RFC 8448 §3, "{server} send alert record": complete record (24 octets) — close_notify
SERVER_ALERT_RECORD = hexbytes("17 03 03 00 13 b5 8f d6 71 66 eb f5 99 d2 47 20 cf be 7e fa 7a 88 64 a9")

# RFC 8448 §3, "{client} send application_data record": payload (50 octets) — the server
# echoes the same 50 octets in "{server} send application_data record".
APPLICATION_PAYLOAD = bytes(range(0x32))

# RFC 8448 §3, the server certificate (cert_data of the Certificate message, 432 octets):
# starts "30 82 01 ac 30 82 01 15 a0 03 02 01 02 02 01 02" and ends "... 2b 4d e1".
CERTIFICATE_DER_START = hexbytes("30 82 01 ac 30 82 01 15 a0 03 02 01 02 02 01 02")
CERTIFICATE_DER_END = hexbytes("96 12 29 ac 91 87 b4 2b 4d e1")

# The conversation in wire order, as RFC 8448 §3 lists it.
FLIGHTS: list[tuple[Direction, bytes]] = [
    (C2S, CLIENT_HELLO_RECORD),
    (S2C, SERVER_HELLO_RECORD + SERVER_FLIGHT_RECORD),
    (C2S, CLIENT_FINISHED_RECORD),
    (S2C, NEW_SESSION_TICKET_RECORD),
    (C2S, CLIENT_APPLICATION_DATA_RECORD),
    (S2C, SERVER_APPLICATION_DATA_RECORD),
    (C2S, CLIENT_ALERT_RECORD),
    (S2C, SERVER_ALERT_RECORD),
]


def test_record_lengths_match_the_rfc() -> None:
    for record, total in [
        (CLIENT_HELLO_RECORD, 201),
        (SERVER_HELLO_RECORD, 95),
        (SERVER_FLIGHT_RECORD, 679),
        (CLIENT_FINISHED_RECORD, 58),
        (NEW_SESSION_TICKET_RECORD, 227),
        (CLIENT_APPLICATION_DATA_RECORD, 72),
        (SERVER_APPLICATION_DATA_RECORD, 72),
        (CLIENT_ALERT_RECORD, 24),
        (SERVER_ALERT_RECORD, 24),
    ]:
        assert len(record) == total
        assert int.from_bytes(record[3:5], "big") == total - 5
    assert CLIENT_HELLO_RECORD[11:43] == CLIENT_RANDOM


# --- key configurations -------------------------------------------------------------


def _traffic_secret_store() -> KeyStore:
    store = KeyStore()
    store.add(CLIENT_RANDOM, CLIENT_HANDSHAKE_TRAFFIC_SECRET, RFC_CLIENT_HS_TRAFFIC)
    store.add(CLIENT_RANDOM, SERVER_HANDSHAKE_TRAFFIC_SECRET, RFC_SERVER_HS_TRAFFIC)
    store.add(CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, RFC_CLIENT_AP_TRAFFIC)
    store.add(CLIENT_RANDOM, SERVER_TRAFFIC_SECRET_0, RFC_SERVER_AP_TRAFFIC)
    return store


def _handshake_secret_store() -> KeyStore:
    store = KeyStore()
    store.add(CLIENT_RANDOM, HANDSHAKE_SECRET, RFC_HANDSHAKE_SECRET)
    return store


def _flip(secret: bytes) -> bytes:
    return bytes([secret[0] ^ 0x01]) + secret[1:]


def _wrong_handshake_secret_store() -> KeyStore:
    store = KeyStore()
    store.add(CLIENT_RANDOM, HANDSHAKE_SECRET, _flip(RFC_HANDSHAKE_SECRET))
    return store


def _wrong_traffic_secret_store() -> KeyStore:
    store = KeyStore()
    store.add(CLIENT_RANDOM, CLIENT_HANDSHAKE_TRAFFIC_SECRET, _flip(RFC_CLIENT_HS_TRAFFIC))
    store.add(CLIENT_RANDOM, SERVER_HANDSHAKE_TRAFFIC_SECRET, _flip(RFC_SERVER_HS_TRAFFIC))
    store.add(CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, _flip(RFC_CLIENT_AP_TRAFFIC))
    store.add(CLIENT_RANDOM, SERVER_TRAFFIC_SECRET_0, _flip(RFC_SERVER_AP_TRAFFIC))
    return store


GOOD_STORES = {
    "traffic_secrets": _traffic_secret_store,
    "handshake_secret_only": _handshake_secret_store,
}

# Known bugs in bridge/tls/connection.py, pinned as strict xfails: once fixed these
# tests XPASS and fail, so the marker must be removed together with the fix.
BUG_SHORT_FIRST_SEGMENT = pytest.mark.skipif(
    False,
    reason="bug: TlsConnection._check_stream_start() needs >= 6 bytes in the first receive() "
    "call of a direction; a shorter first segment stops the direction as NOT_TLS",
)
BUG_TRANSCRIPT_ORDER = pytest.mark.skipif(
    False,
    reason="bug: with only HANDSHAKE_SECRET, the client Finished can be decrypted (and appended "
    "to the transcript) before the server flight, so the derived application secrets are wrong",
)


def _good_stores(*marks_for_handshake_secret_only):
    return [
        pytest.param(_traffic_secret_store, id="traffic_secrets"),
        pytest.param(_handshake_secret_store, id="handshake_secret_only", marks=list(marks_for_handshake_secret_only)),
    ]

WRONG_STORES = {
    "wrong_handshake_secret": _wrong_handshake_secret_store,
    "wrong_traffic_secrets": _wrong_traffic_secret_store,
}


def _connection(store: KeyStore) -> TlsConnection:
    """A connection given what the store has for RFC 8448's client random (as the engine gives it)."""
    conn = TlsConnection()
    secrets = store.lookup(CLIENT_RANDOM)
    if secrets is not None:
        conn.provide(secrets.secrets)
    return conn


def _run(store: KeyStore, flights: list[tuple[Direction, bytes]]) -> tuple[TlsConnection, list[ApplicationData]]:
    conn = _connection(store)
    events: list[ApplicationData] = []
    for direction, data in flights:
        events += conn.receive(direction, data)
    return conn, events


def _byte_at_a_time(flights: list[tuple[Direction, bytes]]) -> list[tuple[Direction, bytes]]:
    return [(direction, data[i : i + 1]) for direction, data in flights for i in range(len(data))]


def _assert_decrypted(conn: TlsConnection, events: list[ApplicationData], *, ordered: bool = True) -> None:
    assert conn.status() == (Status.DECRYPTED, "")
    assert conn.suite is not None and conn.suite.code == 0x1301
    assert conn.version == 0x0304
    assert conn.client_random == CLIENT_RANDOM
    # Concatenate per direction: record boundaries are not part of the contract.
    client_data = b"".join(e.data for e in events if e.direction is C2S)
    server_data = b"".join(e.data for e in events if e.direction is S2C)
    assert client_data == APPLICATION_PAYLOAD
    assert server_data == APPLICATION_PAYLOAD
    if ordered:  # fed in wire order, the events come out in wire order
        assert [e.direction for e in events] == [C2S, S2C]
    else:
        assert sorted(e.direction for e in events) == [C2S, S2C]
    assert len(conn.certificates) == 1
    certificate = conn.certificates[0]
    assert len(certificate) == 432
    assert certificate.startswith(CERTIFICATE_DER_START)
    assert certificate.endswith(CERTIFICATE_DER_END)
    assert conn.session_tickets == 1
    client, server = conn.directions
    assert client.alerts == 1 and server.alerts == 1  # the close_notify of each side
    assert client.skipped_records == 0 and server.skipped_records == 0
    assert conn.pending_bytes == 0
    assert not conn.waiting_for_keys


@pytest.mark.parametrize("make_store", GOOD_STORES.values(), ids=GOOD_STORES.keys())
def test_rfc8448_decrypts(make_store) -> None:
    conn, events = _run(make_store(), FLIGHTS)
    _assert_decrypted(conn, events)


@pytest.mark.parametrize("make_store", GOOD_STORES.values(), ids=GOOD_STORES.keys())
def test_rfc8448_events_arrive_with_their_records(make_store) -> None:
    """Application data comes out of the receive() call that carried its record."""
    conn = _connection(make_store())
    out = [conn.receive(direction, data) for direction, data in FLIGHTS]
    assert out[:4] == [[], [], [], []]
    assert out[4] == [ApplicationData(C2S, APPLICATION_PAYLOAD)]
    assert out[5] == [ApplicationData(S2C, APPLICATION_PAYLOAD)]
    assert out[6:] == [[], []]


@BUG_SHORT_FIRST_SEGMENT
@pytest.mark.parametrize("make_store", GOOD_STORES.values(), ids=GOOD_STORES.keys())
def test_rfc8448_one_byte_segments(make_store) -> None:
    """Every record split across 1-byte segments, same results."""
    conn, events = _run(make_store(), _byte_at_a_time(FLIGHTS))
    _assert_decrypted(conn, events)


@pytest.mark.parametrize("make_store", GOOD_STORES.values(), ids=GOOD_STORES.keys())
def test_rfc8448_split_after_first_six_bytes(make_store) -> None:
    """Records split across segments, the first segment of each direction >= 6 bytes."""
    flights: list[tuple[Direction, bytes]] = []
    started: set[Direction] = set()
    for direction, data in FLIGHTS:
        start = 0
        if direction not in started:
            started.add(direction)
            flights.append((direction, data[:6]))
            start = 6
        flights += [(direction, data[i : i + 1]) for i in range(start, len(data))]
    conn, events = _run(make_store(), flights)
    _assert_decrypted(conn, events)


@pytest.mark.parametrize("make_store", GOOD_STORES.values(), ids=GOOD_STORES.keys())
def test_rfc8448_each_direction_in_one_segment(make_store) -> None:
    """Each direction's whole stream at once (client first, then server): the client's
    protected records arrive before the server's handshake and must wait for it."""
    client = b"".join(data for direction, data in FLIGHTS if direction is C2S)
    server = b"".join(data for direction, data in FLIGHTS if direction is S2C)
    conn, events = _run(make_store(), [(C2S, client), (S2C, server)])
    _assert_decrypted_any_order(conn, events)


def _assert_decrypted_any_order(conn: TlsConnection, events: list[ApplicationData]) -> None:
    assert conn.status() == (Status.DECRYPTED, "")
    assert b"".join(e.data for e in events if e.direction is C2S) == APPLICATION_PAYLOAD
    assert b"".join(e.data for e in events if e.direction is S2C) == APPLICATION_PAYLOAD
    assert len(conn.certificates) == 1


@pytest.mark.parametrize("make_store", _good_stores(BUG_TRANSCRIPT_ORDER))
def test_rfc8448_keys_arrive_late(make_store) -> None:
    """Records first, secrets afterwards: retry() decrypts what waited."""
    conn = TlsConnection()
    events: list[ApplicationData] = []
    for direction, data in FLIGHTS:
        events += conn.receive(direction, data)
    assert events == []
    assert conn.status()[0] is Status.NO_KEYS
    assert conn.waiting_for_keys
    source = make_store().lookup(CLIENT_RANDOM)
    assert source is not None
    conn.provide(source.secrets)
    events += conn.retry()
    _assert_decrypted(conn, events, ordered=False)  # retry() need not keep cross-direction order


@pytest.mark.parametrize("make_store", WRONG_STORES.values(), ids=WRONG_STORES.keys())
@pytest.mark.parametrize("segmenting", ["records", pytest.param("one_byte", marks=BUG_SHORT_FIRST_SEGMENT)])
def test_rfc8448_wrong_secret(make_store, segmenting: str) -> None:
    flights = FLIGHTS if segmenting == "records" else _byte_at_a_time(FLIGHTS)
    conn, events = _run(make_store(), flights)
    assert events == []
    assert conn.status()[0] is Status.WRONG_KEY
    assert conn.certificates == []


@pytest.mark.parametrize("make_store", _good_stores(BUG_TRANSCRIPT_ORDER))
def test_rfc8448_keys_arrive_between_server_flight_and_client_finished(make_store) -> None:
    """The server flight waits for keys; the keys arrive (no retry() call yet) before the
    client's Finished, whose receive() then decrypts it and drains the server flight."""
    conn = TlsConnection()
    events = conn.receive(C2S, CLIENT_HELLO_RECORD)
    events += conn.receive(S2C, SERVER_HELLO_RECORD + SERVER_FLIGHT_RECORD)
    assert conn.waiting_for_keys
    source = make_store().lookup(CLIENT_RANDOM)
    assert source is not None
    conn.provide(source.secrets)
    for direction, data in FLIGHTS[2:]:
        events += conn.receive(direction, data)
    _assert_decrypted(conn, events)


@pytest.mark.parametrize("make_store", _good_stores(BUG_TRANSCRIPT_ORDER))
def test_rfc8448_client_finished_seen_before_server_flight(make_store) -> None:
    """Cross-direction reordering at the monitor: the client's Finished is delivered
    after the ServerHello but before the server's encrypted flight."""
    flights = [
        (C2S, CLIENT_HELLO_RECORD),
        (S2C, SERVER_HELLO_RECORD),
        (C2S, CLIENT_FINISHED_RECORD),
        (S2C, SERVER_FLIGHT_RECORD),
        *FLIGHTS[3:],
    ]
    conn, events = _run(make_store(), flights)
    _assert_decrypted_any_order(conn, events)


def test_rfc8448_no_keys() -> None:
    conn, events = _run(KeyStore(), FLIGHTS)
    assert events == []
    assert conn.status()[0] is Status.NO_KEYS
    assert conn.suite is not None and conn.suite.code == 0x1301


# --- state sized for the common case ----------------------------------------------------------------


def test_a_whole_client_hello_makes_no_record_layer():
    """RFC 8448's ClientHello in one piece: parsed straight from the stream bytes;
    byte by byte it goes through the record layer; both give the same hello."""
    whole = TlsConnection()
    assert whole.receive(C2S, CLIENT_HELLO_RECORD) == []
    assert tuple(whole._layers) == (None, None) and whole.client_random == CLIENT_RANDOM
    assert whole.only_client_hello and whole.direction_counts(C2S) == (1, 0, 0, 0, 0)
    assert whole.held_bytes == whole.client_hello.size == len(CLIENT_HELLO_RECORD) - 5
    pieces = TlsConnection()
    for i in range(len(CLIENT_HELLO_RECORD)):
        pieces.receive(C2S, CLIENT_HELLO_RECORD[i : i + 1])
    assert pieces._layers[0] is not None and pieces.client_random == CLIENT_RANDOM
    for hello in (whole.client_hello, pieces.client_hello):
        assert hello.sni == "server" and hello.cipher_suites == [0x1301, 0x1303, 0x1302]
        assert hello.supported_versions == [0x0304]
    assert whole.directions[C2S].records == pieces.directions[C2S].records == 1  # made on demand, counted


@pytest.mark.parametrize("make_store", GOOD_STORES.values(), ids=GOOD_STORES.keys())
def test_the_fast_path_keeps_the_transcript(make_store) -> None:
    """The RFC's flights begin with the whole ClientHello record (taken without a
    record layer): the handshake and the application data decrypt as ever."""
    assert FLIGHTS[0] == (C2S, CLIENT_HELLO_RECORD)
    conn, events = _run(make_store(), FLIGHTS)
    _assert_decrypted(conn, events)
    assert not conn.only_client_hello


def test_a_hello_not_alone_in_its_record_goes_through_the_record_layer():
    conn = TlsConnection()
    conn.receive(C2S, CLIENT_HELLO_RECORD + b"\x15\x03\x03\x00\x02\x01\x00")  # the hello, then an alert
    assert conn._layers[0] is not None and conn.client_random == CLIENT_RANDOM
    assert conn.direction_counts(C2S)[0] == 2 and not conn.only_client_hello


def test_the_steady_state_opens_rfc8448_application_data_and_declines_its_close_notify() -> None:
    """A driver that frames records itself (bridge.engine.lanes): the opener, the bytes
    handed over, the records reported opened — the connection ends as if it had read them."""
    conn = _connection(_traffic_secret_store())
    assert conn.steady_opener(C2S) is None  # no handshake yet
    for direction, data in FLIGHTS[:4]:
        conn.receive(direction, data)
    steady = conn.steady_opener(C2S)
    assert steady is not None
    opener, trailer = steady
    assert trailer == 1  # TLS 1.3: the inner content type follows the plaintext
    # the driver takes over from a record Python had begun framing
    record, alert = CLIENT_APPLICATION_DATA_RECORD, CLIENT_ALERT_RECORD
    assert not conn.receive(C2S, record[:10])
    assert conn.framing(C2S) == record[:10]
    conn.hand_over_framing(C2S)
    assert conn.framing(C2S) == b""
    opened = opener(memoryview(record)[:5], memoryview(record)[5:])
    plaintext = opened[:len(opened) - trailer]
    assert plaintext == APPLICATION_PAYLOAD
    conn.opened(C2S, [plaintext], len(record))
    assert opener(alert[:5], alert[5:]) is None  # a close_notify: the record layer's
    assert conn.receive(C2S, alert) == []
    for direction, data in FLIGHTS[5:]:
        if direction is S2C:
            conn.receive(direction, data)
    reference, _ = _run(_traffic_secret_store(), FLIGHTS)  # read by the connection alone
    for direction in (C2S, S2C):
        assert conn.direction_counts(direction) == reference.direction_counts(direction)
        assert conn.directions[direction].application_bytes == reference.directions[direction].application_bytes == 50
    assert conn.status() == (Status.DECRYPTED, "")


def test_no_steady_state_while_records_wait_for_secrets() -> None:
    conn = TlsConnection()  # no secrets at all
    for direction, data in FLIGHTS[:5]:
        conn.receive(direction, data)
    assert conn.waiting_for_keys
    assert conn.steady_opener(C2S) is None and conn.steady_opener(S2C) is None
