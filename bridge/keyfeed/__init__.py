"""The key feed: TLS secrets from harvesters to sensors over ZeroMQ.

Harvesters publish, sensors subscribe; a broker joins many of each.  The
pattern is ZeroMQ's "Clone" (zguide ch. 5): live records go out on a PUB
socket, and a ROUTER beside it (the *snapshot service*) answers a sensor that
starts with the records of the last minutes, and a sensor that saw a gap in a
publisher's sequence numbers with exactly the missing ones.  Heartbeats carry
each publisher's last sequence number, so a lost tail is noticed too.

Pure parts (no sockets, clock injected):

* :mod:`bridge.keyfeed.wire` — the versioned msgpack schema, strict validation;
* :mod:`bridge.keyfeed.sequence` — per-publisher sequence tracking, gaps;
* :mod:`bridge.keyfeed.retention` — the recent records a snapshot service keeps.

Drivers (pyzmq):

* :mod:`bridge.keyfeed.security` — CurveZMQ certificates, allow-lists, endpoints;
* :mod:`bridge.keyfeed.publisher`, :mod:`bridge.keyfeed.subscriber`,
  :mod:`bridge.keyfeed.broker`; :mod:`bridge.cli.keys` is the CLI.

Secrets never appear in a ``repr``, a log line or an exception message.
"""
