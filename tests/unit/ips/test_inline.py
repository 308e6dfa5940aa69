"""The inline IPS's decisions on the committed captures: each packet as the kernel
queues it, a stand-in for Suricata in IPS mode that passes or drops synthetic
segments and lets the probes through (the real one: tests/test_ips_inline.py)."""

from __future__ import annotations

import struct

import pytest

from bridge.engine import EngineSettings
from bridge.engine.packets import RST
from bridge.ips.inline import InlineIps, InlineSettings, InlineSettingsError, parse_output_frame, probe_frame
from bridge.ips.nfqueue import NF_ACCEPT, NF_DROP
from bridge.keys.store import KeyStore
from bridge.reinject.synthetic import internet_checksum
from tests.support.fixtures import Fixture

T0 = 1_800_000_000.0


class Suricata:
    """Passes every synthetic frame but data segments ``drop`` matches; after a drop the
    flow's later frames are dropped too, as Suricata's flow drop does."""

    def __init__(self, drop: bytes | None = None) -> None:
        self.drop, self.dropped_flows, self.seen = drop, set(), b""

    def step(self, core: InlineIps, now: float) -> None:
        frames, core.out.to_suricata = core.out.to_suricata, []
        for frame in frames:
            parsed = parse_output_frame(frame)
            flow = frame[26:38]  # addresses and ports of an IPv4 frame
            if parsed is not None and parsed[0] == "data":
                self.seen += frame[54:]
                if self.drop is not None and self.drop in frame:
                    self.dropped_flows.add(flow)
            if flow in self.dropped_flows:
                continue
            core.from_suricata(frame, now)
        number = core.probe()
        if number is not None:
            core.from_suricata(probe_frame(number, b"\x02" * 6, b"\x04" * 6), now)


class LossySuricata(Suricata):
    """Passes everything, but the first ``times`` copies of some data segments never reach
    it (a full ring or backlog on a loaded host): what comes out is in order, with holes."""

    def __init__(self, lose, times: int = 1) -> None:
        super().__init__()
        self.lose, self.times, self.lost = lose, times, {}

    def step(self, core: InlineIps, now: float) -> None:
        kept = []
        for frame in core.out.to_suricata:
            parsed = parse_output_frame(frame)
            if parsed is not None and parsed[0] == "data" and self.lose(parsed[1]) and \
                    self.lost.get(parsed[1], 0) < self.times:
                self.lost[parsed[1]] = self.lost.get(parsed[1], 0) + 1
                continue
            kept.append(frame)
        core.out.to_suricata = kept
        super().step(core, now)


def _packets(name: str) -> list[bytes]:
    return [frame.data[14:] for frame in Fixture(name).frames()]  # Ethernet off: what the queue hands over


def _run(core: InlineIps, packets: list[bytes], suricata: Suricata, *, step: float = 0.001):
    """Queue each packet; return {packet id: verdict} and the ids each packet's verdict
    was still missing right after it was queued (held)."""
    verdicts: dict[int, int] = {}
    held = []
    now = T0
    for packet_id, packet in enumerate(packets, 1):
        now += step
        core.packet(packet_id, packet, now)
        verdicts.update(core.out.verdicts)
        core.out.verdicts = []
        if packet_id not in verdicts:
            held.append(packet_id)
        suricata.step(core, now)
        core.tick(now)
        suricata.step(core, now)
        verdicts.update(core.out.verdicts)
        core.out.verdicts = []
    return verdicts, held


