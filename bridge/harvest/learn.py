"""Learning a build's layout from its live connections: no profile, no key log, no symbols.

The last resolution path (:mod:`bridge.harvest.resolve`): no profile is known,
the build cannot be calibrated here, and no candidate layout confirms.  The
layout is then learned from the build's own connections.

*Which object is whose.*  A connection is named by its client random (a
ClientHello on the wire, a sensor's request) and a hook gives the ``SSL *`` of
each call; the object at that ``SSL *`` holding a named client random is that
connection's.  Without a hook, a client random found in memory says where the
random is, not where its object starts: :func:`object_starts` proposes the
starts of the heap block around it (glibc malloc's chunk header before it, the
next chunk's header where the size says, the library's ``SSL_METHOD`` pointer
among the first words); a wrong proposal gives offsets the other connections do
not share, and the layout is only written where they agree.  (OpenSSL 3.x keeps
the random in the object; 1.1.1 behind its ``s3`` pointer, which needs a hook.)

*Its secrets, derived rather than read*, each by a relation no wrong value
satisfies by chance, from the process's own memory:

TLS 1.3 (RFC 8446 §7.1)
    the handshake and master secrets are the one pair of offsets where
    ``master = HKDF-Extract(Derive-Secret(handshake, "derived", ""), 0)``;
    OpenSSL keeps the transcript hash up to the server Finished in the object,
    so for the hash-length run ``H`` of the object where
    ``Derive-Secret(master, "c ap traffic" | "s ap traffic", H)`` are *both*
    found in the object, those are the application traffic secrets (and
    ``"exp master"`` the exporter secret, when present).
TLS 1.2 (RFC 5246 §6.3)
    the server random sits 32 bytes before the client random; among the
    48-byte values behind the object's pointers that a size_t 48 precedes (the
    session's master key and its length), the master secret is the one whose
    key block, for the suite the same session points at, has both write keys
    live in the process (one memory search for every candidate at once).

*The fields.*  The derived secrets stand in for a key log.  The samples first
vote on where their client random is (:func:`agreeing`: an object's span read
past its end may show a neighbour's random); those that agree go to
:func:`bridge.harvest.calibrate.calibrate`, which finds their offsets, cross-checked
over every sample and refusing any ambiguity, and the profile is read back on
every sample (:func:`~bridge.harvest.calibrate_ctypes.verify`).  So every field
is confirmed before anything is published: the client random is what the wire
showed, the secrets are bound cryptographically, the version is the one the
relations imply, the TLS 1.2 suite is the one whose key block is live.

Pure over a reader (``read_upto``) and a memory search (``find``), as
:mod:`bridge.harvest.confirm`; the drivers are the harvesters.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from bridge import __version__
from bridge.harvest.calibrate import OBJECT_SPAN, POINTED_SPAN, Sample, calibrate, secret_pairs
from bridge.harvest.calibrate_live import SnapshotReader
from bridge.harvest.chain import TLS12, TLS13
from bridge.harvest.confirm import _expand_label
from bridge.harvest.profile import Profile
from bridge.secrets import CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, EXPORTER_SECRET, SERVER_TRAFFIC_SECRET_0
from bridge.tls.ciphersuites import cipher_suite
from bridge.tls.keyschedule import key_block12

#: Connections learned from before a layout is attempted (both TLS versions among them),
#: and at most (a layout still ambiguous or inconsistent then is given up).
LEARN_MIN_SAMPLES = 3
LEARN_MAX_SAMPLES = 24
#: How far before a master key its size_t length may be (OpenSSL: 0x48, early_secret between).
_LENGTH_BEFORE = 0x80
_MIN_POINTER = 0x10000
_S3_POINTER_SPAN = 0x200

Find = Callable[[list[bytes]], set[bytes]]


def _random_looking(value: bytes) -> bool:
    return value.count(0) <= 3 and len(set(value)) > len(value) // 3


def tls13_secrets(data: bytes) -> dict[str, bytes] | None:
    """The application traffic (and exporter) secrets an object's bytes hold,
    derived from its handshake/master pair and its transcript hash; None when the
    object holds no finished TLS 1.3 handshake."""
    for hash_name, length in (("sha256", 32), ("sha384", 48)):
        for _, master_offset in sorted(secret_pairs(data, hash_name)):
            master = data[master_offset : master_offset + length]
            for offset in range(0, len(data) - length + 1, 4):
                transcript = data[offset : offset + length]
                if transcript.count(0) > length // 2:
                    continue
                client = _expand_label(hash_name, master, b"c ap traffic", transcript, length)
                if client not in data:
                    continue
                server = _expand_label(hash_name, master, b"s ap traffic", transcript, length)
                if server not in data:
                    continue
                secrets = {CLIENT_TRAFFIC_SECRET_0: client, SERVER_TRAFFIC_SECRET_0: server}
                exporter = _expand_label(hash_name, master, b"exp master", transcript, length)
                if exporter in data:
                    secrets[EXPORTER_SECRET] = exporter
                return secrets
    return None


def _pointers(data: bytes) -> list[tuple[int, int]]:
    found = []
    for offset in range(0, len(data) - 7, 8):
        value = int.from_bytes(data[offset : offset + 8], "little")
        if _MIN_POINTER <= value < 1 << 47 and not value & 7:
            found.append((offset, value))
    return found


def _suites(read_upto: Callable[[int, int], bytes], session: bytes) -> set[int]:
    """TLS 1.2 suites a session's pointers lead to (``SSL_CIPHER.id`` = 0x0300XXXX)."""
    suites = set()
    for _, pointer in _pointers(session):
        target = read_upto(pointer, 0x40)
        for inner in range(0, len(target) - 3, 4):
            value = int.from_bytes(target[inner : inner + 4], "little")
            if value >> 16 == 0x0300:
                suite = cipher_suite(value & 0xFFFF)
                if suite is not None and not suite.tls13:
                    suites.add(suite.code)
    return suites


