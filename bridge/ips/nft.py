"""nftables on the gateway: a table of our own with timed sets of blocked
connections (both directions of each 4-tuple) and a forward-hook chain that
drops them.  A thin driver around the ``nft`` binary (Debian's nftables)."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

from bridge.errors import BridgeError


class NftError(BridgeError):
    """nftables refused a command (or is missing)."""


class NftBlocklist:
    def __init__(self, table: str = "inet tls_bridge", set_name: str = "blocked", *, timeout: str = "1h") -> None:
        parts = table.split()
        if len(parts) != 2 or parts[0] not in ("inet", "ip", "ip6", "bridge", "netdev"):
            raise NftError(f"nftables table {table!r}: expected 'FAMILY NAME', e.g. 'inet tls_bridge'")
        self.family, self.table = parts
        self.set4, self.set6 = f"{set_name}4", f"{set_name}6"
        self.timeout = timeout
        self.nft = shutil.which("nft")
        if self.nft is None:
            raise NftError("nft is not installed (Debian package nftables)")

    def _run(self, script: str) -> None:
        result = subprocess.run([self.nft, "-f", "-"], input=script, capture_output=True, text=True)
        if result.returncode != 0:
            raise NftError(f"nft: {result.stderr.strip()[:300]} (needs CAP_NET_ADMIN)")

    def setup(self) -> None:
        """Create the table, sets and chain (idempotent: existing ones are kept)."""
        table = f"{self.family} {self.table}"
        self._run(f"""
add table {table}
add set {table} {self.set4} {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; flags timeout; timeout {self.timeout}; }}
add set {table} {self.set6} {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; flags timeout; timeout {self.timeout}; }}
add chain {table} forward {{ type filter hook forward priority -10; policy accept; }}
""")
        listing = subprocess.run([self.nft, "list", "chain", self.family, self.table, "forward"],
                                 capture_output=True, text=True).stdout
        if f"@{self.set4}" not in listing:
            self._run(f"""
add rule {table} forward ip saddr . tcp sport . ip daddr . tcp dport @{self.set4} counter drop
add rule {table} forward ip6 saddr . tcp sport . ip6 daddr . tcp dport @{self.set6} counter drop
""")

    def block(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        """Drop the connection a ↔ b, both directions, for the set's timeout."""
        version = ipaddress.ip_address(a[0]).version
        name = self.set4 if version == 4 else self.set6
        elements = f"{a[0]} . {a[1]} . {b[0]} . {b[1]}, {b[0]} . {b[1]} . {a[0]} . {a[1]}"
        self._run(f"add element {self.family} {self.table} {name} {{ {elements} }}")

    def remove(self) -> None:
        subprocess.run([self.nft, "delete", "table", self.family, self.table], capture_output=True)
