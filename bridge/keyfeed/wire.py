"""The key feed's wire format: a versioned msgpack schema, validated strictly.

Every message is one msgpack map with ``v`` (schema version, 1) and ``type``::

    key       a key record: client random + RFC 9850 label → secret, metadata
    hb        heartbeat: a publisher's last sequence number and oldest retained
    snapshot  request: every retained record that arrived in the last ``age`` seconds
    want      request: a sensor saw this connection begin, with no secrets for it (no reply;
              the harvester searches for it and publishes the record live); with
              ``end``: it ended, still without secrets (the search may stop soon)
    fetch     request: one publisher's records in a sequence range
    batch     reply: records answering a request
    end       reply: the request is complete (publisher ranges, what is gone)
    error     reply: the request was refused

Decoding is pure and strict: the size, every field's type and length, the
labels, the set of keys of every map.  Anything else raises
:class:`FeedMessageError` with a short ``reason`` (for counters) and a message
that never contains field values — a malformed message may hold secrets.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import msgpack

from bridge.errors import FeedMessageError
from bridge.secrets import CLIENT_RANDOM, FEED_LABELS, KNOWN_LABELS
from bridge.keys.keylog import KeyLogEntry

SCHEMA_VERSION = 1
PUBLISHER_ID_LENGTH = 16
CLIENT_RANDOM_LENGTH = 32
#: A live key message is small: 9 labels x 48 bytes plus metadata.
MAX_KEY_MESSAGE = 4096
MAX_REQUEST_MESSAGE = 512
MAX_BATCH_RECORDS = 256
MAX_BATCH_MESSAGE = MAX_BATCH_RECORDS * MAX_KEY_MESSAGE
MAX_END_PUBLISHERS = 4096
MAX_SEQ = (1 << 63) - 1
_SECRET_LENGTHS: Mapping[str, tuple[int, ...]] = MappingProxyType({CLIENT_RANDOM: (48,)})
_TRAFFIC_SECRET_LENGTHS = (32, 48)
_TLS_VERSIONS = frozenset({0x0303, 0x0304})
_MAX_TEXT = 256
_MAX_PATH = 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a secret came from: no secret material, safe to log."""

    host: str | None = None
    vm: str | None = None
    pid: int | None = None
    comm: str | None = None
    exe: str | None = None
    library: str | None = None
    build_id: str | None = None
    trigger: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


_ORIGIN_TEXT_FIELDS = ("host", "vm", "comm", "exe", "library", "build_id", "trigger")
_ORIGIN_FIELDS = frozenset(_ORIGIN_TEXT_FIELDS) | {"pid"}


@dataclass(frozen=True, slots=True, repr=False)
class KeyRecord:
    """Every secret a harvester read for one connection (one client random).

    ``secrets`` maps RFC 9850 labels (and our ``HANDSHAKE_SECRET``) to bytes.
    ``publisher`` and ``seq`` are set by the publisher when it sends the record.
    """

    client_random: bytes
    secrets: Mapping[str, bytes]
    captured_at: float
    tls_version: int | None = None
    cipher_suite: int | None = None
    origin: Origin = field(default_factory=Origin)
    publisher: bytes = b""
    seq: int = 0

    def __repr__(self) -> str:
        return (
            f"KeyRecord({self.client_random.hex()[:16]}…, labels={sorted(self.secrets)}, "
            f"publisher={self.publisher.hex()[:8]}, seq={self.seq})"
        )

    def keylog_entries(self) -> list[KeyLogEntry]:
        return [KeyLogEntry(label, self.client_random, secret) for label, secret in sorted(self.secrets.items())]

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.publisher, self.seq)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    publisher: bytes
    last_seq: int
    first_seq: int  # oldest sequence number still retained (last + 1 when none)
    sent_at: float


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    request_id: int
    max_age: float  # seconds, on the answering service's clock


@dataclass(frozen=True, slots=True)
class FetchRequest:
    request_id: int
    publisher: bytes
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class KeyRequest:
    """A sensor saw this connection's ClientHello and has no secrets for it: a
    harvester that does not see the traffic itself searches for its client
    random.  Endpoints are (packed IPv4/IPv6 address, port), client first."""

    client_random: bytes
    client: tuple[bytes, int]
    server: tuple[bytes, int]
    #: The connection ended (FIN/RST) and the sensor still has no secrets for it.
    ended: bool = False