@pytest.mark.parametrize("name", ["tls13-http1", "tls12-gcm-h2", "tls12-cbc-resumed", "tls13-keyupdate"])
def test_every_packet_passes_once_suricata_passed_its_plaintext(name):
    """TLS 1.3 and 1.2, HTTP/2, a TLS 1.2 connection resumed by session id (its secrets
    come from the first one's), key updates."""
    fixture = Fixture(name)
    core = InlineIps(fixture.store(), InlineSettings())
    suricata = Suricata()
    verdicts, held = _run(core, _packets(name), suricata)
    assert verdicts == {i: NF_ACCEPT for i in range(1, len(_packets(name)) + 1)}
    assert held and core.counters.held == len(held) == core.counters.released
    assert core.counters.verdicts_passed >= 2 and core.counters.dropped == 0
    expected = fixture.expected
    total = sum(c["c2s"]["bytes"] + c["s2c"]["bytes"] for c in expected)
    assert len(suricata.seen) == total  # all plaintext was judged
    core.close(T0 + 10)
    lines = {line["client"]: line for line in core.out.flows}
    for connection in expected:
        line = lines[connection["client"]]
        assert line["status"] == "decrypted" and line["c2s"]["sha256"] == connection["c2s"]["sha256"]
        assert line["ips"]["verdict"] == "passed"
    assert sum(line["ips"]["held_packets"] for line in lines.values()) == len(held)


def test_segments_after_a_hole_wait_for_it_and_everything_is_judged():
    """Two data segments of the response swapped (the gateway saw them out of order)."""
    fixture = Fixture("tls13-http1")
    packets = _packets("tls13-http1")
    server_data = [i for i, p in enumerate(packets) if p[20:22] == packets[1][20:22] and len(p) > 52 + 100]
    a, b = server_data[-2], server_data[-1]
    assert b == a + 1, server_data
    packets[a], packets[b] = packets[b], packets[a]
    core = InlineIps(fixture.store(), InlineSettings())
    suricata = Suricata()
    verdicts, held = _run(core, packets, suricata)
    assert verdicts == {i: NF_ACCEPT for i in range(1, len(packets) + 1)} and a + 1 in held  # the early one waited
    expected = fixture.expected[0]
    assert len(suricata.seen) == expected["c2s"]["bytes"] + expected["s2c"]["bytes"]


def test_handshake_packets_are_never_held():
    core = InlineIps(Fixture("tls13-http1").store(), InlineSettings())
    packets = _packets("tls13-http1")
    _verdicts, held = _run(core, packets, Suricata())
    first_held = packets[held[0] - 1]
    ihl = (first_held[0] & 15) * 4
    payload = first_held[ihl + (first_held[ihl + 12] >> 4) * 4:]
    assert payload[:1] == b"\x17"  # application data, after the whole handshake (TLS 1.3's encrypted one too)
    assert all(packets[i - 1][ihl + 13] & 0x02 == 0 for i in held)  # no SYN


def test_a_dropped_plaintext_drops_its_packet_and_resets_both_ends():
    core = InlineIps(Fixture("tls13-http1").store(), InlineSettings())
    packets = _packets("tls13-http1")
    verdicts, held = _run(core, packets, Suricata(drop=b"GET /"))
    dropped = [i for i, v in verdicts.items() if v == NF_DROP]
    assert dropped and dropped[0] == held[0]  # the request's packet, and everything after it
    assert all(v == NF_ACCEPT for i, v in verdicts.items() if i < held[0])
    assert core.counters.cuts == 1 and len(core.out.resets) == 2
    client, server = (packets[0][12:16], packets[0][16:20])
    for destination, packet in core.out.resets:
        assert packet[33] & RST and internet_checksum(packet[:20]) == 0
        assert packet[16:20] in (client, server)
    log = [r for r in core.out.log if r["event"] == "cut"]
    assert log and log[0]["why"] == "suricata dropped the plaintext" and log[0]["resets_sent"] == 2
    core.close(T0 + 10)
    (line,) = core.out.flows
    assert line["ips"]["verdict"] == "dropped" and line["ended_by"] == "rst"