def master_candidates(read_upto: Callable[[int, int], bytes], data: bytes) -> list[tuple[bytes, int]]:
    """(48-byte value, suite) pairs behind the object's pointers: a size_t 48 shortly
    before a random-looking 48-byte value, in a struct that points at a TLS 1.2 suite."""
    candidates: dict[tuple[bytes, int], None] = {}
    for _, pointer in _pointers(data):
        span = read_upto(pointer, POINTED_SPAN)
        values = []
        for length_at in range(0, len(span) - 7, 8):
            if int.from_bytes(span[length_at : length_at + 8], "little") != 48:
                continue
            for at in range(length_at + 8, min(length_at + _LENGTH_BEFORE, len(span) - 48) + 1, 8):
                value = span[at : at + 48]
                if _random_looking(value):
                    values.append(value)
        if values:
            for suite in _suites(read_upto, span):
                for value in values:
                    candidates[(value, suite)] = None
    return list(candidates)


def tls12_secret(read_upto: Callable[[int, int], bytes], data: bytes, client_random: bytes, server_random: bytes,
                 find: Find) -> tuple[bytes, frozenset[int]] | None:
    """(master secret, suites) of a TLS 1.2 connection: the one master secret whose
    key block's write keys are both live in the process (one search for all
    candidates), and the suites for which they are (suites with the same PRF hash
    share key block bytes: AES-128's two keys are ChaCha20's client key)."""
    needles: dict[tuple[bytes, int], tuple[bytes, bytes]] = {}
    for master, code in master_candidates(read_upto, data):
        client, server = key_block12(cipher_suite(code), master_secret=master, client_random=client_random,  # type: ignore[arg-type]
                                     server_random=server_random)
        needles[(master, code)] = (client.key, server.key)
    if not needles:
        return None
    found = find([key for pair in needles.values() for key in pair])
    confirmed = {candidate for candidate, (client, server) in needles.items() if client in found and server in found}
    masters = {master for master, _ in confirmed}
    if len(masters) != 1:
        return None
    return masters.pop(), frozenset(code for _, code in confirmed)


