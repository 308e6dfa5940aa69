"""Emulating the first instruction of a hooked function, so a breakpoint hit
resumes without removing the breakpoint and single-stepping (QEMU does not step
over a breakpoint on resume, and a step under TCG flushes its translation cache).

Pure: bytes and register values in, register (and memory) writes out.  Only the
forms the hooked functions start with are known (``bench/survey_hooks.py`` and
``objdump`` of each shipped build): OpenSSL's ``endbr64``; ``mov disp(%reg),%reg``;
``mov``/``test``/``xor`` between registers; ``sub``/``add $imm8`` on a
register; ``push %reg``; Go's stack-bound checks, ``lea disp(%rsp),%r12``
(functions with a frame larger than a few words, go1.19's ``writeKeyLog``) and
``cmp 0x10(%r14),%rsp``/``%r12``; GnuTLS's ``cmpb $imm8,disp(%rdi)`` (its
key-log function tests ``session->internals.handshake_in_progress`` first).
Memory operands are ``disp(%base)`` with an optional SIB byte without index
(``%rsp``/``%r12`` bases); RIP-relative ones are refused.  Anything else returns
None and the caller steps over.
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


def _sub_flags(eflags: int, before: int, operand: int, bits: int) -> int:
    """EFLAGS after ``before - operand`` on ``bits``-wide values (cmp, sub)."""
    mask = (1 << bits) - 1
    before, operand = before & mask, operand & mask
    result = (before - operand) & mask
    flags = eflags & ~(_CF | _PF | _AF | _ZF | _SF | _OF)
    flags |= _CF if before < operand else 0
    flags |= _PF if _parity(result) else 0
    flags |= _AF if (before ^ operand ^ result) & 0x10 else 0
    flags |= _ZF if result == 0 else 0
    flags |= _SF if result >> (bits - 1) else 0
    flags |= _OF if ((before ^ operand) & (before ^ result)) >> (bits - 1) & 1 else 0
    return flags


def _memory_operand(code: bytes, at: int, mod: int, rm: int, rex_b: int,
                    registers: dict[str, int]) -> tuple[int, int] | None:
    """(address, bytes after the operand) of a ``disp(%base)`` ModRM operand (SIB
    without index allowed) starting after the ModRM byte at ``at``; None otherwise."""
    if mod == 3:
        return None
    base = rm
    if rm == 4:  # SIB
        if len(code) <= at:
            return None
        sib = code[at]
        at += 1
        if (sib >> 3) & 7 != 4 or sib & 7 == 5:  # an index register, or no base: not emulated
            return None
        base = sib & 7
    elif rm == 5:
        return None  # RIP-relative (mod 0) or disp32(%rbp)/%r13 forms: not met, not emulated
    size = {0: 0, 1: 1, 2: 4}[mod]
    raw = code[at : at + size]
    if len(raw) != size:
        return None
    displacement = int.from_bytes(raw, "little", signed=True) if raw else 0
    address = (registers[REGISTERS[base | rex_b << 3]] + displacement) & _MASK64
    return address, at + size


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
    if opcode == 0x8D and wide and mod != 3:  # lea disp(%base),%reg
        operand = _memory_operand(code, index + 2, mod, modrm & 7, rex_b, registers)
        if operand is None:
            return None
        return Effect(operand[1], {REGISTERS[reg]: operand[0]})
    if opcode == 0x3B and wide and mod != 3:  # cmp disp(%base),%reg: flags of reg - memory
        operand = _memory_operand(code, index + 2, mod, modrm & 7, rex_b, registers)
        if operand is None:
            return None
        value = int.from_bytes(read_memory(operand[0], 8), "little")
        return Effect(operand[1], {"eflags": _sub_flags(registers["eflags"], registers[REGISTERS[reg]], value, 64)})
    if opcode == 0x80 and (modrm >> 3) & 7 == 7 and mod != 3:  # cmpb $imm8,disp(%base)
        operand = _memory_operand(code, index + 2, mod, modrm & 7, rex_b, registers)
        if operand is None or len(code) <= operand[1]:
            return None
        value = read_memory(operand[0], 1)[0]
        return Effect(operand[1] + 1, {"eflags": _sub_flags(registers["eflags"], value, code[operand[1]], 8)})
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
