"""QUIC and HTTP/3, passively observed (sans-I/O): UDP payloads in, a QUIC
connection's handshake facts, stream data and HTTP/3 messages out.

Modules, each depending only on those above it::

    quic.versions      v1 (RFC 9000/9001) and v2 (RFC 9369): salts, labels, packet types
    quic.protection    packet protection (RFC 9001 §5): Initial secrets from the
                       Destination Connection ID, the "quic key/iv/hp" keys,
                       header protection, AEAD, key update ("quic ku")
    quic.packets       headers (long, short, Retry, Version Negotiation), coalesced
                       packets, packet number recovery (RFC 9000 §17, A.3)
    quic.frames        frames (RFC 9000 §19): CRYPTO, STREAM and the rest
    quic.streams       one byte stream's reassembly by offset: out of order,
                       overlapping (first copy wins), bounded, gaps marked
    quic.connection    one connection: orientation, packet number spaces, the TLS
                       handshake inside CRYPTO frames (bridge.tls.handshake), secrets
                       by the TLS 1.3 key log labels, streams
    quic.http3         HTTP/3 (RFC 9114) frames and QPACK (RFC 9204, via pylsqpack):
                       each request stream as an exchange (header fields, bodies)
    quic.synthetic     what the IDS is shown of an exchange: HTTP/1.1 (default) or HTTP/2

The engine (:mod:`bridge.engine.quic`) keeps a table of these connections and
turns their output into the same events as TCP's.
"""
