"""Finding a build's struct offsets from real handshakes, with no source and no symbols.

Input: *samples* — for each connection, the address of its ``SSL *`` in some
memory (this process, or a live target), the negotiated version and cipher
suite, and the connection's secrets as a key log wrote them (ground truth).
The search, per field, over the object's bytes and one pointer hop:

* ``client_random``, the TLS 1.3 traffic and exporter secrets: by value;
* ``handshake_secret`` / ``master_secret``: no key log line carries them, but
  they are bound by RFC 8446 §7.1 with no transcript: master =
  HKDF-Extract(Derive-Secret(handshake, "derived", ""), 0).  The pair of
  offsets where that holds is the pair;
* ``session`` and ``master_key``: the pointer whose target holds the TLS 1.2
  master secret; ``master_key_length``: the size_t beside it that equals the
  secret's length in every sample (48 for TLS 1.2, the hash length of the
  resumption secret for TLS 1.3);
* ``cipher_id``: a pointer in the session to a struct holding 0x0300XXXX;
* ``version``: the u32 equal to the negotiated version in every sample.

Every field must come out the same in every sample that can tell, and unique;
otherwise calibration refuses (:class:`~bridge.errors.ProfileError` naming the
field and the candidates).  Pure over a reader: the drivers are
:mod:`bridge.harvest.calibrate_ctypes` and :mod:`bridge.harvest.calibrate_live`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.errors import GuestAccessError, ProfileError
from bridge.secrets import CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, EXPORTER_SECRET, SERVER_TRAFFIC_SECRET_0
from bridge.tls.keyschedule import derive_secret, empty_hash, hkdf_extract

#: Bytes of an object searched (OpenSSL 3.x's SSL_CONNECTION is about 7 KiB).
OBJECT_SPAN = 0x3000
#: Bytes searched behind a pointer (SSL_SESSION, ssl3_state_st, SSL_CIPHER).
POINTED_SPAN = 0x800
_MIN_POINTER = 0x10000


@dataclass(slots=True, repr=False)
class Sample:
    """One connection seen from one side.  ``cipher_suite`` may be unknown (a live
    calibration sees only the client's key log)."""

    ssl: int
    version: int
    cipher_suite: int | None
    client_random: bytes
    secrets: dict[str, bytes] = field(default_factory=dict)  # RFC 9850 label → secret
    #: Where this sample's memory is read (``read_upto``/``read``: a copy taken while
    #: the connection was alive), when not the reader given to :func:`calibrate`.
    reader: Any = None
    #: With ``cipher_suite`` unknown: the suites it may be (learning: those whose key block is live).
    suites: frozenset[int] | None = None

    @property
    def hash_length(self) -> int:
        """TLS 1.3: the length of its traffic secrets (the suite's hash)."""
        secret = self.secrets.get(CLIENT_TRAFFIC_SECRET_0)
        if secret is not None:
            return len(secret)
        return 48 if self.cipher_suite == 0x1302 else 32

    @property
    def hash_name(self) -> str:
        return "sha384" if self.hash_length == 48 else "sha256"


#: Cipher suite ids a profile's cipher_id may hold when the sample's suite is unknown.
_TLS13_SUITES = frozenset(range(0x1301, 0x1306))


def _plausible_suite(sample: Sample, suite: int) -> bool:
    if sample.cipher_suite is not None:
        return suite == sample.cipher_suite
    if sample.suites is not None:
        return suite in sample.suites
    if sample.version == 0x0304:
        return suite in _TLS13_SUITES and (suite == 0x1302) == (sample.hash_length == 48)
    return suite >> 8 in (0x00, 0xC0, 0xCC) and suite not in _TLS13_SUITES


Path_ = tuple[int, ...]


class _Memory:
    """A reader with a cache of the spans read, that never raises for unmapped bytes."""

    def __init__(self, read_upto: Callable[[int, int], bytes]) -> None:
        self._read_upto = read_upto
        self._cache: dict[tuple[int, int], bytes] = {}

    def span(self, address: int, size: int) -> bytes:
        key = (address, size)
        data = self._cache.get(key)
        if data is None:
            try:
                data = self._read_upto(address, size) if address >= _MIN_POINTER else b""
            except GuestAccessError:
                data = b""
            self._cache[key] = data
        return data

    def pointers(self, address: int, size: int) -> Iterable[tuple[int, int]]:
        """(offset, value) of the pointer-looking 8-byte words of a span."""
        data = self.span(address, size)
        for offset in range(0, len(data) - 7, 8):
            value = int.from_bytes(data[offset : offset + 8], "little")
            if _MIN_POINTER <= value < 1 << 47 and not value & 7:
                yield offset, value


def _offsets(data: bytes, needle: bytes, step: int = 1) -> set[int]:
    found: set[int] = set()
    index = data.find(needle)
    while index >= 0:
        if index % step == 0:
            found.add(index)
        index = data.find(needle, index + 1)
    return found


class _Memories:
    """One cached reader per sample (a sample may bring its own copy of memory)."""

    def __init__(self, read_upto: Callable[[int, int], bytes]) -> None:
        self._default = _Memory(read_upto)
        self._own: dict[int, _Memory] = {}

    def __call__(self, sample: Sample) -> _Memory:
        if sample.reader is None:
            return self._default
        memory = self._own.get(id(sample))
        if memory is None:
            memory = self._own[id(sample)] = _Memory(sample.reader.read_upto)
        return memory


def _paths_to(memory: _Memory, base: int, needle: bytes, *, step: int = 1, depth: int = 0) -> set[Path_]:
    """Paths from ``base`` to ``needle``: in the object itself (depth 0), or
    through one of its pointers (depth 1)."""
    if depth == 0:
        return {(offset,) for offset in _offsets(memory.span(base, OBJECT_SPAN), needle, step)}
    return {(offset, inner) for offset, pointer in memory.pointers(base, OBJECT_SPAN)
            for inner in _offsets(memory.span(pointer, POINTED_SPAN), needle, step)}


def _consistent(samples: list[Sample], memories: _Memories, needle: Callable[[Sample], bytes | None], *,
                step: int = 1, depths: tuple[int, ...] = (0, 1)) -> set[Path_]:
    """The paths to a value that hold in every sample that has the value: in the
    object itself if any, else through one pointer.  (Reading a span past the end of
    an object also reads its heap neighbours; only a path that holds everywhere counts.)"""
    for depth in depths:
        found: set[Path_] | None = None
        for sample in samples:
            value = needle(sample)
            if value is not None:
                found = _intersect(found, _paths_to(memories(sample), sample.ssl, value, step=step, depth=depth))
                if not found:
                    break
        if found:
            return found
    return set()


def _only(name: str, candidates: set[Path_] | None, *, required: bool = True) -> Path_ | None:
    if not candidates:
        if required:
            raise ProfileError(f"calibration: field {name!r} not found consistently in the samples")
        return None
    if len(candidates) > 1:
        shown = ", ".join("/".join(f"{s:#x}" for s in path) for path in sorted(candidates)[:6])
        raise ProfileError(f"calibration: field {name!r} is ambiguous ({len(candidates)} candidates: {shown}); "
                           "refusing to write the profile")
    return next(iter(candidates))


def _intersect(current: set[Path_] | None, found: set[Path_]) -> set[Path_]:
    return found if current is None else current & found


def secret_pairs(data: bytes, hash_name: str) -> set[tuple[int, int]]:
    """(handshake_secret, master_secret) offsets in an object's bytes bound by RFC 8446 §7.1:
    master = HKDF-Extract(Derive-Secret(handshake, "derived", ""), 0)."""
    length = 48 if hash_name == "sha384" else 32
    salt_label, zeros, empty = b"derived", bytes(length), empty_hash(hash_name)
    pairs: set[tuple[int, int]] = set()
    for offset in range(0, len(data) - length + 1, 4):
        candidate = data[offset : offset + length]
        if candidate.count(0) > length // 2:
            continue
        derived = derive_secret(hash_name, candidate, salt_label, empty)
        master = hkdf_extract(hash_name, salt=derived, ikm=zeros)
        for position in _offsets(data, master, 4):
            pairs.add((offset, position))
    return pairs


def _secret_pair(memories: _Memories, sample: Sample) -> set[tuple[Path_, Path_]]:
    """(handshake_secret, master_secret) offset pairs bound by RFC 8446 §7.1."""
    data = memories(sample).span(sample.ssl, OBJECT_SPAN)
    return {((handshake,), (master,)) for handshake, master in secret_pairs(data, sample.hash_name)}


def _session_fields(memories: _Memories, samples: list[Sample]) -> tuple[Path_, int, int]:
    """(path to the session pointer, master_key offset, master_key_length offset) in it."""
    tls12 = [s for s in samples if s.version == 0x0303 and CLIENT_RANDOM in s.secrets]
    if not tls12:
        raise ProfileError("calibration: a TLS 1.2 handshake is needed to find SSL_SESSION.master_key")
    found = _consistent(tls12, memories, lambda s: s.secrets[CLIENT_RANDOM], step=4, depths=(1,))
    session_offset, master_key_offset = _only("session/master_key", found)  # type: ignore[misc]
    lengths: set[Path_] | None = None
    for sample in samples:
        memory = memories(sample)
        pointer = int.from_bytes(memory.span(sample.ssl + session_offset, 8), "little")
        data = memory.span(pointer, POINTED_SPAN)
        expected = 48 if sample.version == 0x0303 else sample.hash_length
        found = {(offset,) for offset in range(0, min(len(data), master_key_offset), 8)
                 if int.from_bytes(data[offset : offset + 8], "little") == expected}
        if sample.version == 0x0304 and not found:
            # A TLS 1.3 session gets its resumption secret (and its length) only after
            # the client's Finished: a copy taken earlier cannot tell; skip it.
            continue
        lengths = _intersect(lengths, found)
    (length_offset,) = _only("master_key_length", lengths)  # type: ignore[misc]
    return (session_offset,), master_key_offset, length_offset


def _cipher_id(memories: _Memories, samples: list[Sample], session: int) -> Path_ | None:
    found: set[Path_] | None = None
    for sample in samples:
        memory = memories(sample)
        pointer = int.from_bytes(memory.span(sample.ssl + session, 8), "little")
        paths = set()
        for offset, target in memory.pointers(pointer, POINTED_SPAN):
            data = memory.span(target, 0x40)
            for inner in range(0, len(data) - 3, 4):
                value = int.from_bytes(data[inner : inner + 4], "little")
                if value >> 16 == 0x0300 and _plausible_suite(sample, value & 0xFFFF):
                    paths.add((offset, inner))
        if paths or sample.reader is None:  # a copy taken before the session had its cipher cannot tell
            found = _intersect(found, paths)
    path = _only("cipher_id", found, required=False)
    return None if path is None else (session, *path)


def _version(memories: _Memories, samples: list[Sample]) -> Path_:
    found: set[Path_] | None = None
    for sample in samples:
        data = memories(sample).span(sample.ssl, OBJECT_SPAN)
        found = _intersect(found, {(offset,) for offset in _offsets(data, sample.version.to_bytes(4, "little"), 4)})
    return _only("version", found)  # type: ignore[return-value]


def calibrate(read_upto: Callable[[int, int], bytes], samples: list[Sample], *,
              both_hashes: bool = True) -> dict[str, Path_]:
    """Profile fields found consistently in ``samples``; raises ProfileError otherwise.
    ``both_hashes``: insist on TLS 1.3 samples with a SHA-256 and a SHA-384 suite (a
    calibration chooses its handshakes; learning takes the connections that come)."""
    versions = {s.version for s in samples}
    if not {0x0303, 0x0304} <= versions:
        raise ProfileError("calibration needs TLS 1.2 and TLS 1.3 handshakes")
    if both_hashes and len({s.hash_length for s in samples if s.version == 0x0304}) < 2:
        raise ProfileError("calibration needs TLS 1.3 handshakes with a SHA-256 and a SHA-384 suite")
    memory = _Memories(read_upto)
    fields: dict[str, Path_] = {}
    fields["client_random"] = _only("client_random", _consistent(samples, memory, lambda s: s.client_random))
    tls13 = [s for s in samples if s.version == 0x0304]
    for name, label in (("client_app_traffic_secret", CLIENT_TRAFFIC_SECRET_0),
                        ("server_app_traffic_secret", SERVER_TRAFFIC_SECRET_0),
                        ("exporter_master_secret", EXPORTER_SECRET)):
        found = _consistent(tls13, memory, lambda s, label=label: s.secrets.get(label), step=4)
        path = _only(name, found, required=name != "exporter_master_secret")
        if path is not None:
            fields[name] = path
    pairs: set[tuple[Path_, Path_]] | None = None
    for sample in tls13:
        pairs = _secret_pair(memory, sample) if pairs is None else pairs & _secret_pair(memory, sample)
    if not pairs or len(pairs) != 1:
        raise ProfileError(f"calibration: handshake_secret/master_secret not found unambiguously "
                           f"({len(pairs or ())} candidate pairs); refusing to write the profile")
    fields["handshake_secret"], fields["master_secret"] = next(iter(pairs))
    session, master_key, master_key_length = _session_fields(memory, samples)
    fields["session"] = session
    fields["master_key"] = (*session, master_key)
    fields["master_key_length"] = (*session, master_key_length)
    cipher_id = _cipher_id(memory, samples, session[0])
    if cipher_id is not None:
        fields["cipher_id"] = cipher_id
    fields["version"] = _version(memory, samples)
    return fields
