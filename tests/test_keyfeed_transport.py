"""The key feed over real ZeroMQ sockets (tcp on 127.0.0.1 and ipc) and real processes."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from bridge.keyfeed import wire
from bridge.keyfeed.broker import Broker, BrokerConfig
from bridge.keyfeed.publisher import Publisher, PublisherConfig
from bridge.keyfeed.security import load_client, load_server
from bridge.keyfeed.subscriber import Subscriber, SubscriberConfig
from bridge.secrets import EXPORTER_SECRET
from tests.support import tlslab
from tests.support.keyfeed import (
    BridgeProcess,
    FeedCerts,
    free_tcp_pair,
    keylog_line_set,
    make_feed_certs,
    write_random_keylog,
)

pytestmark = pytest.mark.real


@pytest.fixture
def certs(tmp_path) -> FeedCerts:
    return make_feed_certs(tmp_path / "certs")


def _endpoint(kind: str, tmp_path: Path) -> str:
    if kind == "tcp":
        return f"tcp://127.0.0.1:{free_tcp_pair()}"
    return f"ipc://{tmp_path}/feed"


def _record(index: int) -> wire.KeyRecord:
    return wire.KeyRecord(client_random=index.to_bytes(32, "big"), secrets={EXPORTER_SECRET: bytes([index % 256]) * 32},
                          captured_at=time.time())


def _poll_until(subscriber: Subscriber, condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        subscriber.poll(0.05)
    assert condition(), subscriber.stats


# --- processes: publish and dump -----------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_key_log_published_by_one_process_is_dumped_identically_by_another(tmp_path, certs, transport):
    keylog = tmp_path / "client.keylog"
    lines = write_random_keylog(keylog, 60)
    endpoint = _endpoint(transport, tmp_path)
    dumped = tmp_path / "dumped.keylog"
    with BridgeProcess(["keys", "publish", "--keylog", str(keylog), "--bind", endpoint, *certs.publisher_args()],
                       tmp_path / "publish.err") as publisher:
        publisher.wait_for("publishing 60 records")
        with BridgeProcess(["keys", "dump", "--connect", endpoint, *certs.sensor_args(), "-o", str(dumped),
                            "--timeout", "3"], tmp_path / "dump.err") as dump:
            assert dump.wait() == 0, dump.text()
        assert publisher.stop() == 0, publisher.text()
    assert keylog_line_set(dumped) == set(lines)
    assert len(dumped.read_text().splitlines()) == len(lines)  # each line once
    assert dumped.stat().st_mode & 0o077 == 0  # secrets: owner-only
    assert "60 records" in dump.text() and "0 lost" in dump.text()


def test_an_unlisted_key_and_a_plain_text_subscriber_receive_nothing(tmp_path, certs):
    keylog = tmp_path / "client.keylog"
    lines = write_random_keylog(keylog, 10)
    endpoint = _endpoint("tcp", tmp_path)
    outputs = {name: tmp_path / f"{name}.keylog" for name in ("allowed", "intruder", "plain")}
    with BridgeProcess(["keys", "publish", "--keylog", str(keylog), "--bind", endpoint, *certs.publisher_args()],
                       tmp_path / "publish.err") as publisher:
        publisher.wait_for("publishing 10 records")
        sensors = {
            "allowed": certs.sensor_args(),
            "intruder": certs.sensor_args(secret=certs.intruder_secret),
            "plain": ["--insecure"],
        }
        dumps = {
            name: BridgeProcess(["keys", "dump", "--connect", endpoint, *args, "-o", str(outputs[name]),
                                 "--timeout", "3"], tmp_path / f"{name}.err")
            for name, args in sensors.items()
        }
        for dump in dumps.values():
            assert dump.wait() == 0, dump.text()
        publisher.stop()
    assert keylog_line_set(outputs["allowed"]) == set(lines)  # the control
    assert outputs["intruder"].read_text() == "" and outputs["plain"].read_text() == ""
    assert "authentication refused" in dumps["intruder"].text()
    assert "handshake failed" in dumps["plain"].text()
    assert "WARNING: --insecure" in dumps["plain"].text()


def _tcp_streams(pcap: Path) -> list[bytes]:
    """Each TCP direction's payload, concatenated in capture order (a secret may
    straddle two segments)."""
    from bridge.capture.pcapfile import read_capture
    from bridge.engine.packets import TcpSegment, classify

    streams: dict[tuple, list[bytes]] = {}
    for frame in read_capture(pcap):
        segment = classify(frame.linktype, frame.data, frame.timestamp_ns)
        if isinstance(segment, TcpSegment) and segment.payload:
            key = (segment.src, segment.sport, segment.dst, segment.dport)
            streams.setdefault(key, []).append(segment.payload)
    assert streams, "the capture holds no TCP payload"
    return [b"".join(chunks) for chunks in streams.values()]


def _secrets_of(lines: list[str]) -> list[bytes]:
    return [bytes.fromhex(line.split()[2]) for line in lines]


@pytest.mark.parametrize("secure", [True, False], ids=["curve", "insecure-control"])
def test_a_capture_of_the_feed_holds_no_secret_bytes(tmp_path, certs, tlslab_tools, secure):
    keylog = tmp_path / "client.keylog"
    lines = write_random_keylog(keylog, 20)
    endpoint = "tcp://127.0.0.1:47100"
    pcap = tmp_path / "feed.pcap"
    dumped = tmp_path / "dumped.keylog"
    security_pub = certs.publisher_args() if secure else ["--insecure"]
    security_sub = certs.sensor_args() if secure else ["--insecure"]
    with tlslab.Netns() as ns, tlslab.Capture(ns, pcap, filter="tcp"):
        with BridgeProcess(["keys", "publish", "--keylog", str(keylog), "--bind", endpoint, *security_pub],
                           tmp_path / "publish.err", prefix=ns.prefix()) as publisher:
            publisher.wait_for("publishing 20 records")
            with BridgeProcess(["keys", "dump", "--connect", endpoint, *security_sub, "-o", str(dumped),
                                "--timeout", "3"], tmp_path / "dump.err", prefix=ns.prefix()) as dump:
                assert dump.wait() == 0, dump.text()
            publisher.stop()
    assert keylog_line_set(dumped) == set(lines)
    captured = _tcp_streams(pcap)
    leaked = [s for s in _secrets_of(lines) if any(s in data or s.hex().encode() in data for data in captured)]
    if secure:
        assert leaked == []
    else:
        assert len(leaked) == len(lines)  # the check itself finds secrets when they are there


def test_a_sensor_killed_and_restarted_ends_with_every_record(tmp_path, certs):
    keylog = tmp_path / "growing.keylog"
    all_lines = write_random_keylog(tmp_path / "source.keylog", 300, seed=7)
    keylog.write_text("")
    endpoint = _endpoint("ipc", tmp_path)
    first, second = tmp_path / "first.keylog", tmp_path / "second.keylog"

    def write_slowly() -> None:
        with open(keylog, "a") as handle:
            for index, line in enumerate(all_lines):
                handle.write(line + "\n")
                handle.flush()
                if index % 20 == 0:
                    time.sleep(0.1)

    with BridgeProcess(["keys", "publish", "--keylog", str(keylog), "--follow", "--bind", endpoint,
                        *certs.publisher_args()], tmp_path / "publish.err") as publisher:
        publisher.wait_for("publishing 0 records")
        writer = threading.Thread(target=write_slowly)
        with BridgeProcess(["keys", "dump", "--connect", endpoint, *certs.sensor_args(), "-o", str(first)],
                           tmp_path / "first.err") as sensor:
            sensor.wait_for("subscribed")
            writer.start()
            time.sleep(0.6)
            sensor.stop(signal.SIGKILL)
        received_before_kill = keylog_line_set(first)
        time.sleep(0.6)  # records published while no sensor runs
        with BridgeProcess(["keys", "dump", "--connect", endpoint, *certs.sensor_args(), "-o", str(second),
                            "--timeout", "4"], tmp_path / "second.err") as restarted:
            writer.join()
            assert restarted.wait() == 0, restarted.text()
        publisher.stop()
    assert 0 < len(received_before_kill) < len(all_lines)  # it really was killed mid-stream
    assert keylog_line_set(second) == set(all_lines)


# --- in-process: gaps ---------------------------------------------------------------------------


class _DroppingPublisher(Publisher):
    """Loses chosen records on the live path (they are still retained), like a
    subscriber's full queue would."""

    drop: set[int] = set()

    def _send_live(self, record: wire.KeyRecord, message: bytes) -> None:
        if record.seq not in self.drop:
            super()._send_live(record, message)


