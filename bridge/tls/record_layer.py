"""One direction's record layer: framing, protection, and records waiting for keys.

Framing (:class:`~bridge.tls.records.RecordReader`) and record protection
(:mod:`bridge.tls.protection`) are the per-byte work of a connection; this is the
seam where a compiled implementation can replace them: the handshake logic and
the state machine (:mod:`bridge.tls.state`) above it only call :meth:`feed`,
:meth:`decrypt`, the key setters and the queue.

Records whose keys are not known yet wait here, bounded per direction and by a
:class:`PendingBudget` shared by every connection.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from bridge.errors import DecryptionError
from bridge.tls import handshake as hs
from bridge.tls.protection import RecordDecryptor12, RecordDecryptor13
from bridge.tls.records import Record, RecordReader
from bridge.tls.state import Move, Phase, advance


@dataclass(slots=True)
class PendingBudget:
    """Bytes of protected records waiting for keys, shared by every connection."""

    limit: int = 256 * 1024 * 1024
    used: int = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


class KeyUpdateGap(Exception):
    """A record sent before the KeyUpdate whose later epoch's secret was given
    without the earlier ones: it cannot be decrypted (the reason is the message)."""


def _record_size(record: Record) -> int:
    return len(record.fragment) + 5


@dataclass(slots=True)
class RecordLayer:
    """The record layer of one direction of one connection."""

    phase: Phase = Phase.PLAINTEXT
    decryptor: RecordDecryptor12 | RecordDecryptor13 | None = None
    #: TLS 1.3 secret of the current epoch (for KeyUpdate), never logged.
    traffic_secret: bytes | None = field(default=None, repr=False)
    reader: RecordReader = field(default_factory=RecordReader)
    handshake: hs.HandshakeReader = field(default_factory=hs.HandshakeReader)
    pending: deque[Record] = field(default_factory=deque)
    pending_bytes: int = 0
    records: int = 0
    decrypted_records: int = 0
    skipped_records: int = 0
    alerts: int = 0
    key_updates: int = 0
    application_bytes: int = 0
    #: The stream's first bytes were seen (and judged TLS or not).
    started: bool = False
    prefix: bytearray = field(default_factory=bytearray)
    stop_reason: str | None = None
    skip_reason: str | None = None
    #: TLS 1.3: keys of a later epoch (``*_TRAFFIC_SECRET_N``) installed without
    #: the earlier ones; records that fail with them were sent before that KeyUpdate.
    catching_up: bool = False

    # --- phase -----------------------------------------------------------------------

    def move(self, move: Move) -> None:
        """The only way a phase changes (:data:`bridge.tls.state.TRANSITIONS`)."""
        self.phase = advance(self.phase, move)

    @property
    def stopped(self) -> bool:
        return self.phase is Phase.STOPPED

    # --- keys --------------------------------------------------------------------------

    def set_keys(self, decryptor: RecordDecryptor12 | RecordDecryptor13 | None, *,
                 traffic_secret: bytes | None = None, catching_up: bool = False) -> None:
        self.decryptor = decryptor
        self.traffic_secret = traffic_secret
        self.catching_up = catching_up

    def clear_keys(self) -> None:
        self.set_keys(None)

    # --- framing and protection ---------------------------------------------------------

    def in_middle_of_record(self, size: int) -> bool:
        """Would ``size`` more bytes still leave the current record incomplete?"""
        reader = self.reader
        return len(reader._buffer) + size < reader._need

    def buffer_more(self, data: bytes) -> None:
        """The hot path: bytes in the middle of a record, nothing to frame yet."""
        self.reader._buffer += data

    def feed(self, data: bytes) -> list[Record]:
        """Stream bytes in, complete records out (raises RecordDecodeError)."""
        return self.reader.feed(data)

    def decrypt(self, record: Record) -> tuple[int, bytes]:
        """(inner content type, plaintext) with the installed keys; raises
        DecryptionError, or :class:`KeyUpdateGap` for a record older than the
        earliest epoch whose secret is known."""
        assert self.decryptor is not None
        if self.catching_up:
            try:
                result = self.decryptor.decrypt(record.content_type, record.version, record.fragment)
            except DecryptionError:
                raise KeyUpdateGap(
                    f"records sent before KeyUpdate {self.key_updates}: no earlier traffic secret in the key log"
                ) from None
            self.catching_up = False
            return result
        return self.decryptor.decrypt(record.content_type, record.version, record.fragment)

    # --- records waiting for keys ------------------------------------------------------------

    def enqueue(self, record: Record, budget: PendingBudget, max_pending: int) -> bool:
        """Hold a record until keys come; False when the bounds are reached."""
        size = _record_size(record)
        if self.pending_bytes + size > max_pending or not budget.reserve(size):
            return False
        self.pending.append(record)
        self.pending_bytes += size
        return True

    def pop(self, budget: PendingBudget) -> Record:
        record = self.pending.popleft()
        size = _record_size(record)
        self.pending_bytes -= size
        budget.release(size)
        return record

    def release(self, budget: PendingBudget) -> int:
        """Drop every waiting record; returns how many there were."""
        count = len(self.pending)
        budget.release(self.pending_bytes)
        self.pending.clear()
        self.pending_bytes = 0
        return count
