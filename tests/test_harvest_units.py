"""Harvester building blocks without targets: ELF, profiles, the chain reader,
uprobe definitions and event parsing, the calibration search's refusals."""

from __future__ import annotations

import subprocess

import pytest

from bridge.errors import ProfileError
from bridge.harvest.calibrate import Sample, calibrate
from bridge.harvest.chain import read_secrets
from bridge.harvest.elf import read_elf
from bridge.harvest.profile import MissingProfileError, Profile, ProfileStore
from bridge.harvest.uprobes import fetch_expression, join_windows, parse_event, probe_definition, snapshot_definitions
from bridge.harvest.wire_search import (
    HelloInbox,
    SearchIntake,
    WireHello,
    WireSearch,
    client_hello_random,
    WireEnd,
    request_event,
)
from bridge.keyfeed.wire import KeyRequest
from bridge.secrets import CLIENT_RANDOM, CLIENT_TRAFFIC_SECRET_0, HANDSHAKE_SECRET, SERVER_TRAFFIC_SECRET_0

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
DEBIAN_BUILD = "c0b9959017cf64b03131964573944fc72958bb2b"


def test_elf_build_id_and_symbols_agree_with_binutils():
    image = read_elf(LIBSSL)
    notes = subprocess.run(["readelf", "-n", LIBSSL], capture_output=True, text=True).stdout
    assert f"Build ID: {image.build_id}" in notes
    symbols = subprocess.run(["nm", "-D", "--defined-only", LIBSSL], capture_output=True, text=True).stdout
    nm = {line.split()[2].split("@")[0]: int(line.split()[0], 16) for line in symbols.splitlines() if " T " in line}
    for name in ("SSL_read", "SSL_write", "SSL_free", "SSL_do_handshake", "SSL_get_session"):
        assert image.functions[name] == nm[name]
        assert image.symbol_offset(name) == nm[name]  # libssl's text segment maps at its file offset
    assert image.embeds_openssl


def test_elf_version_string_and_refusals(tmp_path):
    assert read_elf("/usr/lib/x86_64-linux-gnu/libcrypto.so.3").openssl_version.startswith("OpenSSL 3.0.")
    (tmp_path / "text").write_text("not an elf")
    with pytest.raises(ProfileError, match="not an ELF file"):
        read_elf(tmp_path / "text")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ProfileError, match="empty"):
        read_elf(tmp_path / "empty")
    (tmp_path / "truncated").write_bytes(open(LIBSSL, "rb").read()[:100])
    with pytest.raises(ProfileError):
        read_elf(tmp_path / "truncated")


def test_shipped_profiles_load_and_round_trip():
    store = ProfileStore()
    assert not store.errors and len(store) >= 10
    profile = store.get(DEBIAN_BUILD)
    assert profile.fields["client_random"] == (0x160,) and profile.fields["master_key"] == (0x918, 0x50)
    assert Profile.from_json(profile.to_json()) == profile


@pytest.mark.parametrize(
    "text,message",
    [
        ("{", "not a valid profile"),
        ('{"format": 2}', "profile format"),
        ('{"format": 1, "build_id": "ab", "library": "x", "fields": {"version": ["0x0"]}}', "missing fields"),
        ('{"format": 1, "build_id": "ab", "library": "x", "fields": {"colour": ["0x0"]}}', "unknown fields"),
    ],
)
def test_malformed_profiles_are_clear_errors(text, message):
    with pytest.raises(ProfileError, match=message):
        Profile.from_json(text)


def test_a_missing_profile_names_the_build_the_version_and_the_fix():
    with pytest.raises(MissingProfileError) as caught:
        ProfileStore(shipped=False).require("ab" * 20, "/opt/app/lib/libssl.so.3", "OpenSSL 3.9.1 1 Jan 2030")
    text = str(caught.value)
    assert "ab" * 20 in text and "OpenSSL 3.9.1" in text
    assert "tls-bridge profile calibrate --libssl /opt/app/lib/libssl.so.3" in text
    with pytest.raises(MissingProfileError, match="--pid PID --keylog"):
        ProfileStore(shipped=False).require("cd" * 20, "/usr/bin/node", None)


# --- the chain reader over a fake memory -----------------------------------------------------