class _Reader:
    def __init__(self, read_upto: Callable[[int, int], bytes]) -> None:
        self.read_upto = read_upto


def named_random(read_upto: Callable[[int, int], bytes], ssl: int, named: dict[bytes, bytes]) -> bytes | None:
    """Which of the named client randoms (first 8 bytes → random) the object at ``ssl``
    holds (4-aligned, as OpenSSL's s3.client_random): in the object, else (1.1.1's
    ``s3`` is a pointer, near the start of ``ssl_st``) behind one of the pointers in
    its first :data:`_S3_POINTER_SPAN` bytes."""
    data = read_upto(ssl, OBJECT_SPAN)
    behind = (read_upto(pointer, POINTED_SPAN) for _, pointer in _pointers(data[:_S3_POINTER_SPAN]))
    for span in (data, *behind):
        for offset in range(0, len(span) - 31, 4):
            random = named.get(span[offset : offset + 8])
            if random is not None and span[offset : offset + 32] == random:
                return random
    return None


#: How far before a client random its object may start (OpenSSL 3.x: 0x140–0x188).
OBJECT_START_SPAN = 0x1000
#: The largest heap block taken for a connection object (OpenSSL 3.x: 6–8 KiB).
_MAX_OBJECT = 0x10000


def object_starts(read_upto: Callable[[int, int], bytes], hit: int, in_library: Callable[[int], bool]) -> list[int]:
    """Where the object holding a client random found at ``hit`` may start, the
    farthest first: a 16-aligned address whose preceding word is a glibc malloc
    chunk size (not mmapped) covering the random, whose next chunk's header has
    PREV_INUSE set, and whose first four words hold a pointer ``in_library`` (the
    object's ``SSL_METHOD``)."""
    low = max(_MIN_POINTER, (hit - OBJECT_START_SPAN) & ~0xF)
    window = read_upto(low - 8, hit - low + 8 + 32)
    while len(window) < hit - low + 8:  # a page before the hit not there (never touched): from the next one
        low = ((low - 8) & ~0xFFF) + 0x1000 + 8
        if low > hit:
            return []
        window = read_upto(low - 8, hit - low + 8 + 32)
    starts = []
    for start in range(hit & ~0xF, low - 1, -16):
        at = start - low  # the size word sits at window[at : at + 8]
        size_word = int.from_bytes(window[at : at + 8], "little")
        size = size_word & ~7
        if size_word & 2 or size % 16 or not hit + 32 <= start + size - 8 or size > _MAX_OBJECT:
            continue
        head = read_upto(start, 32)
        if len(head) < 32 or not any(in_library(int.from_bytes(head[i : i + 8], "little")) for i in range(0, 32, 8)):
            continue
        following = read_upto(start - 8 + size, 8)
        if len(following) < 8:
            continue
        next_word = int.from_bytes(following, "little")
        if not next_word & 1 or (next_word & ~7) < 32 or (next_word & ~7) % 16:
            continue
        starts.append(start)
    return list(reversed(starts))


def _randoms(read_upto: Callable[[int, int], bytes], data: bytes, client_random: bytes) -> bytes | None:
    """The server random: the 32 bytes before the client random, in the object or
    (1.1.1) behind the pointer to its ``s3``."""
    for span in (data, *(read_upto(pointer, POINTED_SPAN) for _, pointer in _pointers(data))):
        position = span.find(client_random)
        if position >= 0:
            return span[position - 32 : position] if position >= 32 else None
    return None