def test_a_forced_gap_and_a_lost_tail_are_detected_and_filled(tmp_path, certs):
    endpoint = _endpoint("ipc", tmp_path)
    server = load_server(certs.publisher_secret, certs.allow_dir)
    client = load_client(certs.publisher_public, certs.sensor_secret)
    received: list[wire.KeyRecord] = []
    publisher = _DroppingPublisher(PublisherConfig(endpoint=endpoint, heartbeat_interval=0.2), server=server)
    publisher.drop = {5, 6, 7, 8, 9, 18, 19, 20}  # a gap in the middle and the last three
    with publisher.start(), Subscriber(SubscriberConfig([endpoint], retry_after=0.2), client=client,
                                       on_record=received.append) as subscriber:
        assert subscriber.wait_synced(10)
        time.sleep(0.3)  # the live connection is up
        for index in range(1, 21):
            publisher.publish(_record(index))
        _poll_until(subscriber, lambda: len(received) == 20)
    tracker = subscriber.tracker.stats
    assert sorted(r.seq for r in received) == list(range(1, 21))
    assert tracker.gaps >= 2 and tracker.missing == 8 and tracker.repaired == 8 and tracker.lost == 0
    assert [r.client_random for r in sorted(received, key=lambda r: r.seq)] == [_record(i).client_random
                                                                               for i in range(1, 21)]