class FakeMemory:
    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}

    def put(self, address: int, data: bytes) -> None:
        for index, value in enumerate(data):
            self.bytes[address + index] = value

    def read(self, address: int, size: int) -> bytes:
        from bridge.harvest.memory import MemoryReadError

        if any(address + i not in self.bytes for i in range(size)):
            raise MemoryReadError("unmapped")
        return bytes(self.bytes[address + i] for i in range(size))

    def read_upto(self, address: int, size: int) -> bytes:
        out = bytearray()
        for i in range(size):
            if address + i not in self.bytes:
                break
            out.append(self.bytes[address + i])
        return bytes(out)


SSL, SESSION, CIPHER = 0x10000, 0x20000, 0x30000


def _connection(version: int, suite: int, *, secrets_len: int = 32) -> FakeMemory:
    memory = FakeMemory()
    memory.put(SSL, bytes(0x1000))
    memory.put(SESSION, bytes(0x400))
    memory.put(CIPHER, bytes(0x40))
    memory.put(SSL, version.to_bytes(4, "little"))
    memory.put(SSL + 0x160, bytes(range(1, 33)))
    memory.put(SSL + 0x918, SESSION.to_bytes(8, "little"))
    memory.put(SESSION + 0x2F8, CIPHER.to_bytes(8, "little"))
    memory.put(CIPHER + 0x18, (0x03000000 | suite).to_bytes(4, "little"))
    if version == 0x0303:
        memory.put(SESSION + 0x8, (48).to_bytes(8, "little"))
        memory.put(SESSION + 0x50, b"\x42" * 48)
    else:
        memory.put(SSL + 0x584, b"\x11" * secrets_len)
        memory.put(SSL + 0x744, b"\x22" * secrets_len)
        memory.put(SSL + 0x784, b"\x33" * secrets_len)
    return memory


def _fields(memory: FakeMemory):  # type: ignore[no-untyped-def]
    from bridge.harvest.chain import MemoryFields

    return MemoryFields(memory, ProfileStore().get(DEBIAN_BUILD), SSL)


def test_the_chain_reads_tls12_and_tls13_secrets_with_the_suites_hash_length():
    tls12 = read_secrets(_fields(_connection(0x0303, 0xC02F)))
    assert tls12.complete and tls12.secrets == {CLIENT_RANDOM: b"\x42" * 48} and tls12.client_random == bytes(range(1, 33))
    tls13 = read_secrets(_fields(_connection(0x0304, 0x1301)))
    assert tls13.complete and tls13.cipher_suite == 0x1301
    assert tls13.secrets == {HANDSHAKE_SECRET: b"\x11" * 32, CLIENT_TRAFFIC_SECRET_0: b"\x22" * 32,
                             SERVER_TRAFFIC_SECRET_0: b"\x33" * 32}
    sha384 = read_secrets(_fields(_connection(0x0304, 0x1302, secrets_len=48)))
    assert all(len(v) == 48 for v in sha384.secrets.values())


def test_the_chain_refuses_objects_that_hold_no_connection():
    fresh = _connection(0x0304, 0x1301)
    fresh.put(SSL + 0x160, bytes(32))  # no client random yet
    assert read_secrets(_fields(fresh)) is None
    garbage = _connection(0x0304, 0x1301)
    garbage.put(SSL, (0x1234).to_bytes(4, "little"))
    assert read_secrets(_fields(garbage)) is None
    handshaking = _connection(0x0304, 0x1301)
    handshaking.put(SSL + 0x744, bytes(48))  # the application secrets are not derived yet
    assert not read_secrets(_fields(handshaking)).complete
    no_session = _connection(0x0303, 0xC02F)
    no_session.put(SSL + 0x918, bytes(8))
    result = read_secrets(_fields(no_session))
    assert result is not None and not result.complete


# --- uprobes -------------------------------------------------------------------------------------


