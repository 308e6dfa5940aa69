"""A real HTTP/3 client and server for the QUIC tests, on aioquic (from the
package registry, installed by pyproject's [test] extra).  Both write
SSLKEYLOGFILE-format secrets (aioquic's ``secrets_log_file``) and a JSON record
of what they sent and received: the tests' oracle.

Run as ``python -m tests.support.quic_peers server|client ...`` (the tests start
them inside a network namespace).  The server answers ``GET /bytes/N`` with N
bytes (a fixed pattern), ``POST`` with the SHA-256 of the request body, and
anything else with a short page naming the path.  The client sends its requests
on one connection in the order given, optionally several at once, and asks for
a key update (RFC 9001 §6) after each of the requests named by ``--key-update-after``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, connect, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent
from aioquic.quic.packet import QuicProtocolVersion


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 16
    return (block * (n // len(block) + 1))[:n]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Server(QuicConnectionProtocol):
    log: list[dict] = []
    log_path: Path | None = None

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._h3: H3Connection | None = None
        self._requests: dict[int, dict] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated):
            self._h3 = H3Connection(self._quic)
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                headers = dict(h3_event.headers)
                self._requests[h3_event.stream_id] = {"headers": headers, "body": b""}
                if h3_event.stream_ended:
                    self._answer(h3_event.stream_id)
            elif isinstance(h3_event, DataReceived) and h3_event.stream_id in self._requests:
                self._requests[h3_event.stream_id]["body"] += h3_event.data
                if h3_event.stream_ended:
                    self._answer(h3_event.stream_id)

    def _answer(self, stream_id: int) -> None:
        request = self._requests.pop(stream_id)
        headers, body = request["headers"], request["body"]
        method, path = headers[b":method"].decode(), headers[b":path"].decode()
        if method == "POST":
            answer = f"received {len(body)} bytes sha256={sha(body)}\n".encode()
        elif path.startswith("/bytes/"):
            answer = pattern(int(path.split("/")[2]))
        else:
            answer = f"<html><body>you asked for {path}</body></html>\n".encode()
        assert self._h3 is not None
        self._h3.send_headers(stream_id, [(b":status", b"200"), (b"server", b"tls-bridge-test"),
                                          (b"content-type", b"application/octet-stream"),
                                          (b"content-length", str(len(answer)).encode())])
        self._h3.send_data(stream_id, answer, end_stream=True)
        self.transmit()
        entry = {"stream_id": stream_id, "method": method, "path": path, "request_bytes": len(body),
                 "request_sha256": sha(body), "response_bytes": len(answer), "response_sha256": sha(answer)}
        _Server.log.append(entry)
        if _Server.log_path is not None:
            _Server.log_path.write_text(json.dumps(_Server.log))


async def run_server(args: argparse.Namespace) -> None:
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, secrets_log_file=open(args.keylog, "a"))
    config.load_cert_chain(args.cert, args.key)
    if args.only_v1:  # a v2 client is sent a Version Negotiation packet
        config.supported_versions = [QuicProtocolVersion.VERSION_1]
    _Server.log_path = Path(args.record)
    tickets: dict[bytes, object] = {}
    await serve(args.host, args.port, configuration=config, create_protocol=_Server, retry=args.retry,
                session_ticket_fetcher=tickets.pop, session_ticket_handler=lambda t: tickets.__setitem__(t.ticket, t))
    print("listening", flush=True)
    await asyncio.Future()


class _Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters: dict[int, asyncio.Future] = {}
        self.responses: dict[int, dict] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, (HeadersReceived, DataReceived)) and h3_event.stream_id in self.responses:
                response = self.responses[h3_event.stream_id]
                if isinstance(h3_event, HeadersReceived):
                    response["headers"] = {k.decode(): v.decode() for k, v in h3_event.headers}
                else:
                    response["body"] += h3_event.data
                if h3_event.stream_ended:
                    self.waiters.pop(h3_event.stream_id).set_result(None)

    async def request(self, method: str, authority: str, path: str, body: bytes) -> dict:
        stream_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", authority.encode()),
                   (b":path", path.encode()), (b"user-agent", b"tls-bridge-quic-test")]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h3.send_data(stream_id, body, end_stream=True)
        self.responses[stream_id] = {"body": b""}
        waiter = self.waiters[stream_id] = asyncio.get_running_loop().create_future()
        self.transmit()
        await asyncio.wait_for(waiter, 300)
        response = self.responses.pop(stream_id)
        return {"stream_id": stream_id, "method": method, "path": path, "request_bytes": len(body),
                "request_sha256": sha(body), "status": int(response["headers"][":status"]),
                "response_bytes": len(response["body"]), "response_sha256": sha(response["body"])}


async def run_client(args: argparse.Namespace) -> None:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE,
                               secrets_log_file=open(args.keylog, "a"), server_name=args.sni)
    if args.version == 2:
        config.original_version = QuicProtocolVersion.VERSION_2
        config.supported_versions = [QuicProtocolVersion.VERSION_2, QuicProtocolVersion.VERSION_1]
    record: list[dict] = []
    key_updates = 0
    early: list[dict] = []
    if args.zero_rtt:  # a first connection for a session ticket, then 0-RTT requests on the next
        tickets: list = []
        async with connect(args.host, args.port, configuration=config, create_protocol=_Client,
                           session_ticket_handler=tickets.append) as client:
            await client.wait_connected()
            early.append(await client.request("GET", args.sni, "/ticket", b""))
            for _ in range(100):
                if tickets:
                    break
                await asyncio.sleep(0.05)
            client.close()
            await client.wait_closed()
        assert tickets, "no session ticket"
        config.session_ticket = tickets[-1]
    async with connect(args.host, args.port, configuration=config, create_protocol=_Client,
                       wait_connected=not args.zero_rtt) as client:
        batch: list = []
        for index, spec in enumerate(args.request):
            method, _, rest = spec.partition(" ")
            path, _, size = rest.partition(" ")
            body = pattern(int(size))[::-1] if size else b""
            batch.append(client.request(method, args.sni, path, body))
            if len(batch) >= args.parallel or index == len(args.request) - 1:
                record.extend(await asyncio.gather(*batch))
                batch = []
            if index in args.key_update_after:
                client._quic.request_key_update()
                key_updates += 1
            if index in args.change_cid_after:  # to another of the server's connection IDs (RFC 9000 §5.1.1)
                client._quic.change_connection_id()
        client.close()
        await client.wait_closed()
    Path(args.record).write_text(json.dumps({"requests": record, "key_updates": key_updates,
                                             "version": args.version, "ticket_connection": early}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quic_peers")
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server")
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    server.add_argument("--retry", action="store_true", help="answer each first Initial with a Retry")
    server.add_argument("--only-v1", action="store_true", help="speak QUIC v1 only")
    client = sub.add_parser("client")
    client.add_argument("--sni", default="quic.example.test")
    client.add_argument("--request", action="append", default=[], help='"METHOD PATH [BODY_SIZE]"')
    client.add_argument("--parallel", type=int, default=1)
    client.add_argument("--key-update-after", type=int, action="append", default=[])
    client.add_argument("--change-cid-after", type=int, action="append", default=[])
    client.add_argument("--version", type=int, default=1, choices=(1, 2))
    client.add_argument("--zero-rtt", action="store_true",
                        help="a first connection for a session ticket, then the requests as 0-RTT data")
    for p in (server, client):
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--keylog", required=True)
        p.add_argument("--record", required=True)
    args = parser.parse_args(argv)
    asyncio.run(run_server(args) if args.role == "server" else run_client(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
