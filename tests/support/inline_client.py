"""Many truly concurrent HTTPS connections for the inline IPS's test (run in the client's
namespace: ``python -m tests.support.inline_client ARGS``).

Every connection is opened (TCP and TLS handshake) before any request is sent: a
barrier holds them all; then each sends its first request and reads the whole
response, waits at a barrier for all the others, sends its second, and so on; the
connections close only after the last response.  So all of them are open at once for
the whole run, and the requests of all of them are in flight together.

Responses are HTTP/1.1 with Content-Length (nginx's static files); each body is written
to DOWNLOADS/NAME.  The secrets go to the key log given (Python's
``SSLContext.keylog_filename``, the oracle's tshark reads it).  One JSON line per
connection on stdout: its local port, the TLS version, what it fetched, the error if any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
    return status, await reader.readexactly(length)


async def _connection(index: int, args: argparse.Namespace, names: list[str], barrier: asyncio.Barrier,
                      contexts: dict[str, ssl.SSLContext]) -> dict[str, object]:
    version = "1.3" if index % 2 == 0 else "1.2"
    out: dict[str, object] = {"index": index, "tls": version, "files": names, "error": None}
    writer = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=contexts[version], server_hostname=None),
                args.timeout)
            out["port"] = writer.get_extra_info("sockname")[1]
            out["negotiated"] = writer.get_extra_info("ssl_object").version()
        finally:
            await barrier.wait()  # every connection is open (or failed) before any request
        for name in names:
            writer.write(f"GET /files/{name} HTTP/1.1\r\nHost: {args.host}\r\n\r\n".encode())
            status, body = await asyncio.wait_for(_response(reader), args.timeout)
            if status != 200:
                raise RuntimeError(f"{name}: HTTP {status}")
            (Path(args.downloads) / name).write_bytes(body)
            await barrier.wait()  # every connection got its response before the next round
    except Exception as exc:  # noqa: BLE001 (reported per connection)
        out["error"] = f"{type(exc).__name__}: {exc}"
        if not barrier.broken:
            await barrier.abort()  # the others fail too, and say so, rather than wait
    finally:
        if writer is not None:
            writer.close()
    return out


async def _main(args: argparse.Namespace) -> int:
    contexts = {}
    for version, (low, high) in {"1.3": (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3),
                                 "1.2": (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)}.items():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version, context.maximum_version = low, high
        context.set_alpn_protocols(["http/1.1"])
        context.keylog_filename = args.keylog
        contexts[version] = context
    barrier = asyncio.Barrier(args.connections)
    jobs = [_connection(i, args, [f"{args.prefix}{i * args.per_connection + k}" for k in range(args.per_connection)],
                        barrier, contexts) for i in range(args.connections)]
    results = await asyncio.gather(*jobs)
    for result in results:
        sys.stdout.write(json.dumps(result) + "\n")
    return 0 if all(r["error"] is None for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--per-connection", type=int, default=2)
    parser.add_argument("--prefix", default="f")
    parser.add_argument("--downloads", required=True)
    parser.add_argument("--keylog", required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