def test_fetch_expressions_follow_the_profile_paths():
    assert fetch_expression((0x160,)) == "+0x160(%di)"
    assert fetch_expression((0x918, 0x2F8, 0x18)) == "+0x18(+0x2f8(+0x918(%di)))"
    definition = probe_definition("g", "e", LIBSSL, 0x3B350, ProfileStore().get(DEBIAN_BUILD))
    assert definition.startswith(f"p:g/e {LIBSSL}:0x3b350 ssl=%di:x64 version=+0x0(%di):u32")
    assert "master_key=+0x50(+0x918(%di)):x64[6]" in definition
    assert probe_definition("g", "e", LIBSSL, 1, None).endswith("ssl=%di:x64")


def test_trace_pipe_lines_parse_and_faults_are_none():
    line = ("         openssl-14280   (  14270) [000] DBZff  1874.192268: SSL_free_0: (0x7ff12b345350) "
            "ssl=0x562967014ea0 version=772 client_random={0x807060504030201,0x100f0e0d0c0b0a09,0x0,0x0} "
            "master_key=(fault) cipher_id=50336513")
    event = parse_event(line, {"SSL_free_0": ("SSL_free", LIBSSL)})
    assert (event.tgid, event.tid, event.comm, event.function, event.ssl) == (14270, 14280, "openssl", "SSL_free",
                                                                            0x562967014EA0)
    assert event.field("client_random")[:16] == bytes(range(1, 17))
    assert event.field("master_key") is None and event.field("version") == (772).to_bytes(4, "little")
    assert event.timestamp == pytest.approx(1874.192268)
    assert parse_event("# tracer: nop", {}) is None
    assert parse_event(line, {}) is None  # another harvester's event


def test_memory_copied_at_hook_time_is_split_over_probes_and_joined_up_to_a_fault():
    """A calibration probe copies 0x3000 bytes at the SSL *: 512-byte array arguments,
    at most 5 per probe (the kernel's 3 KiB per event), joined back in order."""
    probes = snapshot_definitions("g", "SSL_free_0", LIBSSL, 0x1234, 0x3000)
    assert [name for name, _ in probes] == ["SSL_free_0", *(f"SSL_free_0_m{i}" for i in range(1, 5))]
    assert all(definition.count(":x64[64]") <= 5 for _, definition in probes)
    assert "m2e00=+0x2e00(%di):x64[64]" in probes[-1][1]
    words = ",".join(hex(i) for i in range(64))
    line = ("         node-7   (  7) [001] .....  10.5: SSL_free_0_m1: (0x7f) "
            f"ssl=0x1000 ma00={{{words}}} mc00=(fault)")
    event = parse_event(line, {"SSL_free_0_m1": ("SSL_free", LIBSSL)})
    assert event.windows[0xA00][:16] == bytes(8) + (1).to_bytes(8, "little") and event.windows[0xC00] is None
    window = bytes(range(256)) * 2
    assert join_windows({0: window, 0x200: window, 0x400: None, 0x600: window}) == window * 2
    assert join_windows({0x200: window}) == b""


def test_client_hello_random():
    record = bytes([22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3]) + bytes(range(32)) + bytes(40)
    assert client_hello_random(record) == bytes(range(32))
    assert client_hello_random(record[:40]) is None
    assert client_hello_random(b"\x17" + record[1:]) is None


# --- calibration refuses what it cannot tell apart -----------------------------------------------


def _calibration_samples(duplicate_random: bool) -> tuple[FakeMemory, list[Sample]]:
    memory = FakeMemory()
    samples = []
    for index, (version, suite, length) in enumerate([(0x0304, 0x1301, 32), (0x0304, 0x1302, 48), (0x0303, 0xC02F, 48)]):
        base = 0x100000 * (index + 1)
        conn = _connection(version, suite, secrets_len=length)
        for address, value in conn.bytes.items():
            relative = address - SSL if address < SESSION else address - SESSION + 0x8000 if address < CIPHER else address - CIPHER + 0x9000
            memory.bytes[base + relative] = value
        memory.put(base + 0x918, (base + 0x8000).to_bytes(8, "little"))
        memory.put(base + 0x8000 + 0x2F8, (base + 0x9000).to_bytes(8, "little"))
        random = bytes([index + 1]) * 32
        memory.put(base + 0x160, random)
        if duplicate_random:
            memory.put(base + 0x200, random)  # the same value at a second place in every sample
        secrets = {CLIENT_RANDOM: b"\x42" * 48} if version == 0x0303 else {
            CLIENT_TRAFFIC_SECRET_0: b"\x22" * length, SERVER_TRAFFIC_SECRET_0: b"\x33" * length}
        samples.append(Sample(base, version, suite, random, secrets))
    return memory, samples


