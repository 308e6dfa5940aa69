"""tls-ids-bridge: decrypt mirrored TLS with harvested secrets; re-inject it as cleartext."""

__version__ = "0.1.0"
