"""quiclab: real HTTP/3 sessions (aioquic's client and server, ``quic_peers``)
captured on the loopback of a private network namespace, and tshark's QUIC
decryption as an independent oracle.

Built on :mod:`tests.support.tlslab` (namespaces, tcpdump, certificates).
Observed behaviour relied on (aioquic 1.x, tshark 4.0):

* aioquic writes every secret of a connection to ``secrets_log_file`` with the
  TLS 1.3 labels (CLIENT_/SERVER_HANDSHAKE_TRAFFIC_SECRET,
  CLIENT_/SERVER_TRAFFIC_SECRET_0), not the later generations after a key
  update: a decryptor derives them ("quic ku").
* aioquic's QPACK encoder uses a dynamic table of 4096 bytes (16 blocked
  streams): header blocks refer to encoder stream instructions.
* ``tshark -T json`` repeats a key for each frame of a packet (``quic.frame``)
  and each coalesced packet (``quic``); :func:`tshark_quic_streams` reads the
  JSON with the duplicates kept.  tshark 4.0 decrypts QUIC with the key log
  (and across key updates) but does not decode HTTP/3 headers (no QPACK).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import tlslab

ROOT = Path(__file__).resolve().parents[2]
PORT = 4433
_counter = itertools.count()


@dataclass
class H3Client:
    """One client connection: its requests ("METHOD PATH [BODY_SIZE]")."""

    requests: list[str]
    parallel: int = 1
    key_update_after: list[int] = field(default_factory=list)
    #: after these requests the client moves to another of the server's connection IDs
    change_cid_after: list[int] = field(default_factory=list)
    version: int = 1
    sni: str = "quic.example.test"
    #: first a connection for a session ticket (one request, /ticket), then the requests as 0-RTT
    zero_rtt: bool = False


@dataclass
class H3Run:
    pcap: Path
    keylog: Path  # the clients' key log
    server_keylog: Path
    clients: list[dict]  # each client's own record (quic_peers)
    server: list[dict]  # the server's record of every request it answered


def _peer(role: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.support.quic_peers", role, *args]


def run_h3(workdir: Path, clients: list[H3Client], *, retry: bool = False, only_v1: bool = False,
           host: str = "127.0.0.1", timeout: float = 90) -> H3Run:
    """An aioquic HTTP/3 server (``retry``: it answers each first Initial with a
    Retry) and the given clients (one connection each, in turn) in a fresh
    namespace, captured by tcpdump on its ``lo``."""
    tlslab.require_root()
    tlslab.require_tools("tcpdump", "ip")
    workdir.mkdir(parents=True, exist_ok=True)
    certs = tlslab.make_cert(workdir / "certs", key_type="ec", cn="quic.example.test",
                             san=("quic.example.test",), ca=False)
    pcap, keylog, server_keylog = workdir / "quic.pcap", workdir / "client.keylog", workdir / "server.keylog"
    server_record = workdir / "server.json"
    records = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tlslab.Netns(f"quic15-{os.getpid()}-{next(_counter)}") as ns:
        with tlslab.Capture(ns, pcap, filter="udp"):
            server = ns.proc(_peer("server", "--host", host, "--port", str(PORT), "--cert", str(certs.cert),
                                   "--key", str(certs.key), "--keylog", str(server_keylog),
                                   "--record", str(server_record), *(["--retry"] if retry else []),
                                   *(["--only-v1"] if only_v1 else [])),
                             stdin_pipe=False, env=env, cwd=str(ROOT))
            if server.out.wait_for([b"listening"], timeout=30) is None:
                raise tlslab.TlsLabError(f"the HTTP/3 server did not start:\n{server.describe()}")
            for index, client in enumerate(clients):
                record = workdir / f"client{index}.json"
                argv = ["--host", host, "--port", str(PORT), "--keylog", str(keylog), "--record", str(record),
                        "--sni", client.sni, "--parallel", str(client.parallel), "--version", str(client.version)]
                for request in client.requests:
                    argv += ["--request", request]
                for after in client.key_update_after:
                    argv += ["--key-update-after", str(after)]
                for after in client.change_cid_after:
                    argv += ["--change-cid-after", str(after)]
                if client.zero_rtt:
                    argv.append("--zero-rtt")
                result = ns.run(_peer("client", *argv), check=False, timeout=timeout, env=env, cwd=str(ROOT))
                if result.returncode != 0:
                    raise tlslab.TlsLabError(f"HTTP/3 client {index} failed: {result.stderr.decode()[-3000:]}")
                records.append(json.loads(record.read_text()))
            deadline = time.monotonic() + 10  # the server writes its record after each answer
            expected = sum(len(c.requests) + c.zero_rtt for c in clients)
            while time.monotonic() < deadline and (not server_record.exists()
                                                   or len(json.loads(server_record.read_text())) < expected):
                time.sleep(0.05)
            time.sleep(0.3)  # the connections' closing packets
            server.stop()
    return H3Run(pcap, keylog, server_keylog, records, json.loads(server_record.read_text()))


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object with repeated keys kept (as lists)."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            previous = out[key]
            out[key] = (previous if isinstance(previous, list) and getattr(previous, "_repeated", False)
                        else _Repeated([previous]))
            out[key].append(value)  # type: ignore[union-attr]
        else:
            out[key] = value
    return out


class _Repeated(list):
    _repeated = True


def _each(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, _Repeated) else [value]


def tshark_quic_streams(pcap: Path, keylog: Path, *, server_port: int = PORT
                        ) -> tuple[dict[tuple[int, str, int], bytes], list[tuple[tuple[int, str, int], int, int]]]:
    """Every QUIC STREAM's data as tshark decrypts it: (tshark's connection number,
    ``"c2s"``/``"s2c"``, stream id) → bytes, reassembled by offset (first copy
    wins); and the streams with a hole (a packet tshark did not decrypt): (key,
    from, to), left out of the first."""
    tlslab.require_tools("tshark")
    result = subprocess.run([tlslab.tool("tshark"), "-r", str(pcap), "-o", f"tls.keylog_file:{keylog}",
                             "-d", f"udp.port=={server_port},quic", "-T", "json", "-J", "quic udp"],
                            capture_output=True, timeout=300)
    if result.returncode != 0:
        raise tlslab.TlsLabError(f"tshark failed: {result.stderr.decode()[-2000:]}")
    packets = json.loads(result.stdout, object_pairs_hook=_pairs)
    pieces: dict[tuple[int, str, int], dict[int, bytes]] = {}
    for packet in packets:
        layers = packet["_source"]["layers"]
        direction = "c2s" if int(layers["udp"]["udp.dstport"]) == server_port else "s2c"
        for quic in _each(layers.get("quic")):
            connection = int(quic.get("QUIC Connection information", {}).get("quic.connection.number", -1))
            for frame in _each(quic.get("quic.frame")):
                if "quic.stream_data" not in frame and "quic.stream.stream_id" not in frame:
                    continue
                stream_id = int(frame["quic.stream.stream_id"])
                offset = int(frame.get("quic.stream.offset", 0))
                data = bytes.fromhex(frame.get("quic.stream_data", "").replace(":", ""))
                pieces.setdefault((connection, direction, stream_id), {}).setdefault(offset, data)
    streams = {}
    holes: list[tuple[tuple[int, str, int], int, int]] = []
    for key, by_offset in pieces.items():
        buffer = bytearray()
        for offset in sorted(by_offset):
            data = by_offset[offset]
            if offset > len(buffer):
                holes.append((key, len(buffer), offset))
                break
            if offset + len(data) > len(buffer):
                buffer += data[len(buffer) - offset:]
        if not holes or holes[-1][0] != key:
            streams[key] = bytes(buffer)
    return streams, holes


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bridge_quic_streams(pcap: Path, keylog: Path) -> dict[tuple[int, str, int], bytes]:
    """The same, as bridge.quic decrypts it (connections numbered in order of appearance)."""
    from bridge.capture.pcapfile import read_capture
    from bridge.engine.udp import decode_udp
    from bridge.keys.keylog import read_keylog
    from bridge.quic.connection import HelloSeen, QuicConnection, StreamChunk

    by_random: dict[bytes, dict[str, bytes]] = {}
    for entry in read_keylog(keylog):
        by_random.setdefault(entry.client_random, {})[entry.label] = entry.secret
    connections: dict[tuple, tuple[int, QuicConnection]] = {}
    streams: dict[tuple[int, str, int], bytearray] = {}

    def take(number: int, connection: QuicConnection, outputs: list) -> None:
        for output in outputs:
            if isinstance(output, StreamChunk):
                key = (number, "c2s" if output.direction == 0 else "s2c", output.stream_id)
                streams.setdefault(key, bytearray()).extend(output.data)
            elif isinstance(output, HelloSeen):
                take(number, connection, connection.give_secrets(by_random.get(output.client_random, {})))

    for frame in read_capture(pcap):
        datagram = decode_udp(frame.linktype, frame.data, frame.timestamp_ns)
        if datagram is None:
            continue
        a, b = (datagram.src, datagram.sport), (datagram.dst, datagram.dport)
        key = (min(a, b), max(a, b))
        if key not in connections:
            connections[key] = (len(connections), QuicConnection())
        number, connection = connections[key]
        take(number, connection, connection.feed(0 if a == key[0] else 1, datagram.payload, frame.timestamp_ns))
    for number, connection in connections.values():
        take(number, connection, connection.finish())
    return {key: bytes(value) for key, value in streams.items()}