def test_a_subscriber_overrun_by_a_burst_repairs_every_record(tmp_path):
    """Real libzmq drops: tiny high-water marks and a subscriber that does not read
    during a burst of 30,000 records."""
    endpoint = _endpoint("tcp", tmp_path)
    received: set[int] = set()
    config = PublisherConfig(endpoint=endpoint, hwm=100)
    with Publisher(config).start() as publisher, Subscriber(
        SubscriberConfig([endpoint], hwm=100), client=None, on_record=lambda r: received.add(r.seq)
    ) as subscriber:
        assert subscriber.wait_synced(10)
        time.sleep(0.3)
        for index in range(1, 30_001):
            publisher.publish(_record(index))
        _poll_until(subscriber, lambda: len(received) == 30_000, timeout=60)
    stats = subscriber.tracker.stats
    assert stats.gaps > 0 and stats.missing > 0, "the burst did not overrun the subscriber: no gap was exercised"
    assert stats.repaired == stats.missing and stats.lost == 0 and stats.expired == 0


# --- garbage ---------------------------------------------------------------------------------------


def _garbage(rng: random.Random) -> list[bytes]:
    messages = [rng.randbytes(rng.randrange(0, 300)) for _ in range(200)]
    valid = msgpack.unpackb(wire.encode(_record(1)), raw=False)
    for key in list(valid):
        for bad in (None, -1, "x" * 300, b"\x00" * 33, [1, 2], {"a": 1}, 2.5):
            messages.append(msgpack.packb({**valid, key: bad}, use_bin_type=True))
    messages.append(b"\x00" * 100_000)  # oversized
    messages.append(msgpack.packb({"v": 1, "type": "snapshot", "id": 1, "age": 1.0}))  # wrong place
    return messages


