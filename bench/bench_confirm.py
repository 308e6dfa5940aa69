"""What confirming a TLS 1.2 layout costs: the client's Finished record decrypted vs
the key block searched for in the process's memory.

A layout not calibrated against a build (a candidate, a learned one) is confirmed
before anything read through it is published (``bridge.harvest.confirm``).  For
TLS 1.2 that is either one record decrypted with the key block derived from the
master secret (the record captured on the wire: ``bridge.harvest.first_record``)
or, without the wire, the two write keys searched for in the target's writable
memory (``/proc/PID/mem``).  In one run, on the committed captures' TLS 1.2
connections (their master secrets from the clients' key logs):

* **record** — ``confirm_tls12_record`` on the captured Finished record;
* **memory search (reference)** — ``confirm_tls12`` with the keys searched for in
  this process's own writable memory, ``--heap-mb`` of it allocated beside the keys
  (a server's heap; the keys placed at its end, the worst case).

Needs to read its own ``/proc/self/mem`` (any user).

    .venv/bin/python bench/bench_confirm.py [--heap-mb 64] [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.harvest.confirm import Evidence, confirm_tls12, confirm_tls12_record  # noqa: E402
from bridge.harvest.first_record import FirstRecords  # noqa: E402
from bridge.harvest.memory import ProcessMemory, present, read_maps  # noqa: E402
from bridge.harvest.wire_search import WireHello, hellos  # noqa: E402
from bridge.secrets import CLIENT_RANDOM, TLS12, ConnectionSecrets  # noqa: E402
from bridge.tls.ciphersuites import cipher_suite  # noqa: E402
from bridge.tls.keyschedule import key_block12  # noqa: E402
from tests.support.fixtures import FIXTURES  # noqa: E402


def _connections():  # type: ignore[no-untyped-def]
    for fixture in FIXTURES:
        if not fixture.name.startswith("tls12"):
            continue
        records = FirstRecords()
        randoms = [e.client_random for e in hellos(fixture.frames(), first_records=records) if isinstance(e, WireHello)]
        masters = {e.client_random: e.secret for e in fixture.entries() if e.label == CLIENT_RANDOM}
        for random in randoms:
            captured = records.get(random)
            yield captured, ConnectionSecrets(random, {CLIENT_RANDOM: masters[random]}, TLS12, captured.cipher_suite)


def _timed(function, rounds: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        verdict = function()
        times.append(time.perf_counter() - started)
        assert verdict.ok, verdict.reason
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap-mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    connections = list(_connections())
    heap = bytearray(os.urandom(1 << 20)) * args.heap_mb  # a server's heap, written (resident)
    keys = bytearray()
    for captured, secrets in connections:
        client, server = key_block12(cipher_suite(captured.cipher_suite), master_secret=secrets.secrets[CLIENT_RANDOM],
                                     client_random=captured.client_random, server_random=captured.server_random)
        keys += client.key + server.key  # live, as in the cipher contexts
    reader = ProcessMemory(os.getpid())
    maps = read_maps(os.getpid())
    rows = []
    for captured, secrets in connections:
        by_record = _timed(lambda: confirm_tls12_record(secrets, captured), args.rounds)
        evidence = Evidence(b"", None, captured.server_random, lambda needles: present(reader, maps, needles))
        by_memory = _timed(lambda: confirm_tls12(secrets, evidence), max(3, args.rounds // 5))
        rows.append((cipher_suite(captured.cipher_suite).name, by_record, by_memory))
    reader.close()
    mapped = sum(m.end - m.start for m in maps if m.writable_anonymous) / (1 << 20)
    print(f"TLS 1.2 confirmation, median of {args.rounds} (memory: {max(3, args.rounds // 5)}); "
          f"{mapped:.0f} MiB of writable anonymous memory searched")
    print(f"{'connection suite':45} {'record':>10} {'memory search (ref.)':>22} {'ratio':>8}")
    for name, by_record, by_memory in rows:
        print(f"{name:45} {by_record * 1e6:8.0f} µs {by_memory * 1e3:19.1f} ms {by_memory / by_record:7.0f}x")
    del heap, keys
    return 0


if __name__ == "__main__":
    sys.exit(main())