@pytest.mark.parametrize("name", ["tls13-http1", "tls12-gcm-h2"])
def test_a_segment_lost_on_its_way_to_suricata_is_sent_again_not_taken_for_a_drop(name):
    """Every other data segment is lost once before Suricata sees it: its probe comes back
    without it, it is sent again behind a new probe, and everything passes, nothing cut."""
    core = InlineIps(Fixture(name).store(), InlineSettings())
    suricata = LossySuricata(lambda key: key[4] % 2 == 0)
    packets = _packets(name)
    verdicts, _held = _run(core, packets, suricata)
    assert suricata.lost and core.counters.resent == len(suricata.lost)
    assert verdicts == {i: NF_ACCEPT for i in range(1, len(packets) + 1)}
    assert core.counters.cuts == 0 and core.counters.verdicts_dropped == 0 and not core.out.resets
    expected = Fixture(name).expected
    assert len(suricata.seen) == sum(c["c2s"]["bytes"] + c["s2c"]["bytes"] for c in expected)  # each byte once


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_a_segment_missing_after_every_retry_counts_as_dropped(retries):
    """Lost as often as it is sent: after --verdict-retries resends it is Suricata's drop."""
    core = InlineIps(Fixture("tls13-http1").store(), InlineSettings(verdict_retries=retries))
    request: list[tuple] = []

    def first_data_segment(key: tuple) -> bool:  # the request's
        if not request:
            request.append(key)
        return key == request[0]

    suricata = LossySuricata(first_data_segment, times=99)
    verdicts, held = _run(core, _packets("tls13-http1"), suricata)
    assert suricata.lost == {request[0]: retries + 1} and core.counters.resent == retries
    assert core.counters.cuts == 1 and verdicts[held[0]] == NF_DROP
    log = [r for r in core.out.log if r["event"] == "cut"]
    assert log and log[0]["why"] == "suricata dropped the plaintext"


def test_verdict_retries_are_bounded():
    with pytest.raises(InlineSettingsError):
        InlineSettings(verdict_retries=-1)
    with pytest.raises(InlineSettingsError):
        InlineSettings(verdict_retries=11)


def test_a_connection_started_while_another_packet_is_routed_is_bound_to_its_own():
    """A SYN nobody answered, then the fixture's connection with room for one: its SYN
    ends the unanswered one (the engine's compiled front reports it started and finished
    while routing the new SYN); the new connection is still judged and passes whole."""
    from scapy.layers.inet import IP, TCP

    packets = _packets("tls13-http1")
    first = IP(packets[0])
    unanswered = bytes(IP(src=first.src, dst=first.dst) / TCP(sport=first[TCP].sport + 1, dport=first[TCP].dport,
                                                               seq=1, flags="S"))
    core = InlineIps(Fixture("tls13-http1").store(), InlineSettings(), engine_settings=EngineSettings(max_flows=1))
    suricata = Suricata()
    verdicts, held = _run(core, [unanswered, *packets], suricata)
    assert verdicts == {i: NF_ACCEPT for i in range(1, len(packets) + 2)} and held
    assert core.counters.verdicts_passed >= 2 and core.counters.cuts == 0
    core.close(T0 + 10)
    lines = {line["client"]: line for line in core.out.flows}
    expected = Fixture("tls13-http1").expected[0]
    assert lines[expected["client"]]["ips"]["verdict"] == "passed"
    assert lines[expected["client"]]["c2s"]["sha256"] == expected["c2s"]["sha256"]
    assert len(lines) == 2 and lines[f"{first.src}:{first[TCP].sport + 1}"]["ended_by"] == "evicted"


@pytest.mark.parametrize("policy", ["pass-flow", "drop-flow"])
def test_without_secrets_the_hold_budget_ends_in_the_policy(policy):
    core = InlineIps(KeyStore(), InlineSettings(hold_budget=2.0, keys_policy=policy))
    packets = _packets("tls13-http1")
    verdicts, held = _run(core, packets, Suricata())
    assert held and not [i for i in held if i in verdicts]  # waiting for secrets
    core.tick(T0 + 2.5)
    decided = dict(core.out.verdicts)
    assert {decided[i] for i in held} == {NF_ACCEPT if policy == "pass-flow" else NF_DROP}
    assert core.counters.policy == {f"keys:{policy}": 1}
    assert core.counters.fail_open == (policy == "pass-flow")


