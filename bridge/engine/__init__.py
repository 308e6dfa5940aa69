"""The sensor path: mirrored packets in, per-connection events out.

This package is sans-I/O: it never reads a socket or a file.  Drivers at the
edge feed it and take its events — the capture readers (:mod:`bridge.capture`),
the key sources (:mod:`bridge.keyfeed.sources`), the outputs
(:mod:`bridge.outputs`, :mod:`bridge.reinject`), and the front ends that wire
them (``tls-bridge decrypt`` in :mod:`bridge.cli.decrypt`, ``tls-bridge run``'s
workers in :mod:`bridge.sensor.worker`, the demo).  They all use one API::

    engine = Engine(store, EngineSettings(), output=Outputs(...), request_keys=...)
    engine.run(frames)        # Frames, lists of them, FrameBatches; None = a quiet live link (timed work)
    engine.finish()           # end of input: every connection is finished

Layers, each depending only on those below it::

    bridge.secrets           labels, ConnectionSecrets (what one connection's secrets are)
    bridge.capture           frames from pcap/pcapng files, AF_PACKET
    engine.packets           a frame → a TCP segment (link, IPv4/IPv6, TCP), flags
    engine.tcp               one direction's reassembly: first copy wins, gaps marked
    bridge.tls               one TLS connection, sans-I/O: records → handshake → plaintext
      tls.state                the phases and every transition, in one table
      tls.record_layer         per direction: framing, protection, records waiting for keys
      tls.connection           the handshake: hellos, key schedules, resumption; secrets given to it
    engine.decryptor         segments → flows (orientation, LRU, bounds) → TLS connections → events;
                             gives each connection its secrets from the key store
    engine.lanes             the decryptor with the compiled per-packet path (_lanes.c): established
                             streams' frames a chunk at a time (lanes), and connections whose server
                             has not answered kept in C until it does (the front, _front_core.h)
    bridge.quic              QUIC and HTTP/3, sans-I/O: packet protection, streams, handshake, HTTP/3 → HTTP/1.1
    engine.udp/quic          frames that are not TCP → UDP datagrams → QUIC flows → the same events (each
                             HTTP/3 request a synthetic connection whose FlowFinished names its parent)
    engine.engine            frames → decryptor (and QUIC flows), its clock, key arrivals → one output callable
    engine.events/summary    what comes out: FlowStarted, KeysWanted, PlaintextData, FlowFinished
                             (whose typed FlowSummary is the flow log line)
    bridge.outputs           the flow log, plaintext files, key requests, re-injection, in a fixed order
    engine.runtime           the process that runs a decryptor, tuned for it (garbage collector, allocator)

Settings are declared once (:class:`~bridge.engine.settings.EngineSettings`):
the same dataclass is ``tls-bridge decrypt``'s tuning flags and the sensor's
``[decrypt]`` TOML section.

Where a compiled core goes: the per-byte and per-packet work sits behind narrow
seams that the state machine does not see — frame decoding
(:func:`engine.packets.classify`), reassembly (:class:`engine.tcp.StreamReassembler`),
a direction's record layer (:class:`bridge.tls.record_layer.RecordLayer`:
framing and record protection) and the synthetic frame builder
(:class:`bridge.reinject.synthetic.SyntheticFlows`).  Each can be replaced by a
compiled implementation with the same API, as aioquic replaces its buffer and
crypto modules.
"""

from bridge.engine.engine import Engine, PacketCounters
from bridge.engine.events import Event, FlowFinished, FlowInfo, FlowStarted, KeysWanted, PlaintextData
from bridge.engine.settings import EngineSettings
from bridge.engine.summary import DirectionSummary, FlowSummary

__all__ = [
    "DirectionSummary",
    "Engine",
    "EngineSettings",
    "Event",
    "FlowFinished",
    "FlowInfo",
    "FlowStarted",
    "FlowSummary",
    "KeysWanted",
    "PacketCounters",
    "PlaintextData",
]
