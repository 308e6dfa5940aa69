"""tracefs fetch-args evaluated on a stopped guest: the same probe definitions the
process harvester hands to the kernel (:mod:`bridge.harvest.keylog_hooks`), read
from a breakpoint's registers and the guest's memory instead.

A key-log hook point (:class:`~bridge.harvest.keylog_hooks.KeyLogBinary`) says
what to copy at its function's first instruction as tracefs fetch-args
(``label=+0(%bx):x64[4]``, ``secret=+0(+0(%dx)):x64[6]``, ``secret_len=+8(%dx):u32``):
evaluating them here gives the decoder the very dictionary a uprobe's trace line
gives (arrays as bytes, scalars as ints, None for a fault), so Go's, GnuTLS's and
BoringSSL's decoders serve guests unchanged.

Grammar (the subset the hook points use): ``NAME=FETCH:TYPE`` with FETCH a
register (``%di``, ``%r9``) or ``+OFFSET(FETCH)`` / ``-OFFSET(FETCH)`` (the
memory at FETCH's value plus OFFSET; inner levels read 8-byte pointers) and TYPE
``u8/u16/u32/u64/s*/x8..x64``, optionally an array ``x64[N]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from bridge.errors import GuestAccessError, HookError

#: tracefs register names → the gdbstub's.
_REGISTERS = {
    "ax": "rax", "bx": "rbx", "cx": "rcx", "dx": "rdx", "si": "rsi", "di": "rdi", "bp": "rbp", "sp": "rsp",
    "ip": "rip", **{f"r{n}": f"r{n}" for n in range(8, 16)},
}
_ARG = re.compile(r"^(?P<name>[A-Za-z_]\w*)=(?P<fetch>\S+):(?P<type>[usx](?:8|16|32|64))(?:\[(?P<count>\d+)\])?$")
_DEREF = re.compile(r"^(?P<sign>[+-])(?P<offset>0x[0-9a-fA-F]+|\d+)\((?P<inner>.+)\)$")
#: Fetched bytes per argument at most (tracefs itself limits an event to about 3 KiB).
_MAX_BYTES = 4096

Reader = Callable[[int, int], bytes]


def _location(fetch: str, registers: dict[str, int], read: Reader) -> tuple[bool, int]:
    """(is memory, value): a register's value, or the address a dereference reads."""
    if fetch.startswith("%"):
        name = _REGISTERS.get(fetch[1:])
        if name is None or name not in registers:
            raise HookError(f"fetch-arg register {fetch} unknown")
        return False, registers[name]
    match = _DEREF.match(fetch)
    if match is None:
        raise HookError(f"fetch-arg {fetch!r} not understood")
    offset = int(match["offset"], 0) * (-1 if match["sign"] == "-" else 1)
    memory, value = _location(match["inner"], registers, read)
    if memory:  # an inner dereference: the pointer stored there
        value = int.from_bytes(read(value, 8), "little")
    return True, (value + offset) & ((1 << 64) - 1)


def evaluate(args: tuple[str, ...] | list[str], registers: dict[str, int],
             read: Reader) -> dict[str, bytes | int | None]:
    """Each fetch-arg's value: arrays as bytes, scalars as ints, None where the
    memory could not be read.  Raises HookError for an argument not understood."""
    values: dict[str, bytes | int | None] = {}
    for arg in args:
        match = _ARG.match(arg)
        if match is None:
            raise HookError(f"fetch-arg {arg!r} not understood")
        width = int(match["type"][1:]) // 8
        count = int(match["count"]) if match["count"] else None
        try:
            memory, value = _location(match["fetch"], registers, read)
            if count is not None:
                if not memory or width * count > _MAX_BYTES:
                    raise HookError(f"fetch-arg {arg!r}: an array needs a dereference")
                values[match["name"]] = bytes(read(value, width * count))
                continue
            if memory:
                value = int.from_bytes(read(value, width), "little")
            value &= (1 << (8 * width)) - 1
            if match["type"][0] == "s" and value >> (8 * width - 1):
                value -= 1 << (8 * width)
            values[match["name"]] = value
        except GuestAccessError:
            values[match["name"]] = None  # the kernel's "(fault)"
    return values