def test_secrets_that_come_late_are_used_and_the_packets_then_judged():
    fixture = Fixture("tls13-http1")
    store = KeyStore()
    core = InlineIps(store, InlineSettings(hold_budget=5.0))
    packets = _packets("tls13-http1")
    suricata = Suricata()
    verdicts, held = _run(core, packets, suricata)
    assert held and not [i for i in held if i in verdicts] and not suricata.seen
    for entry in fixture.entries():
        store.add_entry(entry)
    core.tick(T0 + 3)  # three seconds after the last packet: Suricata's time starts now, not then
    core.tick(T0 + 3.002)
    assert not dict(core.out.verdicts)  # decrypted now, not released before Suricata's verdict
    assert core.counters.cuts == 0 and not core.counters.policy
    suricata.step(core, T0 + 3.003)
    assert {dict(core.out.verdicts)[i] for i in held} == {NF_ACCEPT} and suricata.seen


def _tcp(src: str, sport: int, dst: str, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    s, d = bytes(map(int, src.split("."))), bytes(map(int, dst.split(".")))
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, s, d))
    struct.pack_into("!H", ip, 10, internet_checksum(ip))
    return bytes(ip) + tcp


def test_what_is_not_tls_passes_untouched():
    core = InlineIps(KeyStore())
    packets = [_tcp("10.0.0.1", 40000, "10.0.0.2", 443, 100, 0x02), _tcp("10.0.0.2", 443, "10.0.0.1", 40000, 500, 0x12),
               _tcp("10.0.0.1", 40000, "10.0.0.2", 443, 101, 0x18, b"GET / HTTP/1.1\r\n\r\n"),
               _tcp("10.0.0.2", 443, "10.0.0.1", 40000, 501, 0x18, b"HTTP/1.1 200 OK\r\n\r\n")]
    for packet_id, packet in enumerate(packets, 1):
        core.packet(packet_id, packet, T0 + packet_id)
    assert core.out.verdicts == [(i, NF_ACCEPT) for i in range(1, 5)] and core.counters.held == 0
    core.close(T0 + 10)
    assert core.out.flows[0]["ips"]["verdict"] == "unmonitored" and core.out.flows[0]["ips"]["reason"] == "not TLS"


def _waiting_connection(core: InlineIps, port: int, records: int, first_id: int) -> int:
    """A connection whose records wait for secrets that never come: returns the next packet id."""
    client, server = ("10.0.0.1", port), ("10.0.0.2", 443)
    body = b"\x03\x03" + bytes(32) + b"\x00"
    body = b"\x01" + len(body).to_bytes(3, "big") + body
    hello = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    core.packet(first_id, _tcp(*client, *server, 1000, 0x02), T0)
    core.packet(first_id + 1, _tcp(*server, *client, 5000, 0x12), T0)
    core.packet(first_id + 2, _tcp(*client, *server, 1001, 0x18, hello), T0)
    seq, packet_id = 1001 + len(hello), first_id + 3
    record = b"\x17\x03\x03\x05\x00" + bytes(1280)
    for _ in range(records):
        core.packet(packet_id, _tcp(*client, *server, seq, 0x18, record), T0 + packet_id / 1000)
        seq += len(record)
        packet_id += 1
    return packet_id


