"""A gRPC server on TLS (Python's grpc: BoringSSL linked into its cygrpc module),
for the harvester tests.  Every method answers its request back.

    python grpc_tls_server.py CERT_CHAIN KEY PORT
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc


class Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details):  # type: ignore[no-untyped-def]
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)


def main() -> int:
    chain, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(chain, "rb") as handle:
        chain_pem = handle.read()
    with open(key, "rb") as handle:
        key_pem = handle.read()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[Echo()])
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, chain_pem)]))
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("listening", flush=True)
    stop.wait()
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