def observe(read_upto: Callable[[int, int], bytes], ssl: int, client_random: bytes, find: Find) -> Sample | None:
    """A connection's sample — its object's bytes copied now, its secrets derived —
    or None while the object holds no finished handshake of that client random."""
    copy = SnapshotReader(_Reader(read_upto))  # type: ignore[arg-type]
    copy.capture_object(ssl)
    data = copy.read_upto(ssl, OBJECT_SPAN)
    server_random = _randoms(copy.read_upto, data, client_random)
    if server_random is None:
        return None
    secrets = tls13_secrets(data)
    if secrets is not None:
        return Sample(ssl, TLS13, None, client_random, secrets, reader=copy)
    if any(server_random):
        found = tls12_secret(copy.read_upto, data, client_random, server_random, find)
        if found is not None:
            master, suites = found
            return Sample(ssl, TLS12, next(iter(suites)) if len(suites) == 1 else None, client_random,
                          {CLIENT_RANDOM: master}, reader=copy, suites=suites)
    return None


def ready(samples: list[Sample]) -> bool:
    """Enough samples to attempt a layout: both TLS versions among at least LEARN_MIN_SAMPLES."""
    return len(samples) >= LEARN_MIN_SAMPLES and {TLS12, TLS13} <= {s.version for s in samples}


def missing(samples: list[Sample]) -> str:
    """What learning still waits for, in words."""
    versions = {s.version for s in samples}
    wanted = [name for version, name in ((TLS13, "TLS 1.3"), (TLS12, "TLS 1.2")) if version not in versions]
    text = f"{len(samples)} connections learned from"
    if wanted:
        text += f"; waiting for a {' and a '.join(wanted)} connection"
    return text


def agreeing(samples: list[Sample]) -> list[Sample]:
    """The samples that agree on where the client random is (the path most of them
    share).  An object's span read past its end holds its heap neighbours: a hooked
    object may show another connection's named random there, and its own secrets
    would be taken for that connection's.  Such a sample disagrees on the path and
    is left out (it is never published: read back through the layout, its object
    shows its own random)."""
    from bridge.harvest.calibrate import _Memories, _paths_to

    memories = _Memories(lambda address, size: b"")
    paths = [_paths_to(memories(s), s.ssl, s.client_random) | _paths_to(memories(s), s.ssl, s.client_random, depth=1)
             for s in samples]
    votes: dict[tuple[int, ...], int] = {}
    for found in paths:
        for path in found:
            votes[path] = votes.get(path, 0) + 1
    if not votes:
        return []
    best = max(votes, key=lambda path: (votes[path], -len(path), [-step for step in path]))
    return [sample for sample, found in zip(samples, paths) if best in found]


def learn_profile(build_id: str, version: str | None, library: str, samples: list[Sample]) -> Profile:
    """The layout found in the samples that agree on their client random's place (each
    with its own copy of memory), read back on every one; raises
    :class:`~bridge.errors.ProfileError` when too few agree, or the layout is ambiguous
    or inconsistent."""
    from bridge.errors import ProfileError
    from bridge.harvest.calibrate_ctypes import verify

    kept = agreeing(samples)
    if not ready(kept):
        raise ProfileError(f"{len(kept)} of {len(samples)} connections agree on where the client random is")
    samples = kept
    fields = calibrate(lambda address, size: b"", samples, both_hashes=False)
    tls13 = sum(1 for s in samples if s.version == TLS13)
    profile = Profile(build_id, version, library, fields, {
        "method": "learned from live connections (client randoms from the wire or sensors, SSL * from hooks, "
                  "secrets derived from the process's memory)",
        "resolution": "learned",
        "confirmed_by": f"{tls13} TLS 1.3 connections: secrets bound as RFC 8446 §7.1 requires; "
                        f"{len(samples) - tls13} TLS 1.2 connections: key block live (RFC 5246 §6.3); "
                        "every field read back on every connection",
        "samples": len(samples),
        "tool": f"tls-bridge {__version__}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
    })
    verify(profile, None, samples)
    return profile
