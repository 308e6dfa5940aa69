"""The engine's settings, declared once: defaults, documentation, bounds.

The same dataclass is the ``[decrypt]`` section of the sensor's TOML file
(``tls-bridge run``) and the tuning flags of ``tls-bridge decrypt``
(:func:`bridge.options.add_arguments`); both check values the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.options import option

MiB = 1024 * 1024


@dataclass
class EngineSettings:
    """The decryptor."""

    key_wait: float = option(30.0, "how long records wait for their secrets, seconds of capture time", low=0,
                             flag="--key-wait", metavar="SECONDS")
    max_flows: int = option(200_000, "connections tracked at once; beyond, one is evicted as under memory_limit",
                            low=16, high=100_000_000, flag="--max-flows", metavar="N")
    idle_timeout: float = option(300.0, "a connection with no packet for this long is finished, seconds", low=1,
                                 flag="--idle-timeout", metavar="SECONDS")
    max_out_of_order_bytes: int = option(4 * MiB, "out-of-order bytes buffered per direction before a hole is "
                                         "declared a gap", low=0, high=1 << 32, flag="--max-out-of-order",
                                         metavar="BYTES")
    max_pending_per_direction: int = option(8 * MiB, "bytes of records waiting for secrets, per direction of a "
                                            "connection", low=0, high=1 << 32, flag="--max-pending",
                                            metavar="BYTES")
    max_pending_total: int = option(256 * MiB, "bytes of records waiting for secrets, all connections together",
                                    low=0, high=1 << 40, flag="--max-pending-total", metavar="BYTES")
    recently_closed: int = option(65_536, "finished connections remembered, so their late packets start no new "
                                  "connection", low=0, high=100_000_000, flag="--recently-closed", metavar="N")
    rst_grace: float = option(1.0, "after a RST, how long data sent before it may still arrive (a mirror "
                              "reorders), seconds of capture time", low=0, flag="--rst-grace", metavar="SECONDS")
    memory_limit: int = option(1024 * MiB, "bytes the decryptor may hold: every connection's state, its buffers "
                               "and its records waiting for secrets (and a reserve for the recently closed); "
                               "beyond it connections are evicted: half-open first, then idle, then the least "
                               "recently active; the process's own 48 MiB included", low=96 * MiB, high=1 << 44,
                               flag="--memory-limit",
                               metavar="BYTES")
    evict_idle: float = option(10.0, "under memory pressure, a connection quiet this long is evicted as idle "
                               "(before active ones), seconds of capture time", low=0, flag="--evict-idle",
                               metavar="SECONDS")
    forget_keys: bool = option(True, "drop a connection's secrets from the key store once it is logged",
                               negate="--keep-keys", negate_doc="keep a connection's secrets in the key store after "
                               "it is logged (by default they are dropped)")
    digest: bool = option(True, "the flow log's SHA-256 of each direction's plaintext (c2s/s2c sha256), "
                          "computed over every byte (decrypt: only when --flows writes a flow log)", negate="--no-digest",
                          negate_doc="no SHA-256 of each direction's plaintext: the flow log's sha256 fields "
                          "are null (hashing every byte is about a quarter of decrypt's work)")
    fast_path: bool = option(True, "established TLS streams handled per packet by the compiled path "
                             "(bridge.engine.lanes)", negate="--no-fast-path",
                             negate_doc="every packet through the Python path (the reference the compiled "
                             "path is compared with; slower)")
    fast_path_after: int = option(16 * 1024, "a connection's streams become lanes of the compiled path once one of "
                                  "its directions is known to carry this many bytes (delivered, and the rest of the "
                                  "record being read): a short connection's stay on the Python path, which costs "
                                  "them less (0: every connection's, as soon as they can)", low=0, high=1 << 40,
                                  flag="--fast-path-after", metavar="BYTES")
    http3_as: str = option("http1", "what each HTTP/3 request of a QUIC connection becomes for the IDS: http1, a "
                           "synthetic HTTP/1.1 connection (Suricata and Zeek parse it), or http2, HTTP/2 with prior "
                           "knowledge (Suricata; Zeek has no HTTP/2 analyzer)", choices=("http1", "http2"),
                           flag="--http3-as", metavar="PROTOCOL")
