"""One TLS connection seen passively: records of both directions in, plaintext out.

Sans-I/O.  The caller feeds each direction's reassembled TCP bytes with
:meth:`TlsConnection.receive`; the connection frames records, follows the
handshake (both TLS 1.2 and 1.3), installs record keys as soon as the secrets and
the handshake allow, authenticates and decrypts every protected record, and
returns the application data as :class:`ApplicationData` events.

Secrets are given to the connection by its owner (the engine, from the key
store): :meth:`TlsConnection.provide` for secrets by label,
:meth:`TlsConnection.provide_handle` for those a key log names otherwise; the
owner learns what to look up from :attr:`TlsConnection.client_random` and
:attr:`TlsConnection.key_handles`.  Secrets may come after the records:
protected records then wait in a bounded queue (:mod:`bridge.tls.record_layer`),
and :meth:`TlsConnection.retry` decrypts them.

Phases and their transitions are :mod:`bridge.tls.state`'s; the per-direction
framing, protection and waiting queue are :mod:`bridge.tls.record_layer`'s.

TLS 1.2 master secrets come from a ``CLIENT_RANDOM`` secret, the session cache,
an ``RSA Session-ID:`` secret (by the ServerHello's session ID), or a
pre-master secret (``PMS_CLIENT_RANDOM``, or an ``RSA`` line found by the
ClientKeyExchange's encrypted pre-master secret) with RFC 5246 §8.1's
derivation, or RFC 7627's extended master secret over the session hash.
A TLS 1.3 direction whose first application traffic secret is unknown but a
later epoch's (``*_TRAFFIC_SECRET_N``) is given skips the records sent before
that KeyUpdate (each is tried with the later key; AEAD tells them apart).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bridge.errors import BridgeError, DecryptionError, RecordDecodeError, UnsupportedError
from bridge.secrets import (
    CLIENT_EARLY_TRAFFIC_SECRET,
    CLIENT_HANDSHAKE_TRAFFIC_SECRET,
    CLIENT_RANDOM,
    CLIENT_TRAFFIC_SECRET_0,
    HANDSHAKE_SECRET,
    PMS_CLIENT_RANDOM,
    SERVER_HANDSHAKE_TRAFFIC_SECRET,
    SERVER_TRAFFIC_SECRET_0,
    rsa_handle,
    session_handle,
    traffic_secret_epoch,
)
from bridge.tls import handshake as hs
from bridge.tls.ciphersuites import CipherSuite, cipher_suite, cipher_suite_name
from bridge.tls.keyschedule import (
    application_traffic_secrets,
    handshake_traffic_secrets,
    key_block12,
    master_secret12,
    next_traffic_secret,
)
from bridge.tls.protection import RecordDecryptor12, RecordDecryptor13
from bridge.tls.record_layer import KeyUpdateGap, PendingBudget, RecordLayer
from bridge.tls.records import (
    CONTENT_ALERT,
    CONTENT_APPLICATION_DATA,
    CONTENT_CHANGE_CIPHER_SPEC,
    CONTENT_HANDSHAKE,
    CONTENT_HEARTBEAT,
    MAX_RECORD_LENGTH,
    Record,
)
from bridge.tls.sessions import SessionCache
from bridge.tls.state import Direction, Move, Phase, entering_protection, must_wait, tls13_protected


#: A direction's record layer with empty buffers, in bytes (1,209 by tracemalloc on
#: CPython 3.11, rounded up).
RECORD_LAYER_BYTES = 1280

_NO_LAYERS = (None, None)

#: What :meth:`TlsConnection.receive` returns when nothing changed.
NOTHING: tuple = ()


@dataclass(frozen=True, slots=True)
class ApplicationData:
    direction: Direction
    data: bytes
    #: When the record that carried it was complete on the wire.
    timestamp_ns: int = 0


class Status(enum.Enum):
    DECRYPTED = "decrypted"
    NO_KEYS = "no_keys"
    WRONG_KEY = "wrong_key"
    GAP = "gap"
    NOT_TLS = "not_tls"
    UNSUPPORTED = "unsupported"
    PARTIAL = "partial"
    NO_HANDSHAKE = "no_handshake"


class _WaitForKeys(Exception):
    """Internal: the record cannot be processed until secrets arrive."""


class _SkipRecord(Exception):
    """Internal: the record cannot be decrypted, by design (reason in args)."""


_SIDE = {0: "CLIENT", 1: "SERVER"}


class TlsConnection:
    """Passive TLS 1.2/1.3 decryption of one connection.

    Sized for the common case, a connection that never gets past its hellos (a
    scan, a flood, a server that does not answer): a direction's record layer
    (framing buffer, handshake reassembly, queue of records waiting for keys,
    cipher) is made when that direction first needs one, and a ClientHello that
    arrives as one whole record is parsed straight from the stream bytes without
    one; the secrets' dictionaries exist once secrets are given.  Such a
    connection holds its ClientHello's bytes (once: the transcript and the parsed
    hello share them) and a few counters."""

    __slots__ = (
        "_secrets", "_handle_secrets", "_clock", "_on_held", "_sessions", "_budget", "_max_pending", "_layers",
        "_hello_records", "client_hello", "server_hello", "hello_retry", "suite", "version", "resumed",
        "_certificates", "session_tickets", "early_data_offered", "early_data_accepted", "failure", "_transcript",
        "_hello_hash", "_server_finished_hash", "_master_secret", "_pending_ticket", "_arrivals",
        "_client_key_exchange", "_session_hash",
    )

    def __init__(
        self,
        *,
        sessions: SessionCache | None = None,
        budget: PendingBudget | None = None,
        max_pending_per_direction: int = 8 * 1024 * 1024,
        clock: Callable[[], float] | None = None,
        on_held: Callable[[float], None] | None = None,
    ) -> None:
        #: The connection's secrets by label, and those found by a handle (given by the owner).
        self._secrets: dict[str, bytes] | None = None
        self._handle_secrets: dict[bytes, bytes] | None = None
        #: With both: each record that waited for secrets and was then decrypted
        #: reports how long it waited (``on_held(seconds)``).
        self._clock = clock
        self._on_held = on_held
        self._sessions = sessions if sessions is not None else SessionCache()
        self._budget = budget if budget is not None else PendingBudget()
        self._max_pending = max_pending_per_direction
        #: Each direction's record layer, made when first needed (:meth:`_layer`).
        self._layers: list[RecordLayer | None] | tuple[None, None] = _NO_LAYERS
        #: Client records taken before its record layer existed (a ClientHello in one record).
        self._hello_records = 0
        self.client_hello: hs.ClientHello | None = None
        self.server_hello: hs.ServerHello | None = None
        self.hello_retry = False
        self.suite: CipherSuite | None = None
        self.version: int | None = None
        self.resumed = False
        self._certificates: list[bytes] | None = None
        self.session_tickets = 0
        self.early_data_offered = False
        self.early_data_accepted: bool | None = None
        self.failure: tuple[Status, str] | None = None
        self._transcript: list[bytes] = []
        self._hello_hash: bytes | None = None
        self._server_finished_hash: bytes | None = None
        self._master_secret: bytes | None = None
        self._pending_ticket = b""
        self._arrivals = 0
        #: TLS 1.2: the ClientKeyExchange body, and RFC 7627's session hash
        #: (Hash(ClientHello ... ClientKeyExchange)) computed when it was seen.
        self._client_key_exchange: bytes | None = None
        self._session_hash: bytes | None = None

    def __repr__(self) -> str:
        return f"TlsConnection(version={hs.version_name(self.version)}, suite={self.suite_name})"

    # --- public facts ----------------------------------------------------------

    @property
    def directions(self) -> tuple[RecordLayer, RecordLayer]:
        """Both directions' record layers (made if they were not yet)."""
        return self._layer(Direction.C2S), self._layer(Direction.S2C)

    def _layer(self, direction: Direction | int) -> RecordLayer:
        layers = self._layers
        layer = layers[direction]
        if layer is None:
            if layers is _NO_LAYERS:
                self._layers = layers = [None, None]
            layer = layers[direction] = RecordLayer()  # type: ignore[index]
            if direction == Direction.C2S and self._hello_records:
                layer.records = self._hello_records
                layer.started = True
        return layer

    def record_boundary(self, direction: Direction) -> tuple[bytes, int] | None:
        """Where the direction's current record ends (:meth:`RecordReader.boundary`),
        for a driver that delivers its bytes in chunks ending at record ends
        (:mod:`bridge.engine.lanes`); None before its stream started or once stopped."""
        layer = self._layers[direction]
        if layer is None or not layer.started or layer.phase is Phase.STOPPED:
            return None
        return layer.reader.boundary()

    def steady_opener(self, direction: Direction) -> tuple[Callable[[bytes, bytes], bytes | None], int] | None:
        """The direction's record opener while it is in the steady state — both hellos
        seen, its keys in place (an AEAD suite), no record waiting in either
        direction: the records of application data that come next decrypt with
        these keys and change nothing else — else None.  With it, how many bytes
        at the end of what it returns are not plaintext (its ``TRAILER``: TLS 1.3's
        inner content type).  A driver that frames
        records itself (:mod:`bridge.engine.lanes`) takes over the bytes framed so
        far (:meth:`framing`, :meth:`hand_over_framing`), opens the records with
        it and reports them with :meth:`opened`; a record the opener declines
        (None) comes back here as bytes, with what follows."""
        layer, other = self._layers[direction], self._layers[1 - direction]
        if layer is None or layer.phase is not Phase.ENCRYPTED or layer.catching_up or layer.pending \
                or self.client_hello is None or self.server_hello is None or (other is not None and other.pending):
            return None
        decryptor = layer.decryptor
        if decryptor is None or (decryptor.__class__ is RecordDecryptor12 and not decryptor.suite.is_aead):
            return None
        return decryptor.open_application_data, decryptor.TRAILER

    def framing(self, direction: Direction) -> bytes:
        """The bytes of the direction's record not yet complete (b"" at a record boundary)."""
        layer = self._layers[direction]
        return layer.reader.pending_bytes() if layer is not None else b""

    def hand_over_framing(self, direction: Direction) -> None:
        """The driver frames from :meth:`framing`'s bytes on: they leave the record layer."""
        self._layers[direction].reader.hand_over()  # type: ignore[union-attr]

    def opened(self, direction: Direction, plaintexts: Sequence[bytes], size: int) -> None:
        """Whole records of application data, ``size`` stream bytes from where the
        direction's stream is, were opened with :meth:`steady_opener`'s opener:
        counted as :meth:`receive` counts records (their plaintexts are the
        caller's to deliver, in order)."""
        layer = self._layers[direction]
        count = len(plaintexts)
        layer.records += count
        layer.decrypted_records += count
        layer.application_bytes += sum(map(len, plaintexts))
        self._arrivals += count
        layer.reader.skip(size)

    def direction_counts(self, direction: Direction) -> tuple[int, int, int, int, int]:
        """(records, decrypted, skipped, alerts, key updates) of a direction, without
        making its record layer."""
        layer = self._layers[direction]
        if layer is None:
            return (self._hello_records if direction == Direction.C2S else 0), 0, 0, 0, 0
        return layer.records, layer.decrypted_records, layer.skipped_records, layer.alerts, layer.key_updates

    @property
    def only_client_hello(self) -> bool:
        """The client sent its ClientHello and nothing more (or nothing at all) and
        nothing was decrypted: a handshake that never completed (a scan, a flood)."""
        if self.hello_retry:
            return False
        server = self._layers[Direction.S2C]
        if server is not None and server.decrypted_records:
            return False
        layer = self._layers[Direction.C2S]
        if layer is None:
            return True
        if self.client_hello is None:
            return not layer.started and not layer.prefix  # nothing sent
        return layer.records <= 1 and not layer.decrypted_records and not layer.reader.buffered

    @property
    def certificates(self) -> list[bytes]:
        """The server's certificate chain (DER, leaf first), as sent; decoded only
        for the flow log (:func:`bridge.tls.certificates.describe_chain`)."""
        return self._certificates if self._certificates is not None else []

    @property
    def client_random(self) -> bytes | None:
        return self.client_hello.random if self.client_hello else None

    @property
    def suite_name(self) -> str | None:
        if self.server_hello is None:
            return None
        return cipher_suite_name(self.server_hello.cipher_suite)

    @property
    def stopped(self) -> bool:
        """Nothing more can be decrypted in either direction."""
        client, server = self._layers
        return (client is not None and client.phase is Phase.STOPPED
                and server is not None and server.phase is Phase.STOPPED)

    @property
    def waiting_for_keys(self) -> bool:
        """Records wait for secrets (or for the other direction's hello)."""
        client, server = self._layers
        return bool((client is not None and client.pending) or (server is not None and server.pending))

    @property
    def pending_bytes(self) -> int:
        return sum(layer.pending_bytes for layer in self._layers if layer is not None)

    @property
    def held_bytes(self) -> int:
        """About how many bytes this connection holds beyond its fixed size: its
        ClientHello, each record layer made (:data:`RECORD_LAYER_BYTES`), records
        being framed or waiting for secrets."""
        total = self.client_hello.size if self.client_hello is not None else 0
        for layer in self._layers:
            if layer is not None:
                total += RECORD_LAYER_BYTES + layer.pending_bytes + layer.reader.buffered
        return total

    @property
    def key_handles(self) -> tuple[bytes, ...]:
        """Handles under which a key log may give this connection's TLS 1.2 secrets
        (an ``RSA`` line by its encrypted pre-master, an ``RSA Session-ID:`` line)."""
        handles = []
        encrypted = self._encrypted_pre_master()
        if encrypted is not None:
            handles.append(rsa_handle(encrypted))
        if self.server_hello is not None and self.server_hello.session_id and self.version == hs.TLS12:
            handles.append(session_handle(self.server_hello.session_id))
        return tuple(handles)

    @property
    def connection_handles(self) -> tuple[bytes, ...]:
        """Handles of secrets that belong to this connection alone (forgotten with it);
        a session ID's master secret stays for resumptions."""
        encrypted = self._encrypted_pre_master()
        return (rsa_handle(encrypted),) if encrypted is not None else ()

    @property
    def decrypted_any(self) -> bool:
        return any(layer.decrypted_records for layer in self._layers if layer is not None)

    # --- secrets ---------------------------------------------------------------

    def provide(self, secrets: Mapping[str, bytes]) -> None:
        """Secrets of this connection by RFC 9850 label (its client random's);
        call :meth:`retry` after, for the records that waited for them."""
        if self._secrets is None:
            self._secrets = {}
        self._secrets.update(secrets)

    def provide_handle(self, handle: bytes, secret: bytes) -> None:
        """A secret a key log names by one of :attr:`key_handles`."""
        if self._handle_secrets is None:
            self._handle_secrets = {}
        self._handle_secrets[handle] = secret

    # --- input -----------------------------------------------------------------

    def receive(self, direction: Direction, data: bytes, timestamp_ns: int = 0) -> Sequence[ApplicationData]:
        """Reassembled stream bytes of one direction, seen at ``timestamp_ns``.

        Returns :data:`NOTHING` (identity-comparable) when the bytes only extended
        a record still incomplete: nothing about the connection changed."""
        state = self._layers[direction]
        if state is None:
            if direction == Direction.C2S and self.client_hello is None:
                events = self._whole_client_hello(data)
                if events is not None:
                    return events
            state = self._layer(direction)
        if state.started:
            if state.in_middle_of_record(len(data)) and state.phase is not Phase.STOPPED:
                state.buffer_more(data)  # the hot path: the middle of a record
                return NOTHING
        if state.phase is Phase.STOPPED:
            return NOTHING
        if not state.started:
            # Decide what the stream is from its first 6 bytes, however it was segmented.
            state.prefix += data
            if len(state.prefix) < 6:
                return []
            data, state.prefix = bytes(state.prefix), bytearray()
            state.started = True
            if not self._check_stream_start(direction, data):
                return []
        try:
            records = state.feed(data)
        except RecordDecodeError as exc:
            self._stop(direction, Status.NOT_TLS if state.records == 0 else Status.PARTIAL, str(exc))
            return []
        if not records:
            return []
        events: list[ApplicationData] = []
        for record in records:
            state.records += 1
            self._arrivals += 1
            record.arrival = self._arrivals
            record.timestamp_ns = timestamp_ns
            self._accept(direction, record, events)
            if state.phase is Phase.STOPPED:
                break
        other = self._layers[1 - direction]
        if other is not None and other.pending:
            # This direction's handshake may have unblocked the other one.
            self._drain(events)
        return events

    def _whole_client_hello(self, data: bytes) -> list[ApplicationData] | None:
        """The client's first bytes are one handshake record holding exactly one
        ClientHello (the common case): parsed from them, no record layer made.
        None when they are anything else (the record layer takes them)."""
        size = len(data)
        if size < 9 or data[0] != CONTENT_HANDSHAKE or data[1] != 3 or data[5] != hs.CLIENT_HELLO:
            return None
        length = (data[3] << 8) | data[4]
        if length + 5 != size or length > MAX_RECORD_LENGTH or ((data[6] << 16) | (data[7] << 8) | data[8]) + 4 != length:
            return None
        raw = bytes(data[5:])
        try:
            hello = hs.parse_client_hello(raw, 4)
        except RecordDecodeError:
            return None  # the record layer reports it
        self._arrivals += 1
        self._hello_records = 1
        self._transcript.append(raw)
        self.client_hello = hello
        self.early_data_offered = hello.offers_early_data
        events: list[ApplicationData] = []
        server = self._layers[Direction.S2C]
        if server is not None and server.pending:
            self._drain(events)
        return events

    def gap(self, direction: Direction, size: int) -> None:
        """Bytes are missing from a direction: nothing after them can be framed."""
        state = self._layer(direction)
        if state.phase is not Phase.STOPPED:
            self._stop(direction, Status.GAP, f"{size} bytes missing in {direction.name.lower()}; later records skipped")

    def retry(self) -> list[ApplicationData]:
        """Secrets may have arrived: decrypt what waits."""
        events: list[ApplicationData] = []
        self._drain(events)
        return events

    def expire_pending(self, reason: str) -> None:
        """Give up waiting for secrets (or for the other direction's hello)."""
        status = Status.NO_KEYS
        if self.server_hello is None or self.client_hello is None:
            missing = "ClientHello" if self.client_hello is None else "ServerHello"
            status, reason = Status.PARTIAL, f"handshake incomplete: no {missing} seen"
        for direction in Direction:
            state = self._layers[direction]
            if state is not None and state.pending:
                state.skipped_records += state.release(self._budget)
                self._stop(direction, status, reason)

    def release(self) -> None:
        """Return buffered bytes to the shared budget (connection is done)."""
        for layer in self._layers:
            if layer is not None:
                layer.release(self._budget)

    # --- status ----------------------------------------------------------------

    def status(self) -> tuple[Status, str]:
        if self.failure is not None:
            return self.failure
        if self.client_hello is None and self.server_hello is None:
            return Status.NOT_TLS, "no TLS handshake in the stream"
        layers = [layer for layer in self._layers if layer is not None]
        if any(state.pending for state in layers):
            return Status.NO_KEYS, "secrets not available for the client random"
        if self.suite is None:
            return Status.PARTIAL, "handshake incomplete"
        for direction in Direction:
            layer = self._layers[direction]
            leftover = layer.reader.buffered if layer is not None else 0
            if leftover:
                return Status.PARTIAL, f"stream ended inside a record: {leftover} bytes of {direction.name.lower()} not decrypted"
        undecrypted = sum(state.skipped_records for state in layers)
        if undecrypted:
            reasons = sorted({state.skip_reason for state in layers if state.skip_reason})
            return Status.PARTIAL, f"{undecrypted} records not decrypted" + (f": {'; '.join(reasons)}" if reasons else "")
        return Status.DECRYPTED, ""

    # --- record dispatch -------------------------------------------------------

    def _check_stream_start(self, direction: Direction, data: bytes) -> bool:
        if len(data) >= 3 and data[0] & 0x80 and data[2] == 1:
            self._stop(direction, Status.UNSUPPORTED, "SSLv2-style ClientHello")
            return False
        if len(data) >= 6 and data[0] == CONTENT_HANDSHAKE and data[1] == 3:
            return True
        if len(data) >= 3 and data[0] in (CONTENT_APPLICATION_DATA, CONTENT_ALERT, CONTENT_CHANGE_CIPHER_SPEC) and data[1] == 3:
            self._stop(direction, Status.NO_HANDSHAKE, "connection picked up mid-stream: no handshake seen")
            return False
        self._stop(direction, Status.NOT_TLS, "stream does not start with a TLS handshake record")
        return False

    def _accept(self, direction: Direction, record: Record, events: list[ApplicationData]) -> None:
        state = self._layer(direction)
        if state.pending:
            self._enqueue(direction, record)
            return
        try:
            self._process(direction, record, events)
        except _WaitForKeys:
            self._enqueue(direction, record)
        except (_SkipRecord, KeyUpdateGap) as exc:
            state.skipped_records += 1
            state.skip_reason = _skip_reason(direction, exc)
        except DecryptionError as exc:
            state.skipped_records += 1
            self._stop(direction, Status.WRONG_KEY, f"{direction.name.lower()} {exc}")
        except UnsupportedError as exc:
            self._stop(direction, Status.UNSUPPORTED, str(exc))
        except RecordDecodeError as exc:
            self._stop(direction, Status.PARTIAL, f"{direction.name.lower()}: {exc}")

    def _enqueue(self, direction: Direction, record: Record) -> None:
        state = self._layer(direction)
        if self._clock is not None:
            record.held_at = self._clock()
        if not state.enqueue(record, self._budget, self._max_pending):
            state.skipped_records += state.release(self._budget) + 1
            self._stop(direction, Status.NO_KEYS, "buffer for records waiting for secrets is full")

    def _drain(self, events: list[ApplicationData]) -> None:
        """Process waiting records of both directions in their order of arrival
        (a request before its response), as far as secrets and the handshake allow.
        A blocked direction waits while the other one goes on; progress in one
        direction may unblock the other."""
        blocked = [False, False]
        while True:
            layers = self._layers
            candidates = [
                d for d in Direction
                if not blocked[d] and layers[d] is not None and layers[d].pending  # type: ignore[union-attr]
                and layers[d].phase is not Phase.STOPPED  # type: ignore[union-attr]
            ]
            if not candidates:
                return
            direction = min(candidates, key=lambda d: layers[d].pending[0].arrival)  # type: ignore[union-attr]
            if self._drain_one(direction, events):
                blocked[1 - direction] = False
            else:
                blocked[direction] = True

    def _drain_one(self, direction: Direction, events: list[ApplicationData]) -> bool:
        """Process the direction's oldest waiting record; False if it must wait on."""
        state = self._layer(direction)
        record = state.pending[0]
        decrypted = state.decrypted_records
        try:
            self._process(direction, record, events)
        except _WaitForKeys:
            return False
        except (_SkipRecord, KeyUpdateGap) as exc:
            state.skipped_records += 1
            state.skip_reason = _skip_reason(direction, exc)
        except DecryptionError as exc:
            state.skipped_records += 1
            state.pop(self._budget)
            self._stop(direction, Status.WRONG_KEY, f"{direction.name.lower()} {exc}")
            return True
        except (UnsupportedError, RecordDecodeError) as exc:
            state.pop(self._budget)
            status = Status.UNSUPPORTED if isinstance(exc, UnsupportedError) else Status.PARTIAL
            self._stop(direction, status, str(exc))
            return True
        state.pop(self._budget)
        if self._on_held is not None and state.decrypted_records > decrypted and self._clock is not None:
            self._on_held(self._clock() - record.held_at)
        return True

    def _stop(self, direction: Direction, status: Status, reason: str) -> None:
        state = self._layer(direction)
        state.move(Move.STOP)
        state.stop_reason = reason
        state.skipped_records += state.release(self._budget)
        if self.failure is None or _SEVERITY[status] > _SEVERITY[self.failure[0]]:
            self.failure = (status, reason)

    def _process(self, direction: Direction, record: Record, events: list[ApplicationData]) -> None:
        state = self._layer(direction)
        content_type = record.content_type
        if content_type == CONTENT_APPLICATION_DATA and state.phase is Phase.ENCRYPTED and state.decryptor is not None \
                and not state.catching_up and self.client_hello is not None and self.server_hello is not None:
            # The steady state (most records): both hellos seen, this direction's keys in
            # place: nothing can make the record wait (must_wait) or change how it decrypts.
            inner_type, plaintext = state.decryptor.decrypt(content_type, record.version, record.fragment)
        else:
            inner_type, plaintext = self._process_unsteady(direction, state, record)
            if inner_type < 0:
                return
        state.decrypted_records += 1
        if inner_type == CONTENT_APPLICATION_DATA:
            if plaintext:
                state.application_bytes += len(plaintext)
                events.append(ApplicationData(direction, plaintext, record.timestamp_ns))
        elif inner_type == CONTENT_HANDSHAKE:
            self._handshake_fragment(direction, plaintext)
        elif inner_type == CONTENT_ALERT:
            state.alerts += 1
        elif inner_type not in (CONTENT_HEARTBEAT, CONTENT_CHANGE_CIPHER_SPEC):
            raise RecordDecodeError(f"unknown inner content type {inner_type}")

    def _process_unsteady(self, direction: Direction, state: RecordLayer, record: Record) -> tuple[int, bytes]:
        """A record outside the steady state: it may wait for the other direction, be
        plaintext (handled here: inner type -1) or enter the protected phases."""
        content_type = record.content_type
        if self._out_of_order(direction, record):
            raise _WaitForKeys()
        if content_type == CONTENT_CHANGE_CIPHER_SPEC:
            self._change_cipher_spec(direction)
            return -1, b""
        if state.phase is Phase.PLAINTEXT and not tls13_protected(
                direction, content_type, version=self.version, early_data_offered=self.early_data_offered):
            if content_type == CONTENT_HANDSHAKE:
                self._handshake_fragment(direction, record.fragment)
            elif content_type == CONTENT_ALERT:
                state.alerts += 1
            elif content_type == CONTENT_APPLICATION_DATA:
                raise RecordDecodeError("application data before the handshake finished")
            return -1, b""
        return self._decrypt(direction, record)

    def _out_of_order(self, direction: Direction, record: Record) -> bool:
        """Must the record wait for the other direction (:func:`bridge.tls.state.must_wait`)?"""
        return must_wait(direction, record.content_type, client_hello=self.client_hello is not None,
                         server_hello=self.server_hello is not None, version=self.version,
                         server_finished=self._server_finished_hash is not None,
                         client_phase=self._layer(Direction.C2S).phase,
                         early_data_accepted=self.early_data_accepted)

    def _decrypt(self, direction: Direction, record: Record) -> tuple[int, bytes]:
        state = self._layer(direction)
        if state.phase is Phase.PLAINTEXT:
            move = entering_protection(direction, version=self.version, early_data_offered=self.early_data_offered,
                                       early_data_accepted=self.early_data_accepted)
            if move is None:
                raise RecordDecodeError("protected record before ChangeCipherSpec")
            state.move(move)
        if state.phase is Phase.EARLY:
            return self._decrypt_early(direction, record)
        if state.decryptor is None:
            self._install(direction)
            if state.decryptor is None:
                raise _WaitForKeys()
        return state.decrypt(record)

    def _decrypt_early(self, direction: Direction, record: Record) -> tuple[int, bytes]:
        """0-RTT: trial decryption as the server does it — the early traffic key
        first, then the handshake key (early data rejected or over)."""
        state = self._layer(direction)
        if state.decryptor is None:
            self._install(direction)
        if state.decryptor is not None:
            try:
                return state.decryptor.decrypt(record.content_type, record.version, record.fragment)
            except DecryptionError:
                pass
        if self.server_hello is None:
            raise _WaitForKeys()
        handshake_decryptor = self._handshake_decryptor(direction)
        if handshake_decryptor is None:
            raise _WaitForKeys()
        try:
            result = handshake_decryptor.decrypt(record.content_type, record.version, record.fragment)
        except DecryptionError:
            if state.decryptor is None:
                raise _SkipRecord("0-RTT data without CLIENT_EARLY_TRAFFIC_SECRET") from None
            raise
        state.move(Move.HANDSHAKE_KEYS)
        state.set_keys(handshake_decryptor)
        return result

    # --- handshake ---------------------------------------------------------------

    def _handshake_fragment(self, direction: Direction, fragment: bytes) -> None:
        state = self._layer(direction)
        for message in state.handshake.feed(fragment):
            self._handshake_message(direction, message)

    def _handshake_message(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        msg_type = message.msg_type
        handler = _HANDLERS.get(msg_type)
        if self._tracking_transcript() and msg_type not in (hs.NEW_SESSION_TICKET, hs.KEY_UPDATE):
            self._transcript.append(message.raw)
        if handler is not None:
            handler(self, direction, message)

    def _tracking_transcript(self) -> bool:
        if self.version == hs.TLS12:
            return self._session_hash is None and not self.resumed  # up to the ClientKeyExchange (RFC 7627)
        return self._server_finished_hash is None and self.version in (None, hs.TLS13)

    def _on_client_hello(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        hello = hs.parse_client_hello(message.raw, 4)
        if self.client_hello is not None and self.version == hs.TLS12 and self.suite is not None:
            # TLS 1.2 renegotiation: the new hello's random keys the next epoch.
            self.client_hello = hello
            self.server_hello = None
            self._client_key_exchange = self._session_hash = None
            self._transcript = [message.raw]
            return
        if self.hello_retry and self.client_hello is not None:
            self.client_hello = hello
            return
        self.client_hello = hello
        self.early_data_offered = hello.offers_early_data

    def _on_server_hello(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        hello = hs.parse_server_hello(message.raw, 4)
        if hello.is_hello_retry_request:
            self.hello_retry = True
            self.early_data_accepted = False
            self.version = hs.TLS13
            # Transcript: message_hash(ClientHello1) replaces ClientHello1 (RFC 8446 §4.4.1).
            suite = cipher_suite(hello.cipher_suite)
            if suite is not None and len(self._transcript) >= 2:
                digest = hashlib.new(suite.prf_hash, self._transcript[0]).digest()
                self._transcript[0] = bytes([hs.MESSAGE_HASH, 0, 0, len(digest)]) + digest
            return
        self.server_hello = hello
        self.version = hello.version
        if self.version not in (hs.TLS12, hs.TLS13):
            raise UnsupportedError(f"{hs.version_name(self.version)} is not supported")
        suite = cipher_suite(hello.cipher_suite)
        if suite is None or suite.tls13 != (self.version == hs.TLS13):
            raise UnsupportedError(f"cipher suite {cipher_suite_name(hello.cipher_suite)} is not supported")
        self.suite = suite
        if self.version == hs.TLS13:
            self.resumed = hello.accepts_psk
            if not self.early_data_offered or not hello.accepts_psk:
                self.early_data_accepted = False
            self._hello_hash = hashlib.new(suite.prf_hash, b"".join(self._transcript)).digest()
            self._layer(Direction.S2C).move(Move.HANDSHAKE_KEYS)
            self._install(Direction.S2C)
        else:
            if self.client_hello is not None:
                client_id = self.client_hello.session_id
                self.resumed = bool(client_id) and client_id == hello.session_id
            if self.resumed:
                self._transcript.clear()  # no ClientKeyExchange in an abbreviated handshake

    def _on_encrypted_extensions(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        extensions = hs.parse_encrypted_extensions(message.body)
        if self.server_hello is not None and hs.EXT_ALPN in extensions:
            self.server_hello.alpn = hs.selected_alpn(extensions)
        self.early_data_accepted = hs.EXT_EARLY_DATA in extensions

    def _on_certificate(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        if direction is Direction.S2C and not self._certificates:
            self._certificates = hs.parse_certificate(message.body, tls13=self.version == hs.TLS13)

    def _on_new_session_ticket(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        ticket = hs.parse_new_session_ticket(message.body, tls13=self.version == hs.TLS13)
        self.session_tickets += 1
        if self.version == hs.TLS12:
            self._pending_ticket = ticket
            if self._master_secret is not None:
                self._sessions.remember(ticket, self._master_secret)

    def _on_client_key_exchange(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        if self.version != hs.TLS12 or self.suite is None or direction is not Direction.C2S:
            return
        self._client_key_exchange = message.body
        self._session_hash = hashlib.new(self.suite.prf_hash, b"".join(self._transcript)).digest()
        self._transcript.clear()

    def _on_finished(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        if self.version != hs.TLS13 or self.suite is None:
            return
        if direction is Direction.S2C:
            self._server_finished_hash = hashlib.new(self.suite.prf_hash, b"".join(self._transcript)).digest()
            self._transcript.clear()
        self._switch_to_application(direction)

    def _on_end_of_early_data(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        state = self._layer(direction)
        state.move(Move.HANDSHAKE_KEYS)
        state.clear_keys()

    def _on_key_update(self, direction: Direction, message: hs.HandshakeMessage) -> None:
        hs.parse_key_update(message.body)
        state = self._layer(direction)
        if self.suite is None or state.traffic_secret is None:
            raise RecordDecodeError("KeyUpdate before application traffic keys")
        secret = next_traffic_secret(self.suite, state.traffic_secret)
        state.set_keys(RecordDecryptor13(self.suite, secret), traffic_secret=secret)
        state.key_updates += 1

    def _switch_to_application(self, direction: Direction) -> None:
        state = self._layer(direction)
        state.move(Move.APPLICATION_KEYS)
        state.clear_keys()
        self._install(direction)

    def _change_cipher_spec(self, direction: Direction) -> None:
        if self.version == hs.TLS13 or (self.version is None and direction is Direction.C2S):
            return  # TLS 1.3 middlebox compatibility record
        state = self._layer(direction)
        state.move(Move.APPLICATION_KEYS)
        state.clear_keys()
        self._install(direction)

    # --- keys ----------------------------------------------------------------------

    def _keyset_label(self, label: str) -> bytes | None:
        secrets = self._secrets
        return secrets.get(label) if secrets is not None and self.client_hello is not None else None

    def _handshake_secrets(self) -> tuple[bytes, bytes] | None:
        client = self._keyset_label(CLIENT_HANDSHAKE_TRAFFIC_SECRET)
        server = self._keyset_label(SERVER_HANDSHAKE_TRAFFIC_SECRET)
        if client is not None and server is not None:
            return client, server
        handshake_secret = self._keyset_label(HANDSHAKE_SECRET)
        if handshake_secret is not None and self.suite is not None and self._hello_hash is not None:
            return handshake_traffic_secrets(self.suite, handshake_secret=handshake_secret, hello_hash=self._hello_hash)
        return None

    def _application_secrets(self) -> tuple[bytes | None, bytes | None]:
        client = self._keyset_label(CLIENT_TRAFFIC_SECRET_0)
        server = self._keyset_label(SERVER_TRAFFIC_SECRET_0)
        if client is not None and server is not None:
            return client, server
        handshake_secret = self._keyset_label(HANDSHAKE_SECRET)
        if handshake_secret is not None and self.suite is not None and self._server_finished_hash is not None:
            return application_traffic_secrets(
                self.suite, handshake_secret=handshake_secret, server_finished_hash=self._server_finished_hash
            )
        return client, server

    def _handshake_decryptor(self, direction: Direction) -> RecordDecryptor13 | None:
        secrets = self._handshake_secrets()
        if secrets is None or self.suite is None:
            return None
        return RecordDecryptor13(self.suite, secrets[direction])

    def _install(self, direction: Direction) -> None:
        """Set the direction's decryptor for its phase, if the secrets are known."""
        state = self._layer(direction)
        if state.decryptor is not None:
            return
        if state.phase is Phase.EARLY:
            early = self._keyset_label(CLIENT_EARLY_TRAFFIC_SECRET)
            if early is not None:
                suite = self._early_suite()
                if suite is not None:
                    state.set_keys(RecordDecryptor13(suite, early))
            return
        if self.suite is None:
            return
        if self.version == hs.TLS13:
            if state.phase is Phase.HANDSHAKE:
                state.set_keys(self._handshake_decryptor(direction))
            elif state.phase is Phase.ENCRYPTED:
                secret = self._application_secrets()[direction]
                if secret is not None:
                    state.set_keys(RecordDecryptor13(self.suite, secret), traffic_secret=secret)
                else:
                    self._install_later_epoch(direction)
            return
        if state.phase is Phase.ENCRYPTED:
            self._install12(direction)

    def _install_later_epoch(self, direction: Direction) -> None:
        """No ``*_TRAFFIC_SECRET_0``: the earliest later epoch the key log gives."""
        if self.client_random is None or self.suite is None:
            return
        side = _SIDE[direction]
        epochs = []
        for label, secret in list((self._secrets or {}).items()):
            epoch = traffic_secret_epoch(label)
            if epoch is not None and epoch[0] == side and epoch[1] > 0 and len(secret) == self.suite.hash_length:
                epochs.append((epoch[1], secret))
        if not epochs:
            return
        epoch, secret = min(epochs)
        state = self._layer(direction)
        state.set_keys(RecordDecryptor13(self.suite, secret), traffic_secret=secret, catching_up=True)
        state.key_updates = epoch

    def _early_suite(self) -> CipherSuite | None:
        """0-RTT records use the suite of the PSK; OpenSSL offers it first."""
        if self.suite is not None:
            return self.suite
        if self.client_hello is None:
            return None
        for code in self.client_hello.cipher_suites:
            suite = cipher_suite(code)
            if suite is not None and suite.tls13:
                return suite
        return None

    def _install12(self, direction: Direction) -> None:
        master = self._master_secret12()
        if master is None or self.suite is None or self.client_hello is None or self.server_hello is None:
            return
        client_keys, server_keys = key_block12(
            self.suite,
            master_secret=master,
            client_random=self.client_hello.random,
            server_random=self.server_hello.random,
        )
        keys = client_keys if direction is Direction.C2S else server_keys
        self._layer(direction).set_keys(
            RecordDecryptor12(self.suite, keys, encrypt_then_mac=self.server_hello.encrypt_then_mac))
        self._master_secret = master
        self._sessions.remember(self.server_hello.session_id, master)
        self._sessions.remember(self._pending_ticket, master)

    def _master_secret12(self) -> bytes | None:
        master = self._keyset_label(CLIENT_RANDOM)
        if master is not None or self.client_hello is None or self.server_hello is None:
            return master
        if self.client_hello.session_ticket:
            master = self._sessions.lookup(self.client_hello.session_ticket)
            if master is not None:
                return master
        if self.resumed:
            master = self._sessions.lookup(self.server_hello.session_id)
            if master is not None:
                return master
        if self.server_hello.session_id:
            master = (self._handle_secrets or {}).get(session_handle(self.server_hello.session_id))
            if master is not None:
                return master
        pre_master = self._pre_master_secret()
        if pre_master is None or self.suite is None or self._session_hash is None:
            return None
        return master_secret12(
            self.suite,
            pre_master_secret=pre_master,
            client_random=self.client_hello.random,
            server_random=self.server_hello.random,
            session_hash=self._session_hash if self.server_hello.extended_master_secret else None,
        )

    def _pre_master_secret(self) -> bytes | None:
        """PMS_CLIENT_RANDOM, else the ``RSA`` line of the ClientKeyExchange's encrypted pre-master."""
        pre_master = self._keyset_label(PMS_CLIENT_RANDOM)
        if pre_master is not None:
            return pre_master
        encrypted = self._encrypted_pre_master()
        return (self._handle_secrets or {}).get(rsa_handle(encrypted)) if encrypted is not None else None

    def _encrypted_pre_master(self) -> bytes | None:
        """A static-RSA ClientKeyExchange's EncryptedPreMasterSecret (RFC 5246 §7.4.7.1)."""
        body = self._client_key_exchange
        if body is None or self.suite is None or not self.suite.name.startswith("TLS_RSA_"):
            return None
        if len(body) >= 2 and int.from_bytes(body[:2], "big") == len(body) - 2:
            body = body[2:]
        return body if len(body) >= 8 else None


def _skip_reason(direction: Direction, exc: Exception) -> str:
    if isinstance(exc, KeyUpdateGap):
        return f"{direction.name.lower()} {exc}"
    return str(exc)


_SEVERITY = {
    Status.DECRYPTED: 0,
    Status.PARTIAL: 1,
    Status.GAP: 2,
    Status.NO_KEYS: 3,
    Status.WRONG_KEY: 4,
    Status.NO_HANDSHAKE: 5,
    Status.UNSUPPORTED: 6,
    Status.NOT_TLS: 7,
}

_HANDLERS: dict[int, Callable[[TlsConnection, Direction, hs.HandshakeMessage], None]] = {
    hs.CLIENT_HELLO: TlsConnection._on_client_hello,
    hs.SERVER_HELLO: TlsConnection._on_server_hello,
    hs.ENCRYPTED_EXTENSIONS: TlsConnection._on_encrypted_extensions,
    hs.CERTIFICATE: TlsConnection._on_certificate,
    hs.CLIENT_KEY_EXCHANGE: TlsConnection._on_client_key_exchange,
    hs.NEW_SESSION_TICKET: TlsConnection._on_new_session_ticket,
    hs.FINISHED: TlsConnection._on_finished,
    hs.END_OF_EARLY_DATA: TlsConnection._on_end_of_early_data,
    hs.KEY_UPDATE: TlsConnection._on_key_update,
}

__all__ = [
    "ApplicationData",
    "BridgeError",
    "Direction",
    "PendingBudget",
    "Phase",
    "SessionCache",
    "Status",
    "TlsConnection",
]
