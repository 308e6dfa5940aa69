"""Key feed benchmark: records/s and publish-to-available latency.

One publisher (this process) to 1 and to 4 subscriber processes, with and without
CurveZMQ, direct and through a ``tls-bridge keys broker`` process, over tcp on
127.0.0.1.  Two phases per configuration:

* burst: N records published as fast as possible; "records/s" is N over the
  time from the first publish to the last record available at the slowest
  subscriber (gaps repaired included, nothing may be lost);
* paced: records at a steady rate well below saturation; latency is the time
  from ``publish()`` to the record handed to the sensor's key store (p50/p99).

    .venv/bin/python bench/bench_keyfeed.py [--records 20000] [--paced-rate 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.keyfeed import wire  # noqa: E402
from bridge.keyfeed.publisher import Publisher, PublisherConfig  # noqa: E402
from bridge.keyfeed.security import generate_certificate, load_client, load_server  # noqa: E402
from bridge.keyfeed.subscriber import Subscriber, SubscriberConfig  # noqa: E402
from bridge.secrets import CLIENT_TRAFFIC_SECRET_0, SERVER_TRAFFIC_SECRET_0  # noqa: E402


def _free_pair() -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from tests.support.keyfeed import free_tcp_pair

    return free_tcp_pair()


def subscriber_main(args: argparse.Namespace) -> None:
    """Child process: receive ``--expect`` records, print timing as JSON."""
    client = load_client(args.server_key, args.client_cert) if args.server_key else None
    latencies: list[float] = []
    received = 0
    last = 0.0

    def on_record(record: wire.KeyRecord) -> None:
        nonlocal received, last
        last = time.time()
        latencies.append(last - record.captured_at)
        received += 1

    with Subscriber(SubscriberConfig([args.subscriber], retry_after=0.2), client=client, on_record=on_record) as sub:
        sub.wait_synced(10)
        print("ready", flush=True)
        deadline = time.monotonic() + args.deadline
        while received < args.expect and time.monotonic() < deadline:
            sub.poll(0.05)
        stats = sub.tracker.stats
    print(json.dumps({"received": received, "last": last, "latencies": latencies, "gaps": stats.gaps,
                      "repaired": stats.repaired, "lost": stats.lost}), flush=True)


def _record(index: int) -> wire.KeyRecord:
    return wire.KeyRecord(
        client_random=index.to_bytes(32, "big"),
        secrets={CLIENT_TRAFFIC_SECRET_0: os.urandom(32), SERVER_TRAFFIC_SECRET_0: os.urandom(32)},
        captured_at=time.time(),
        tls_version=0x0304,
        origin=wire.Origin(host="bench", pid=1, comm="nginx", trigger="SSL_get_session"),
    )


class Setup:
    def __init__(self, tmp: Path, *, curve: bool, broker: bool) -> None:
        self.tmp, self.curve, self.broker = tmp, curve, broker
        self.processes: list[subprocess.Popen] = []
        if curve:
            self.pub_public, self.pub_secret = generate_certificate("pub", tmp / "server", force=True)
            _, self.sensor_secret = generate_certificate("sensor", tmp / "sensors", force=True)
            _, self.harvester_secret = generate_certificate("harvester", tmp / "harvesters", force=True)
        port = _free_pair()
        if broker:
            front = _free_pair()
            self.publisher_endpoint = f"tcp://127.0.0.1:{front}"
            self.sensor_endpoint = f"tcp://127.0.0.1:{port}"
            argv = [sys.executable, "-m", "bridge.cli", "keys", "broker", "-q", "--frontend", self.publisher_endpoint,
                    "--backend", self.sensor_endpoint]
            argv += (["--server-cert", str(self.pub_secret), "--allow-publishers", str(tmp / "harvesters"),
                      "--allow-subscribers", str(tmp / "sensors")] if curve else ["--insecure"])
            self.processes.append(subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        else:
            self.publisher_endpoint = self.sensor_endpoint = f"tcp://127.0.0.1:{port}"

    def publisher(self) -> Publisher:
        config = PublisherConfig(endpoint=self.publisher_endpoint, connect=self.broker)
        if not self.curve:
            return Publisher(config).start()
        if self.broker:
            return Publisher(config, client=load_client(self.pub_public, self.harvester_secret)).start()
        return Publisher(config, server=load_server(self.pub_secret, self.tmp / "sensors")).start()

    def subscribers(self, count: int, expect: int) -> list[subprocess.Popen]:
        argv = [sys.executable, __file__, "--subscriber", self.sensor_endpoint, "--expect", str(expect)]
        if self.curve:
            argv += ["--server-key", str(self.pub_public), "--client-cert", str(self.sensor_secret)]
        children = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(count)]
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        return children

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait()


def _results(children: list[subprocess.Popen]) -> list[dict]:
    results = []
    for child in children:
        out, _ = child.communicate(timeout=300)
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_case(tmp: Path, *, curve: bool, broker: bool, subscribers: int, records: int, paced_rate: float) -> dict:
    setup = Setup(tmp, curve=curve, broker=broker)
    try:
        with setup.publisher() as publisher:
            children = setup.subscribers(subscribers, records)
            time.sleep(0.5)
            start = time.time()
            for index in range(records):
                publisher.publish(_record(index))
            published = time.time()
            burst = _results(children)
            paced_count = int(paced_rate * 2)
            children = setup.subscribers(subscribers, records + paced_count)  # snapshot brings the burst back
            time.sleep(0.5)
            interval = 1.0 / paced_rate
            next_at = time.monotonic()
            for index in range(records, records + paced_count):
                next_at += interval
                publisher.publish(_record(index))
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            paced = _results(children)
    finally:
        setup.close()
    assert all(r["received"] == records for r in burst), [r["received"] for r in burst]
    assert all(r["received"] == records + paced_count for r in paced), [r["received"] for r in paced]
    latencies = sorted(x for r in paced for x in r["latencies"][-paced_count:])
    return {
        "publish_rate": records / (published - start),
        "delivered_rate": records / (max(r["last"] for r in burst) - start),
        "repaired": sum(r["repaired"] for r in burst),
        "lost": sum(r["lost"] for r in burst + paced),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--paced-rate", type=float, default=1000.0)
    parser.add_argument("--subscriber", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-key", help=argparse.SUPPRESS)
    parser.add_argument("--client-cert", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=120.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        subscriber_main(args)
        return
    print(f"key feed: {args.records} records burst, then {args.paced_rate:g} records/s paced; "
          f"{os.cpu_count()} CPUs, tcp on 127.0.0.1")
    header = f"{'path':<8} {'curve':<6} {'subs':>4} {'publish/s':>10} {'delivered/s':>12} {'repaired':>9} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for broker in (False, True):
            for curve in (False, True):
                for subscribers in (1, 4):
                    row = run_case(Path(tmp), curve=curve, broker=broker, subscribers=subscribers,
                                   records=args.records, paced_rate=args.paced_rate)
                    print(f"{'broker' if broker else 'direct':<8} {'yes' if curve else 'no':<6} {subscribers:>4} "
                          f"{row['publish_rate']:>10,.0f} {row['delivered_rate']:>12,.0f} {row['repaired']:>9} "
                          f"{row['lost']:>5} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