def test_garbage_on_the_feed_is_counted_and_the_sensor_keeps_running(tmp_path):
    endpoint = _endpoint("tcp", tmp_path)
    context = zmq.Context()
    rogue = context.socket(zmq.PUB)
    rogue.bind(endpoint)
    router = context.socket(zmq.ROUTER)  # a snapshot service that answers garbage too
    router.bind(endpoint.rsplit(":", 1)[0] + f":{int(endpoint.rsplit(':', 1)[1]) + 1}")
    garbage = _garbage(random.Random(3))
    received: list[wire.KeyRecord] = []
    try:
        with Subscriber(SubscriberConfig([endpoint], snapshot_timeout=1.0), client=None,
                        on_record=received.append) as subscriber:
            identity, _ = router.recv_multipart()  # the snapshot request
            for message in garbage[:50]:
                router.send_multipart([identity, message])
            time.sleep(0.3)
            for message in garbage:
                rogue.send(message)
            rogue.send_multipart([b"two", b"frames"])
            good = wire.encode(wire.KeyRecord(client_random=bytes(32), secrets={EXPORTER_SECRET: bytes(32)},
                                              captured_at=time.time(), publisher=b"P" * 16, seq=1))
            rogue.send(good)
            _poll_until(subscriber, lambda: received and subscriber.stats.malformed >= len(garbage) + 51)
    finally:
        rogue.close(0)
        router.close(0)
        context.term()
    assert [r.client_random for r in received] == [bytes(32)]
    stats = subscriber.stats
    assert stats.malformed == len(garbage) + 1 + 50
    assert {"not_msgpack", "bad_field", "too_large", "unexpected_type", "bad_frames"} <= set(stats.malformed_reasons)


def test_garbage_requests_get_errors_and_the_service_keeps_serving(tmp_path):
    endpoint = _endpoint("ipc", tmp_path)
    with Publisher(PublisherConfig(endpoint=endpoint)).start() as publisher:
        publisher.publish(_record(1))
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.connect(publisher.snapshot_endpoint)
        try:
            for message in _garbage(random.Random(4))[:40]:
                dealer.send(message)
                reply = wire.decode(dealer.recv())
                assert isinstance(reply, wire.ErrorReply)
            dealer.send(wire.encode(wire.SnapshotRequest(9, 60.0)))
            batch, end = wire.decode(dealer.recv()), wire.decode(dealer.recv())
        finally:
            dealer.close(0)
            context.term()
        assert publisher.service is not None and publisher.service.stats.bad_requests == 40
    assert [r.seq for r in batch.records] == [1] and end.request_id == 9


# --- broker ---------------------------------------------------------------------------------------


def test_many_publishers_through_the_broker_to_a_late_sensor(tmp_path):
    from bridge.keyfeed.security import generate_certificate

    directory = tmp_path / "certs"
    broker_public, broker_secret = generate_certificate("broker", directory / "broker")
    harvesters = [generate_certificate(f"harvester{i}", directory / "harvesters")[1] for i in range(2)]
    _, sensor_secret = generate_certificate("sensor", directory / "sensors")
    frontend, backend = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    keylogs = [tmp_path / f"app{i}.keylog" for i in range(2)]
    lines = write_random_keylog(keylogs[0], 30, seed=1) + write_random_keylog(keylogs[1], 30, seed=2)
    dumped, early = tmp_path / "dumped.keylog", tmp_path / "early.keylog"
    broker_args = ["keys", "broker", "--frontend", frontend, "--backend", backend, "--server-cert", str(broker_secret),
                   "--allow-publishers", str(directory / "harvesters"), "--allow-subscribers", str(directory / "sensors")]
    sensor = ["--server-key", str(broker_public), "--client-cert", str(sensor_secret)]
    with BridgeProcess(broker_args, tmp_path / "broker.err") as broker:
        broker.wait_for("broker: publishers connect")
        with BridgeProcess(["keys", "dump", "--connect", backend, *sensor, "-o", str(early), "--timeout", "10"],
                           tmp_path / "early.err") as early_sensor:
            early_sensor.wait_for("subscribed")
            publishers = [
                BridgeProcess(["keys", "publish", "--keylog", str(keylog), "--connect", frontend, "--server-key",
                               str(broker_public), "--client-cert", str(secret)], tmp_path / f"pub{i}.err")
                for i, (keylog, secret) in enumerate(zip(keylogs, harvesters))
            ]
            for publisher in publishers:
                publisher.wait_for("publishing 30 records")
            time.sleep(1.0)
            with BridgeProcess(["keys", "dump", "--connect", backend, *sensor, "-o", str(dumped), "--timeout", "6"],
                               tmp_path / "late.err") as late_sensor:
                assert late_sensor.wait() == 0, late_sensor.text()
            assert early_sensor.wait() == 0, early_sensor.text()
            for publisher in publishers:
                publisher.stop()
        assert broker.stop() == 0, broker.text()
    assert keylog_line_set(dumped) == set(lines)  # late: from the broker's snapshot
    assert keylog_line_set(early) == set(lines)  # early: live through the broker (and repairs)
    assert "60 records" in broker.text()