@dataclass(frozen=True, slots=True)
class Batch:
    request_id: int
    records: tuple[KeyRecord, ...]


@dataclass(frozen=True, slots=True)
class PublisherRange:
    """What a snapshot service holds of one publisher: ``first..last`` retained."""

    publisher: bytes
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class SeqRange:
    publisher: bytes
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class End:
    request_id: int
    publishers: tuple[PublisherRange, ...] = ()
    #: Asked for, but no longer retained (expired or evicted).
    gone: tuple[SeqRange, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    request_id: int
    reason: str


Message = KeyRecord | Heartbeat | SnapshotRequest | FetchRequest | KeyRequest | Batch | End | ErrorReply


# --- encoding ----------------------------------------------------------------------


def _record_map(record: KeyRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pub": record.publisher,
        "seq": record.seq,
        "t": float(record.captured_at),
        "cr": record.client_random,
        "secrets": dict(record.secrets),
    }
    if record.tls_version is not None:
        body["tls"] = record.tls_version
    if record.cipher_suite is not None:
        body["suite"] = record.cipher_suite
    origin = record.origin.as_dict()
    if origin:
        body["origin"] = origin
    return body


def _message_map(message: Message) -> dict[str, Any]:
    match message:
        case KeyRecord():
            return {"type": "key", **_record_map(message)}
        case Heartbeat():
            return {"type": "hb", "pub": message.publisher, "seq": message.last_seq, "first": message.first_seq,
                    "t": float(message.sent_at)}
        case SnapshotRequest():
            return {"type": "snapshot", "id": message.request_id, "age": float(message.max_age)}
        case FetchRequest():
            return {"type": "fetch", "id": message.request_id, "pub": message.publisher, "from": message.first,
                    "to": message.last}
        case KeyRequest():
            body = {"type": "want", "cr": message.client_random, "c": list(message.client), "s": list(message.server)}
            return {**body, "end": True} if message.ended else body
        case Batch():
            return {"type": "batch", "id": message.request_id, "records": [_record_map(r) for r in message.records]}
        case End():
            return {"type": "end", "id": message.request_id,
                    "publishers": [[p.publisher, p.first_seq, p.last_seq] for p in message.publishers],
                    "gone": [[g.publisher, g.first, g.last] for g in message.gone]}
        case ErrorReply():
            return {"type": "error", "id": message.request_id, "reason": message.reason[:_MAX_TEXT]}
    raise TypeError(f"not a key feed message: {type(message).__name__}")


def encode(message: Message) -> bytes:
    return msgpack.packb({"v": SCHEMA_VERSION, **_message_map(message)}, use_bin_type=True)


# --- decoding ----------------------------------------------------------------------


def _fail(reason: str, detail: str) -> FeedMessageError:
    return FeedMessageError(reason, detail)


def _no_ext(code: int, data: bytes) -> object:
    raise _fail("not_msgpack", f"msgpack extension type {code} is not allowed")


def _unpack(data: bytes, max_size: int) -> Any:
    if len(data) > max_size:
        raise _fail("too_large", f"{len(data)} bytes, limit {max_size}")
    try:
        # unpackb bounds every container and string by len(data), checked above.
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext, use_list=True)
    except FeedMessageError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types on garbage; none may escape
        raise _fail("not_msgpack", f"undecodable msgpack ({type(exc).__name__})") from None


def _check_keys(body: Mapping[str, Any], required: frozenset[str], optional: frozenset[str], where: str) -> None:
    keys = body.keys()
    missing = required - keys
    if missing:
        raise _fail("bad_field", f"{where}: missing {sorted(missing)}")
    unknown = keys - required - optional
    if unknown:
        names = sorted(str(k)[:32] for k in unknown)[:4]
        raise _fail("bad_field", f"{where}: unknown fields {names}")