def test_holding_memory_is_bounded_in_all_and_the_connection_over_it_pays():
    core = InlineIps(KeyStore(), InlineSettings(flow_memcap=65536, memcap=100_000, hold_budget=60,
                                                memcap_policy="pass-flow"))
    next_id = _waiting_connection(core, 40010, 40, 1)  # ~53 KB held: under both bounds
    assert core.counters.policy == {} and core.held_bytes > 50_000
    _waiting_connection(core, 40011, 40, next_id)  # pushes the total over: this one is released
    assert core.counters.policy == {"memcap:pass-flow": 1} and core.counters.fail_open == 1
    assert 50_000 < core.held_bytes <= 100_000  # the first still waits, untouched
    core.close(T0 + 10)
    verdicts = {f["client"]: f["ips"]["verdict"] for f in core.out.flows}
    assert verdicts == {"10.0.0.1:40011": "uninspected", "10.0.0.1:40010": "dropped"}  # the latter: at close


def test_holding_memory_is_bounded_per_connection():
    """Records that wait for secrets that never come: over the connection's memcap the
    policy cuts it at once, not at the end of the hold budget."""
    core = InlineIps(KeyStore(), InlineSettings(flow_memcap=65536, hold_budget=60))
    client, server = ("10.0.0.1", 40001), ("10.0.0.2", 443)
    body = b"\x03\x03" + bytes(32) + b"\x00"
    body = b"\x01" + len(body).to_bytes(3, "big") + body
    hello = b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body
    core.packet(1, _tcp(*client, *server, 1000, 0x02), T0)
    core.packet(2, _tcp(*server, *client, 5000, 0x12), T0)
    core.packet(3, _tcp(*client, *server, 1001, 0x18, hello), T0)
    seq, packet_id = 1001 + len(hello), 4
    record = b"\x17\x03\x03\x05\x00" + bytes(1280)  # one record per segment: each completes application data
    while core.counters.cuts == 0 and packet_id < 200:
        core.packet(packet_id, _tcp(*client, *server, seq, 0x18, record), T0 + packet_id / 1000)
        seq += len(record)
        packet_id += 1
    assert core.counters.cuts == 1 and core.counters.policy == {"memcap:drop-flow": 1}
    assert 65536 // 1325 <= core.counters.held <= 65536 // 1325 + 2 and core.held_bytes == 0



def _wrong_entries(name: str, labels: tuple[str, ...]) -> list:
    """The fixture's secrets with those of ``labels`` corrupted (one bit of each flipped)."""
    import dataclasses

    return [dataclasses.replace(e, secret=e.secret[:-1] + bytes([e.secret[-1] ^ 1])) if e.label in labels else e
            for e in Fixture(name).entries()]


def _wrong_store(name: str, labels: tuple[str, ...]) -> KeyStore:
    store = KeyStore()
    for entry in _wrong_entries(name, labels):
        store.add_entry(entry)
    return store


WRONG = [("tls13-http1", ("CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0")),  # the handshake decrypts
         ("tls12-gcm-h2", ("CLIENT_RANDOM",))]  # the Finished already fails


@pytest.mark.parametrize("name,labels", WRONG, ids=[w[0] for w in WRONG])
@pytest.mark.parametrize("policy", ["pass-flow", "drop-flow"])
def test_a_record_that_fails_to_decrypt_follows_the_decrypt_policy(name, labels, policy):
    """Secrets present but wrong: no record passes as judged; pass-flow releases the
    connection uninspected, drop-flow drops and resets; logged and counted."""
    core = InlineIps(_wrong_store(name, labels), InlineSettings(decrypt_policy=policy))
    suricata = Suricata()
    packets = _packets(name)
    verdicts, held = _run(core, packets, suricata)
    assert core.counters.held >= 1 and not suricata.seen  # nothing was decrypted, so nothing was judged
    assert core.counters.decrypt_failures == 1 and core.counters.verdicts_passed == 0
    assert core.counters.policy == {f"decrypt:{policy}": 1}
    if policy == "pass-flow":  # held, then released by the policy in the same step
        assert verdicts == {i: NF_ACCEPT for i in range(1, len(packets) + 1)}
        assert core.counters.fail_open == 1 and core.counters.cuts == 0
        assert core.counters.released == core.counters.held
    else:
        first = min(i for i, v in verdicts.items() if v == NF_DROP)  # the first application data record's end
        assert all(verdicts[i] == NF_ACCEPT for i in range(1, first))
        assert verdicts[first] == NF_DROP and all(verdicts[i] == NF_DROP for i in range(first, len(packets) + 1))
        assert core.counters.fail_closed == 1 and core.counters.cuts == 1 and len(core.out.resets) == 2
    (policy_line,) = [r for r in core.out.log if r["event"] == "policy"]
    assert policy_line["policy"] == f"decrypt:{policy}" and "wrong_key" in policy_line["why"], policy_line
    core.close(T0 + 10)
    (line,) = core.out.flows
    assert line["status"] == "wrong_key"
    assert line["ips"]["verdict"] == ("uninspected" if policy == "pass-flow" else "dropped")
    assert "wrong_key" in line["ips"]["reason"] and line["ips"]["policies"][0].startswith(f"decrypt:{policy}")