def test_the_broker_drops_garbage_from_an_admitted_publisher(tmp_path):
    frontend, backend = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    broker = Broker(BrokerConfig(frontend=frontend, backend=backend), None)
    stop = threading.Event()
    runner = threading.Thread(target=broker.run, args=(stop,))
    runner.start()
    received: list[wire.KeyRecord] = []
    context = zmq.Context()
    upstream = context.socket(zmq.PUB)
    upstream.connect(frontend)
    try:
        with Subscriber(SubscriberConfig([backend]), client=None, on_record=received.append) as subscriber:
            subscriber.wait_synced(10)
            time.sleep(0.5)
            garbage = _garbage(random.Random(5))
            for message in garbage:
                upstream.send(message)
            upstream.send(wire.encode(wire.KeyRecord(client_random=bytes(32), secrets={EXPORTER_SECRET: bytes(32)},
                                                     captured_at=time.time(), publisher=b"Q" * 16, seq=1)))
            _poll_until(subscriber, lambda: len(received) == 1)
            assert subscriber.stats.malformed == 0  # nothing malformed got through
    finally:
        upstream.close(0)
        context.term()
        stop.set()
        runner.join()
        broker.close()
    assert broker.stats.malformed == len(garbage) and broker.stats.records == 1


def test_missing_certificates_and_bad_endpoints_are_clear_errors(tmp_path, certs):
    keylog = tmp_path / "k.keylog"
    write_random_keylog(keylog, 1)
    cases = [
        (["keys", "publish", "--keylog", str(keylog), "--bind", "tcp://127.0.0.1:1"], "give --server-cert"),
        (["keys", "dump", "--connect", "tcp://127.0.0.1:1", "-o", str(tmp_path / "o")], "give --server-key"),
        (["keys", "dump", "--connect", "udp://x:1", "--insecure", "-o", str(tmp_path / "o")], "not supported"),
        (["keys", "publish", "--keylog", str(keylog), "--bind", "tcp://127.0.0.1:1", "--server-cert",
          str(certs.publisher_public), "--allow", str(certs.allow_dir)], "holds no secret key"),
        (["keys", "publish", "--keylog", str(keylog), "--bind", "tcp://127.0.0.1:1", "--server-cert",
          str(certs.publisher_secret), "--allow", str(tmp_path)], "holds no *.key file"),
        (["keys", "gen-cert", "sensor", "--dir", str(certs.allow_dir)], "exists already"),
    ]
    for args, message in cases:
        with BridgeProcess(args, tmp_path / "err") as process:
            assert process.wait() == 1, (args, process.text())
            assert message in process.text() and "Traceback" not in process.text()


# --- key requests: sensor → harvester -------------------------------------------------------------

_WANT = wire.KeyRequest(bytes(range(32)), (bytes([192, 0, 2, 7]), 50123), (bytes([192, 0, 2, 80]), 443))


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert condition()