def test_calibration_refuses_an_ambiguous_field():
    memory, samples = _calibration_samples(duplicate_random=True)
    with pytest.raises(ProfileError, match="'client_random' is ambiguous .*0x160.*0x200.*refusing"):
        calibrate(memory.read_upto, samples)


def test_calibration_needs_both_versions_and_both_hash_lengths():
    memory, samples = _calibration_samples(duplicate_random=False)
    with pytest.raises(ProfileError, match="TLS 1.2 and TLS 1.3"):
        calibrate(memory.read_upto, samples[:2])
    with pytest.raises(ProfileError, match="SHA-256 and a SHA-384"):
        calibrate(memory.read_upto, [samples[0], samples[2]])


# --- the search intake: bounded, each connection once ---------------------------------------------


def _hello(index: int, trigger: str = "wire") -> WireHello:
    return WireHello(index.to_bytes(32, "big"), (bytes(4), 40000 + index), (bytes(4), 443), trigger)


def test_a_connection_named_by_the_wire_and_by_a_sensor_is_searched_once():
    search = WireSearch(lambda: {}, lambda *args: None, max_pending=3)
    request = KeyRequest(_hello(1).client_random, _hello(1).client, _hello(1).server)
    search.add(_hello(1), 0.0)
    search.add(request_event(request), 0.0)  # the same connection, asked for by a sensor
    search.add(_hello(1), 0.0)  # a retransmitted ClientHello
    assert search.pending == 1
    assert (search.intake.counts.named, search.intake.counts.requests, search.intake.counts.duplicates) == (3, 1, 2)
    for index in range(2, 6):
        search.add(request_event(KeyRequest(_hello(index).client_random, _hello(index).client, _hello(index).server)),
                   0.0)
    assert search.pending == 3 and search.intake.counts.dropped == 2  # the bound holds, the excess is counted
    assert search.intake.counts.searched == search.pending == 3
    search.step(10.0)  # past the deadline, no target owns them: counted, gone
    assert search.pending == 0 and search.stats.not_owned == 3


def test_a_connection_a_hook_published_already_is_not_searched():
    hooked = {_hello(7).client_random}
    search = WireSearch(lambda: {}, lambda *args: None, published=hooked.__contains__)
    search.add(_hello(7, "request"), 0.0)
    search.add(_hello(8, "request"), 0.0)
    assert search.pending == 1 and search.intake.counts.duplicates == 1


def test_search_intake_remembers_a_bounded_number_of_connections():
    intake = SearchIntake(max_pending=10, remember=4)
    assert [intake.admit(_hello(i), 0) for i in range(6)] == [True] * 6
    assert intake.admit(_hello(5), 0) is False and intake.counts.duplicates == 1
    assert intake.admit(_hello(0), 0) is True  # forgotten: at most `remember` are kept
    assert intake.admit(_hello(9), 10) is False and intake.counts.dropped == 1


