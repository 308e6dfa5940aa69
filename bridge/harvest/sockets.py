"""Which process owns a TCP connection: ``/proc/PID/net/tcp{,6}`` (the socket
table of the process's network namespace) and ``/proc/PID/fd`` (its sockets)."""

from __future__ import annotations

import os
import socket

Endpoint = tuple[bytes, int]  # packed address, port


def _address(text: str) -> Endpoint:
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return packed, int(port, 16)


def _v4_mapped(endpoint: Endpoint) -> Endpoint:
    address, port = endpoint
    return (b"\0" * 10 + b"\xff\xff" + address if len(address) == 4 else address), port


def socket_table(pid: int) -> dict[tuple[Endpoint, Endpoint], int]:
    """(local, remote) → socket inode, in the network namespace of ``pid``.
    IPv4 endpoints are also listed as IPv4-mapped IPv6 ones (dual-stack sockets)."""
    table: dict[tuple[Endpoint, Endpoint], int] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}", encoding="ascii") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, remote, inode = _address(parts[1]), _address(parts[2]), int(parts[9])
            if inode:
                table[(local, remote)] = inode
                if len(local[0]) == 4:
                    table[(_v4_mapped(local), _v4_mapped(remote))] = inode
    return table


def process_sockets(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        entries = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for entry in entries:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{entry}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connection_owner(pids: list[int], client: Endpoint, server: Endpoint) -> int | None:
    """The pid among ``pids`` holding either end of the connection client ↔ server."""
    for pid in pids:
        table = socket_table(pid)
        inodes = {table.get((server, client)), table.get((client, server)),
                  table.get((_v4_mapped(server), _v4_mapped(client))), table.get((_v4_mapped(client), _v4_mapped(server)))}
        inodes.discard(None)
        if inodes and inodes & process_sockets(pid):
            return pid
    return None


def format_endpoint(endpoint: Endpoint) -> str:
    address, port = endpoint
    family = socket.AF_INET if len(address) == 4 else socket.AF_INET6
    text = socket.inet_ntop(family, address)
    return f"{text}:{port}" if family == socket.AF_INET else f"[{text}]:{port}"