def test_a_sensors_key_request_reaches_the_harvester_over_curve(tmp_path, certs):
    endpoint = f"tcp://127.0.0.1:{free_tcp_pair()}"
    asked: list[wire.KeyRequest] = []
    server = load_server(certs.publisher_secret, certs.allow_dir)
    with Publisher(PublisherConfig(endpoint), server=server) as publisher:
        publisher.take_key_requests(asked.append)
        client = load_client(certs.publisher_public, certs.sensor_secret)
        with Subscriber(SubscriberConfig([endpoint]), client=client, on_record=lambda r: None) as subscriber:
            assert subscriber.wait_synced(10)
            subscriber.start()
            subscriber.request_keys(_WANT)  # from this thread: the poll loop sends it
            _wait_for(lambda: asked)
        assert asked == [_WANT] and subscriber.stats.key_requests == 1
        assert publisher.service.stats.key_requests == 1 and publisher.service.stats.key_requests_unrouted == 0


def test_a_key_request_nobody_takes_is_counted_and_the_feed_goes_on(tmp_path):
    endpoint = f"ipc://{tmp_path}/feed"
    with Publisher(PublisherConfig(endpoint)) as publisher:
        received: list[wire.KeyRecord] = []
        with Subscriber(SubscriberConfig([endpoint]), client=None, on_record=received.append) as subscriber:
            assert subscriber.wait_synced(10)
            subscriber.request_keys(_WANT)
            _poll_until(subscriber, lambda: publisher.service.stats.key_requests_unrouted == 1)
            publisher.publish(_record(1))
            _poll_until(subscriber, lambda: len(received) == 1)


def test_key_requests_go_through_the_broker_to_every_harvester(tmp_path):
    frontend, backend = f"ipc://{tmp_path}/front", f"ipc://{tmp_path}/back"
    broker = Broker(BrokerConfig(frontend=frontend, backend=backend), None)
    stop = threading.Event()
    runner = threading.Thread(target=broker.run, args=(stop,))
    runner.start()
    asked: list[list[wire.KeyRequest]] = [[], []]
    publishers = [Publisher(PublisherConfig(frontend, connect=True), on_key_request=asked[i].append).start()
                  for i in range(2)]
    try:
        with Subscriber(SubscriberConfig([backend]), client=None, on_record=lambda r: None) as subscriber:
            assert subscriber.wait_synced(10)
            time.sleep(0.5)  # both harvesters connected to the frontend (a request reaches the connected ones)
            subscriber.request_keys(_WANT)
            _poll_until(subscriber, lambda: all(asked))
    finally:
        for publisher in publishers:
            publisher.close()
        stop.set()
        runner.join()
        broker.close()
    assert asked == [[_WANT], [_WANT]] and broker.stats.key_requests_forwarded == 1


def test_garbage_from_upstream_is_counted_by_the_harvester(tmp_path):
    frontend = f"ipc://{tmp_path}/front"
    context = zmq.Context()
    upstream = context.socket(zmq.XSUB)  # what a broker looks like to a harvester
    upstream.bind(frontend)
    asked: list[wire.KeyRequest] = []
    publisher = Publisher(PublisherConfig(frontend, connect=True), on_key_request=asked.append).start()
    try:
        upstream.send(b"\x01")
        time.sleep(0.3)
        garbage = [message for message in _garbage(random.Random(9)) if message[:1] not in (b"\x00", b"\x01")]
        garbage.append(wire.encode(wire.SnapshotRequest(1, 5.0)))  # a valid message, but not one a harvester takes
        for message in garbage:
            upstream.send(message)
        upstream.send(wire.encode(_WANT))
        _wait_for(lambda: asked)
        _wait_for(lambda: publisher.stats.bad_upstream == len(garbage))
        assert asked == [_WANT] and publisher.stats.key_requests == 1
    finally:
        publisher.close()
        upstream.close(0)
        context.term()