def test_the_inbox_between_threads_is_bounded_and_counts_what_it_refuses():
    import threading

    inbox = HelloInbox(limit=100)
    threads = [threading.Thread(target=lambda base=base: [inbox.put(_hello(base + i)) for i in range(60)])
               for base in (0, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = inbox.take()
    assert len(taken) == 100 and inbox.overflow == 20 and inbox.take() == []
    assert len({hello.client_random for hello in taken}) == 100


def test_a_connection_that_ends_unfound_stops_being_searched_after_the_grace():
    search = WireSearch(lambda: {}, lambda *args: None)
    for index in (1, 2, 3):
        search.add(_hello(index), 0.0)
    # the sensor says connection 1 ended (its request, again, with ended); the wire saw 2's RST, server first
    first = _hello(1)
    search.add(request_event(KeyRequest(first.client_random, first.client, first.server, ended=True)), 0.1)
    search.add(WireEnd(_hello(2).server, _hello(2).client), 0.1)
    search.step(0.12)  # within the grace: still searched
    assert search.pending == 3
    search.step(0.2)
    assert search.pending == 1 and search.stats.closed_first == 2
    search.add(WireEnd((bytes(4), 1), (bytes(4), 2)), 0.3)  # the end of a connection nobody searches: nothing
    search.step(6.0)
    assert search.pending == 0 and search.stats.not_owned == 1


# --- learning a layout (bridge/harvest/learn.py) ------------------------------------------------

# RFC 8448 §3 (Simple 1-RTT Handshake, TLS_AES_128_GCM_SHA256): "{server} extract secret "master""
RFC8448_MASTER_SECRET = bytes.fromhex("18df06843d13a08bf2a449844c5f8a478001bc4d4c627984d5a41da8d0402919")
# RFC 8448 §3, "{server} derive secret "tls13 c ap traffic"": hash (Transcript-Hash up to the server Finished)
RFC8448_SERVER_FINISHED_HASH = bytes.fromhex("9608102a0f1ccc6db6250b7b7e417b1a000eaada3daae4777a7686c9ff83df13")
# RFC 8448 §3, "{server} derive secret "tls13 exp master"": expanded
RFC8448_EXPORTER_MASTER_SECRET = bytes.fromhex("fe22f881176eda18eb8f44529e6792c50c9a3f89452f68d8ae311b4309d3cf50")


def _rfc8448_object(*, transcript: bool = True) -> bytes:
    """An SSL object's bytes as OpenSSL lays them out in spirit: other fields, the
    handshake and master secrets, the transcript hash, the traffic secrets."""
    from tests.support import rfc8448

    data = bytearray(bytes(range(7, 256)) * 48)[:0x3000]
    for offset, value in ((0x200, rfc8448.HANDSHAKE_SECRET), (0x260, RFC8448_MASTER_SECRET),
                          (0x2C0, RFC8448_SERVER_FINISHED_HASH if transcript else bytes(32)),
                          (0x400, rfc8448.CLIENT_APPLICATION_TRAFFIC_SECRET_0),
                          (0x440, rfc8448.SERVER_APPLICATION_TRAFFIC_SECRET_0),
                          (0x480, RFC8448_EXPORTER_MASTER_SECRET), (0x1A0, rfc8448.CLIENT_RANDOM)):
        data[offset : offset + len(value)] = value
    return bytes(data)


def test_learning_derives_rfc8448s_traffic_secrets_from_an_objects_bytes_alone():
    from bridge.harvest.learn import tls13_secrets
    from bridge.secrets import EXPORTER_SECRET
    from tests.support import rfc8448

    assert tls13_secrets(_rfc8448_object()) == {
        CLIENT_TRAFFIC_SECRET_0: rfc8448.CLIENT_APPLICATION_TRAFFIC_SECRET_0,
        SERVER_TRAFFIC_SECRET_0: rfc8448.SERVER_APPLICATION_TRAFFIC_SECRET_0,
        EXPORTER_SECRET: RFC8448_EXPORTER_MASTER_SECRET,
    }
    # Without the transcript hash nothing binds the traffic secrets: nothing is derived.
    assert tls13_secrets(_rfc8448_object(transcript=False)) is None


def test_learning_takes_the_one_tls12_master_secret_whose_key_block_is_live():
    """Two session-like structs behind the object's pointers, each a size_t 48 before
    a random-looking value and a pointer to an SSL_CIPHER: only the master whose key
    block's write keys the process holds is taken."""
    import random

    from bridge.harvest.learn import tls12_secret
    from bridge.tls.ciphersuites import cipher_suite
    from bridge.tls.keyschedule import key_block12

    rng = random.Random(1204)  # fixed values (os.urandom once gave one candidate, not two: CI)
    client_random, server_random = rng.randbytes(32), rng.randbytes(32)
    right, wrong = rng.randbytes(48), rng.randbytes(48)
    cipher_at = 0x7F0000001000
    memory = {cipher_at: bytes(0x18) + (0x0300C02B).to_bytes(4, "little") + bytes(0x24)}
    obj = bytearray(0x3000)
    for slot, (session_at, master) in enumerate(((0x7F0000002000, wrong), (0x7F0000003000, right))):
        session = bytearray(0x800)
        session[0x8:0x10] = (48).to_bytes(8, "little")
        session[0x50:0x80] = master
        session[0x300:0x308] = cipher_at.to_bytes(8, "little")
        memory[session_at] = bytes(session)
        obj[0x900 + 8 * slot : 0x908 + 8 * slot] = session_at.to_bytes(8, "little")
    client, server = key_block12(cipher_suite(0xC02B), master_secret=right, client_random=client_random,
                                 server_random=server_random)
    live = {client.key, server.key}

    def read_upto(address: int, size: int) -> bytes:
        return memory.get(address, b"")[:size]

    searches = []

    def find(needles: list[bytes]) -> set[bytes]:
        searches.append(len(needles))
        return live & set(needles)

    assert tls12_secret(read_upto, bytes(obj), client_random, server_random, find) == (right, frozenset({0xC02B}))
    assert searches == [4]  # every candidate's two keys in one search
    live.clear()
    assert tls12_secret(read_upto, bytes(obj), client_random, server_random, find) is None


def test_a_learning_layout_publishes_nothing_until_both_versions_agree():
    """The resolver's side of learning: no candidate → learning; TLS 1.3 samples alone
    write nothing (what it waits for is in the status); an inconsistent set is refused."""
    from bridge.harvest.resolve import LEARNED, LEARNING, LayoutResolver

    resolver = LayoutResolver(ProfileStore([], shipped=False), methods=("candidates", "learn"))
    layout = resolver.layout("ab" * 20, "libssl.so.3", "OpenSSL 3.9.9")
    assert layout.state == LEARNING and not layout.profiles() and layout.harvestable
    tls13 = [Sample(0x1000 * (i + 1), 0x0304, None, bytes([i]) * 32, {CLIENT_TRAFFIC_SECRET_0: bytes([9]) * 32})
             for i in range(3)]
    for sample in tls13:
        assert resolver.learn(layout, 1, sample) is None
    assert resolver.learn(layout, 1, tls13[0]) is None and len(layout.learning) == 3  # the same object once
    assert "waiting for a TLS 1.2 connection" in layout.status()["reason"]
    # A TLS 1.2 sample whose memory holds nothing: calibration cannot place any field.
    assert resolver.learn(layout, 1, Sample(0x9000, 0x0303, 0xC02B, bytes([7]) * 32,
                                            {CLIENT_RANDOM: bytes([5]) * 48})) is None
    assert layout.state == LEARNING and layout.origin != LEARNED and "not yet unambiguous" in layout.reason
    off = LayoutResolver(ProfileStore([], shipped=False), methods=("candidates",))
    assert off.layout("cd" * 20, "libssl.so.3", None).state == "failed"


def test_learning_leaves_out_an_object_that_shows_another_connections_random_past_its_end():
    """Three objects hold their connection's random at 0x160; a fourth shows a named
    random only at 0x2800, in the heap neighbour its span reads past its end: left out."""
    import os

    from bridge.harvest.learn import agreeing

    class Copy:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def read_upto(self, address: int, size: int) -> bytes:
            return self.data[:size] if address == 0x10000 else b""

    def sample(at: int) -> Sample:
        random, data = os.urandom(32), bytearray(0x3000)
        data[at : at + 32] = random
        return Sample(0x10000, 0x0304, None, random, {}, reader=Copy(bytes(data)))

    good = [sample(0x160) for _ in range(3)]
    stray = sample(0x2800)
    assert agreeing([*good[:2], stray, good[2]]) == good


def test_learning_keeps_a_bounded_number_of_connections_of_one_version():
    """Each sample holds a copy of its object's memory: a build that only ever shows
    TLS 1.3 does not make the harvester grow."""
    from bridge.harvest.learn import LEARN_MAX_SAMPLES
    from bridge.harvest.resolve import LayoutResolver

    resolver = LayoutResolver(ProfileStore([], shipped=False), methods=("learn",))
    layout = resolver.layout("ef" * 20, "libssl.so.3", None)
    for i in range(3 * LEARN_MAX_SAMPLES):
        resolver.learn(layout, 1, Sample(0x1000 + 0x100 * i, 0x0304, None, i.to_bytes(32, "big"), {}))
    assert len(layout.learning) == LEARN_MAX_SAMPLES // 2 and layout.state == "learning"
