"""Which Linux capabilities this process lacks (for clear messages, before a
socket or a tracefs write fails obscurely)."""

from __future__ import annotations

CAPABILITIES = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
                "CAP_PERFMON": 38}


def effective_capabilities() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing(*names: str) -> list[str]:
    """The named capabilities that are not effective (root has them all)."""
    effective = effective_capabilities()
    return [name for name in names if not effective >> CAPABILITIES[name] & 1]
