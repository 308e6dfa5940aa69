"""Emulating the first instruction of a hooked function, so a breakpoint hit
resumes without removing the breakpoint and single-stepping (QEMU does not step
over a breakpoint on resume, and a step under TCG flushes its translation cache).

Pure: bytes and register values in, register (and memory) writes out.  Only the
forms OpenSSL's hook points start with are known (``bench/survey_hooks.py`` and
``objdump`` of each shipped build): ``endbr64``; ``mov disp(%reg),%reg``;
``mov``/``test``/``xor`` between registers; ``sub``/``add $imm8`` on a
register; ``push %reg``.  Anything else returns None and the caller steps over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

REGISTERS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_MASK64 = (1 << 64) - 1
_CF, _PF, _AF, _ZF, _SF, _OF = 1 << 0, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11


@dataclass(slots=True)
class Effect:
    """What the instruction does: its length, registers to set, memory to write."""

    length: int
    registers: dict[str, int] = field(default_factory=dict)
    memory: list[tuple[int, bytes]] = field(default_factory=list)


def _parity(value: int) -> bool:
    return bin(value & 0xFF).count("1") % 2 == 0


def _flags(eflags: int, result: int, *, carry: bool = False, overflow: bool = False, adjust: bool | None = None) -> int:
    result &= _MASK64
    flags = eflags & ~(_CF | _PF | _ZF | _SF | _OF)
    flags |= _CF if carry else 0
    flags |= _PF if _parity(result) else 0
    flags |= _ZF if result == 0 else 0
    flags |= _SF if result >> 63 else 0
    flags |= _OF if overflow else 0
    if adjust is not None:
        flags = (flags & ~_AF) | (_AF if adjust else 0)
    return flags


def emulate(code: bytes, registers: dict[str, int], read_memory: Callable[[int, int], bytes]) -> Effect | None:
    """The effect of the instruction at the start of ``code`` (at least 15 bytes),
    given the registers (the 16 general ones, ``eflags``); None if not known."""
    if code[:4] == b"\xf3\x0f\x1e\xfa":  # endbr64
        return Effect(4)
    index, rex = 0, 0
    if 0x40 <= code[0] <= 0x4F:
        rex, index = code[0], 1
    wide, rex_r, rex_b = bool(rex & 8), (rex >> 2) & 1, rex & 1
    opcode = code[index]
    if 0x50 <= opcode <= 0x57 and not wide:  # push %reg
        source = REGISTERS[(opcode - 0x50) | rex_b << 3]
        rsp = (registers["rsp"] - 8) & _MASK64
        return Effect(index + 1, {"rsp": rsp}, [(rsp, registers[source].to_bytes(8, "little"))])
    if len(code) < index + 2:
        return None
    modrm = code[index + 1]
    mod, reg, rm = modrm >> 6, ((modrm >> 3) & 7) | rex_r << 3, (modrm & 7) | rex_b << 3
    if opcode == 0x8B and wide and mod in (0, 1, 2) and rm & 7 not in (4, 5):  # mov disp(%rm),%reg
        displacement_size = {0: 0, 1: 1, 2: 4}[mod]
        raw = code[index + 2 : index + 2 + displacement_size]
        displacement = int.from_bytes(raw, "little", signed=True) if raw else 0
        address = (registers[REGISTERS[rm]] + displacement) & _MASK64
        value = int.from_bytes(read_memory(address, 8), "little")
        return Effect(index + 2 + displacement_size, {REGISTERS[reg]: value})
    if mod != 3:
        return None
    destination, source = REGISTERS[rm], REGISTERS[reg]
    eflags = registers["eflags"]
    if opcode in (0x89, 0x8B) and wide:  # mov between registers
        target, value = (destination, registers[source]) if opcode == 0x89 else (source, registers[destination])
        return Effect(index + 2, {target: value})
    if opcode == 0x85 and wide:  # test %reg,%rm
        result = registers[destination] & registers[source]
        return Effect(index + 2, {"eflags": _flags(eflags, result)})
    if opcode == 0x31 and not wide and rm == reg:  # xor %r32,%r32: zero
        return Effect(index + 2, {destination: 0, "eflags": _flags(eflags, 0, adjust=False)})
    if opcode == 0x83 and wide and (modrm >> 3) & 7 in (0, 5):  # add/sub $imm8,%rm
        immediate = int.from_bytes(code[index + 2 : index + 3], "little", signed=True) & _MASK64
        before = registers[destination]
        subtract = (modrm >> 3) & 7 == 5
        result = (before - immediate if subtract else before + immediate) & _MASK64
        if subtract:
            carry = before < immediate
            overflow = bool(((before ^ immediate) & (before ^ result)) >> 63)
        else:
            carry = before + immediate > _MASK64
            overflow = bool((~(before ^ immediate) & (before ^ result)) >> 63 & 1)
        adjust = bool((before ^ immediate ^ result) & 0x10)
        return Effect(index + 3, {destination: result,
                                  "eflags": _flags(eflags, result, carry=carry, overflow=overflow, adjust=adjust)})
    return None