def _map(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail("bad_field", f"{where}: not a map")
    return value


def _bytes(value: Any, lengths: tuple[int, ...], where: str) -> bytes:
    if not isinstance(value, bytes):
        raise _fail("bad_field", f"{where}: not bytes")
    if len(value) not in lengths:
        raise _fail("bad_field", f"{where}: {len(value)} bytes, expected {' or '.join(map(str, lengths))}")
    return value


def _int(value: Any, low: int, high: int, where: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise _fail("bad_field", f"{where}: not an integer in {low}..{high}")
    return value


def _time(value: Any, where: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value < 1e11:
        raise _fail("bad_field", f"{where}: not a time")
    return float(value)


def _text(value: Any, where: str, limit: int = _MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _fail("bad_field", f"{where}: not a string of at most {limit} characters")
    return value


def _optional(value: Any, check: Callable[[Any], Any]) -> Any:
    return None if value is None else check(value)


def _secrets(value: Any) -> dict[str, bytes]:
    body = _map(value, "secrets")
    if not 1 <= len(body) <= len(KNOWN_LABELS):
        raise _fail("bad_field", f"secrets: {len(body)} entries")
    secrets: dict[str, bytes] = {}
    for label, secret in body.items():
        if label not in KNOWN_LABELS:
            raise _fail("bad_label", f"secrets: unknown label {str(label)[:40]!r}")
        secrets[label] = _bytes(secret, _SECRET_LENGTHS.get(label, _TRAFFIC_SECRET_LENGTHS), f"secrets.{label}")
    return secrets


def _origin(value: Any) -> Origin:
    body = _map(value, "origin")
    _check_keys(body, frozenset(), _ORIGIN_FIELDS, "origin")
    values: dict[str, Any] = {
        name: _optional(body.get(name), lambda v, n=name: _text(v, f"origin.{n}", _MAX_PATH if n == "exe" else _MAX_TEXT))
        for name in _ORIGIN_TEXT_FIELDS
    }
    values["pid"] = _optional(body.get("pid"), lambda v: _int(v, 0, 1 << 32, "origin.pid"))
    return Origin(**values)


_RECORD_REQUIRED = frozenset({"pub", "seq", "t", "cr", "secrets"})
_RECORD_OPTIONAL = frozenset({"tls", "suite", "origin"})


def _record(body: Mapping[str, Any], extra: frozenset[str] = frozenset()) -> KeyRecord:
    _check_keys(body, _RECORD_REQUIRED | extra, _RECORD_OPTIONAL, "key")
    tls_version = _optional(body.get("tls"), lambda v: _int(v, 0, 0xFFFF, "tls"))
    if tls_version is not None and tls_version not in _TLS_VERSIONS:
        raise _fail("bad_field", "tls: not TLS 1.2 or 1.3")
    return KeyRecord(
        publisher=_bytes(body["pub"], (PUBLISHER_ID_LENGTH,), "pub"),
        seq=_int(body["seq"], 1, MAX_SEQ, "seq"),
        captured_at=_time(body["t"], "t"),
        client_random=_bytes(body["cr"], (CLIENT_RANDOM_LENGTH,), "cr"),
        secrets=MappingProxyType(_secrets(body["secrets"])),
        tls_version=tls_version,
        cipher_suite=_optional(body.get("suite"), lambda v: _int(v, 0, 0xFFFF, "suite")),
        origin=_optional(body.get("origin"), _origin) or Origin(),
    )


def _endpoint(value: Any, where: str) -> tuple[bytes, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise _fail("bad_field", f"{where}: not [address, port]")
    return _bytes(value[0], (4, 16), where), _int(value[1], 0, 0xFFFF, where)


def _triples(value: Any, where: str, limit: int) -> list[tuple[bytes, int, int]]:
    if not isinstance(value, list) or len(value) > limit:
        raise _fail("bad_field", f"{where}: not a list of at most {limit}")
    triples = []
    for item in value:
        if not isinstance(item, list) or len(item) != 3:
            raise _fail("bad_field", f"{where}: entries are [publisher, first, last]")
        publisher = _bytes(item[0], (PUBLISHER_ID_LENGTH,), where)
        triples.append((publisher, _int(item[1], 0, MAX_SEQ, where), _int(item[2], 0, MAX_SEQ, where)))
    return triples


_TYPES = {
    "key": (MAX_KEY_MESSAGE, _RECORD_REQUIRED, _RECORD_OPTIONAL),
    "hb": (MAX_REQUEST_MESSAGE, frozenset({"pub", "seq", "first", "t"}), frozenset()),
    "snapshot": (MAX_REQUEST_MESSAGE, frozenset({"id", "age"}), frozenset()),
    "fetch": (MAX_REQUEST_MESSAGE, frozenset({"id", "pub", "from", "to"}), frozenset()),
    "want": (MAX_REQUEST_MESSAGE, frozenset({"cr", "c", "s"}), frozenset({"end"})),
    "batch": (MAX_BATCH_MESSAGE, frozenset({"id", "records"}), frozenset()),
    "end": (MAX_BATCH_MESSAGE, frozenset({"id", "publishers", "gone"}), frozenset()),
    "error": (MAX_REQUEST_MESSAGE, frozenset({"id", "reason"}), frozenset()),
}


def decode(data: bytes, *, max_size: int = MAX_BATCH_MESSAGE) -> Message:
    """One message from its bytes; raises :class:`FeedMessageError` for anything invalid."""
    body = _map(_unpack(data, max_size), "message")
    version = body.get("v")
    if version != SCHEMA_VERSION:
        raise _fail("bad_version", f"schema version {str(version)[:16]!r}, this sensor reads {SCHEMA_VERSION}")
    kind = body.get("type")
    spec = _TYPES.get(kind) if isinstance(kind, str) else None
    if spec is None:
        raise _fail("bad_type", f"unknown message type {str(kind)[:32]!r}")
    limit, required, optional = spec
    if len(data) > limit:
        raise _fail("too_large", f"{kind}: {len(data)} bytes, limit {limit}")
    body = {k: v for k, v in body.items() if k not in ("v", "type")}
    if kind == "key":
        return _record(body)
    _check_keys(body, required, optional, kind)
    request_id = _optional(body.get("id"), lambda v: _int(v, 0, MAX_SEQ, "id"))
    match kind:
        case "hb":
            return Heartbeat(
                publisher=_bytes(body["pub"], (PUBLISHER_ID_LENGTH,), "pub"),
                last_seq=_int(body["seq"], 0, MAX_SEQ, "seq"),
                first_seq=_int(body["first"], 1, MAX_SEQ, "first"),
                sent_at=_time(body["t"], "t"),
            )
        case "snapshot":
            return SnapshotRequest(request_id, _time(body["age"], "age"))
        case "fetch":
            first, last = _int(body["from"], 1, MAX_SEQ, "from"), _int(body["to"], 1, MAX_SEQ, "to")
            if last < first:
                raise _fail("bad_field", "fetch: empty range")
            return FetchRequest(request_id, _bytes(body["pub"], (PUBLISHER_ID_LENGTH,), "pub"), first, last)
        case "want":
            client, server = _endpoint(body["c"], "c"), _endpoint(body["s"], "s")
            if len(client[0]) != len(server[0]):
                raise _fail("bad_field", "want: client and server addresses of different families")
            ended = body.get("end", False)
            if ended is not True and ended is not False:
                raise _fail("bad_field", "end: not a boolean")
            return KeyRequest(_bytes(body["cr"], (CLIENT_RANDOM_LENGTH,), "cr"), client, server, ended)
        case "batch":
            records = body["records"]
            if not isinstance(records, list) or len(records) > MAX_BATCH_RECORDS:
                raise _fail("bad_field", f"batch: not a list of at most {MAX_BATCH_RECORDS} records")
            return Batch(request_id, tuple(_record(_map(r, "batch record")) for r in records))
        case "end":
            return End(
                request_id,
                tuple(PublisherRange(*t) for t in _triples(body["publishers"], "publishers", MAX_END_PUBLISHERS)),
                tuple(SeqRange(*t) for t in _triples(body["gone"], "gone", MAX_END_PUBLISHERS)),
            )
        case _:  # "error"
            return ErrorReply(request_id, _text(body["reason"], "reason"))


def records_from_entries(entries: list[KeyLogEntry], origin: Origin, now: float) -> list[KeyRecord]:
    """Key log lines grouped into one record per client random (in first-seen order).
    Only the feed's labels (RFC 9850's): pre-master (``PMS_CLIENT_RANDOM``, ``RSA``)
    and later-epoch lines need the handshake to be used, so they stay in the file
    (give it to the sensor with ``--keylog``)."""
    grouped: OrderedDict[bytes, dict[str, bytes]] = OrderedDict()
    for entry in entries:
        if entry.label not in FEED_LABELS:
            continue
        grouped.setdefault(entry.client_random, {})[entry.label] = entry.secret
    return [
        KeyRecord(
            client_random=client_random,
            secrets=secrets,
            captured_at=now,
            tls_version=0x0303 if CLIENT_RANDOM in secrets else 0x0304,
            origin=origin,
        )
        for client_random, secrets in grouped.items()
    ]
