"""TLS, as pure code over bytes: record framing, handshake parsing, key schedules,
record protection, and the per-connection state machine that ties them together."""