def test_secrets_that_come_late_and_are_wrong_follow_the_decrypt_policy():
    """The records waited for secrets; the secrets that came do not decrypt them: dropped
    (the default), not passed as if judged."""
    name, labels = WRONG[0]
    store = KeyStore()
    core = InlineIps(store, InlineSettings(hold_budget=5.0))
    suricata = Suricata()
    verdicts, held = _run(core, _packets(name), suricata)
    assert held and not [i for i in held if i in verdicts]
    for entry in _wrong_entries(name, labels):
        store.add_entry(entry)
    core.tick(T0 + 3)
    suricata.step(core, T0 + 3.001)
    core.tick(T0 + 3.002)
    decided = dict(core.out.verdicts)
    assert {decided[i] for i in held} == {NF_DROP} and not suricata.seen
    assert core.counters.policy == {"decrypt:drop-flow": 1} and core.counters.cuts == 1


class SilentSuricata(Suricata):
    """A Suricata that takes the frames and never lets anything out (hung, or gone)."""

    def step(self, core: InlineIps, now: float) -> None:
        core.out.to_suricata = []
        core.probe()


@pytest.mark.parametrize("policy", ["pass-flow", "drop-flow"])
def test_a_suricata_that_does_not_answer_ends_in_the_verdict_policy(policy):
    core = InlineIps(Fixture("tls13-http1").store(), InlineSettings(verdict_timeout=1.0, verdict_policy=policy))
    packets = _packets("tls13-http1")
    verdicts, held = _run(core, packets, SilentSuricata())
    assert held and not [i for i in held if i in verdicts]  # waiting for Suricata
    core.tick(T0 + 0.5)
    assert not core.out.verdicts and not core.counters.policy  # within the timeout: still waiting
    core.tick(T0 + 1.5)
    decided = dict(core.out.verdicts)
    assert {decided[i] for i in held} == {NF_ACCEPT if policy == "pass-flow" else NF_DROP}
    assert core.counters.policy == {f"verdict:{policy}": 1}
    (line,) = [r for r in core.out.log if r["event"] == "policy"]
    assert line["why"] == "no verdict within 1 s"
    core.close(T0 + 10)
    (flow,) = core.out.flows
    assert flow["ips"]["verdict"] == ("uninspected" if policy == "pass-flow" else "dropped")


def test_over_max_flows_the_least_recently_active_connection_follows_the_memcap_policy():
    """The table of connections is bounded too: the oldest is let go (pass-flow) or cut,
    the new one is followed."""
    core = InlineIps(KeyStore(), InlineSettings(max_flows=2, hold_budget=60, memcap_policy="pass-flow"))
    next_id = 1
    for port in (40020, 40021, 40022):
        next_id = _waiting_connection(core, port, 2, next_id)
    assert core.open_connections == 2 and core.counters.policy == {"memcap:pass-flow": 1}
    (line,) = [r for r in core.out.log if r["event"] == "policy"]
    assert line["client"] == "10.0.0.1:40020" and "max-flows" in line["why"]
