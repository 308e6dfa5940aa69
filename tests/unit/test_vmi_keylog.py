"""Pure parts of the guests' key-log hooks: the first instructions of Go's and
GnuTLS's key-log functions emulated on the host (the encodings are the ones
``objdump`` shows in go1.19.8's ``writeKeyLog``, go1.23's stack check and
GnuTLS 3.7.9's ``_gnutls_nss_keylog_func``), and tracefs fetch-args evaluated on
registers and a memory image exactly as the kernel's uprobes fetch them."""

from __future__ import annotations

import struct

import pytest

from bridge.errors import GuestAccessError, HookError
from bridge.harvest import gnutls, golang
from bridge.vmi.fetchargs import evaluate
from bridge.vmi.first_instruction import REGISTERS, emulate

_CF, _PF, _AF, _ZF, _SF, _OF = 1, 4, 16, 64, 128, 2048


def _registers(**values: int) -> dict[str, int]:
    registers = {name: 0 for name in REGISTERS}
    registers["eflags"] = 0x202
    registers.update(values)
    return registers


class _Memory:
    """A sparse little memory: bytes at addresses; anything else faults."""

    def __init__(self, contents: dict[int, bytes]) -> None:
        self.contents = contents

    def read(self, address: int, size: int) -> bytes:
        for start, data in self.contents.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        raise GuestAccessError(f"{address:#x} not mapped")


def test_go_lea_of_the_stack_pointer_into_r12():
    # go1.19.8 writeKeyLog: lea -0x8(%rsp),%r12 (a frame larger than the stack guard's slack)
    effect = emulate(bytes.fromhex("4c8d6424f8") + bytes(10), _registers(rsp=0xC000_0100), _Memory({}).read)
    assert effect is not None and effect.length == 5
    assert effect.registers == {"r12": 0xC000_00F8}  # no flags touched
    # a 32-bit displacement: lea -0x128(%rsp),%r12
    effect = emulate(bytes.fromhex("4c8da424d8feffff") + bytes(8), _registers(rsp=0x1000), _Memory({}).read)
    assert effect is not None and effect.length == 8 and effect.registers == {"r12": 0x1000 - 0x128}


@pytest.mark.parametrize("code, register", [("4d3b6610", "r12"), ("493b6610", "rsp")])
def test_go_stack_bound_check_sets_the_flags_jbe_reads(code, register):
    """cmp 0x10(%r14),%r12 / %rsp: g.stackguard0 against the stack pointer."""
    g = 0xC000_0000
    memory = _Memory({g + 0x10: struct.pack("<Q", 0x7000)})
    above = emulate(bytes.fromhex(code) + bytes(11), _registers(r14=g, **{register: 0x8000}), memory.read)
    assert above is not None and above.length == 4 and set(above.registers) == {"eflags"}
    flags = above.registers["eflags"]
    assert not flags & _CF and not flags & _ZF  # jbe not taken: the stack is large enough
    below = emulate(bytes.fromhex(code) + bytes(11), _registers(r14=g, **{register: 0x6000}), memory.read)
    assert below is not None and below.registers["eflags"] & _CF and below.registers["eflags"] & _SF
    equal = emulate(bytes.fromhex(code) + bytes(11), _registers(r14=g, **{register: 0x7000}), memory.read)
    assert equal is not None and equal.registers["eflags"] & _ZF and equal.registers["eflags"] & _PF
    assert not equal.registers["eflags"] & (_CF | _SF | _OF | _AF)
    assert equal.registers["eflags"] & 0x200  # other flags (IF) kept


def test_gnutls_cmpb_of_a_session_byte():
    """cmpb $0x0,0x71c(%rdi): session->internals.handshake_in_progress."""
    session = 0x5555_0000
    code = bytes.fromhex("80bf1c07000000") + bytes(8)
    for value, zero in ((0, True), (1, False), (0x80, False)):
        memory = _Memory({session + 0x71C: bytes([value])})
        effect = emulate(code, _registers(rdi=session), memory.read)
        assert effect is not None and effect.length == 7 and set(effect.registers) == {"eflags"}
        assert bool(effect.registers["eflags"] & _ZF) == zero
        assert bool(effect.registers["eflags"] & _SF) == (value >= 0x80)  # 8-bit sign
        assert not effect.registers["eflags"] & _CF
    # cmpb $0x5,0x10(%rdi) against 3: borrow
    effect = emulate(bytes.fromhex("807f1005") + bytes(11), _registers(rdi=session),
                     _Memory({session + 0x10: b"\x03"}).read)
    assert effect is not None and effect.length == 4 and effect.registers["eflags"] & _CF


def test_forms_not_emulated_are_refused():
    read = _Memory({}).read
    assert emulate(bytes.fromhex("488d0500000000") + bytes(8), _registers(), read) is None  # lea rip-relative
    assert emulate(bytes.fromhex("488d0c8500000000") + bytes(7), _registers(), read) is None  # SIB with an index
    assert emulate(bytes.fromhex("803d0000000000") + bytes(8), _registers(), read) is None  # cmpb rip-relative
    assert emulate(bytes.fromhex("e800000000") + bytes(10), _registers(), read) is None  # call


def test_go_fetch_args_give_the_line_the_decoder_reads():
    random, secret = bytes(range(32)), bytes(range(100, 148))
    label = b"CLIENT_TRAFFIC_SECRET_0"
    memory = _Memory({0x1000: label + bytes(9), 0x2000: random, 0x3000: secret})
    registers = _registers(rbx=0x1000, rcx=len(label), rdi=0x2000, rsi=32, r8=32, r9=0x3000, r10=48, r11=48)
    args = evaluate(golang.PROBE_ARGS, registers, memory.read)
    assert args["label_len"] == len(label) and args["random"] == random and args["secret"] == secret
    line = golang.decode(args)
    assert line is not None and (line.label, line.client_random, line.secret) == (label.decode(), random, secret)


def test_gnutls_fetch_args_follow_the_datum_pointer():
    facts = gnutls.GnuTlsFacts("3.7.9", 0x53240, 0x50)
    random, secret = bytes(range(32)), bytes(range(50, 82))
    session, datum, data, label = 0x10000, 0x20000, 0x30000, 0x40000
    memory = _Memory({session: bytes(0x50) + random, datum: struct.pack("<QI", data, 32) + bytes(4),
                      data: secret + bytes(16), label: b"SERVER_HANDSHAKE_TRAFFIC_SECRET\0"})
    args = evaluate(gnutls.probe_args(facts), _registers(rdi=session, rsi=label, rdx=datum), memory.read)
    assert args["secret_len"] == 32 and args["random"] == random
    line = gnutls.decode(args)
    assert line is not None and (line.label, line.client_random, line.secret) == (
        "SERVER_HANDSHAKE_TRAFFIC_SECRET", random, secret)


def test_fetch_arg_faults_and_malformed_args():
    args = evaluate(("a=+0(%di):x64[4]", "b=%si:u32", "c=+8(+0(%dx)):s32", "d=-8(%di):u8"),
                    _registers(rdi=0x999, rsi=0x1_0000_0005, rdx=0x100),
                    _Memory({0x100: struct.pack("<Q", 0x200), 0x208: struct.pack("<i", -2)}).read)
    assert args == {"a": None, "b": 5, "c": -2, "d": None}  # faults as the kernel's "(fault)"
    for bad in ("x=%zz:u64", "x=+0(%di)", "x=%di:x64[4]", "x=*(%di):u64"):
        with pytest.raises(HookError):
            evaluate((bad,), _registers(), _Memory({}).read)


def test_gnutls_facts_with_a_session_layout_round_trip_and_refuse_nonsense():
    import json

    from bridge.errors import ProfileError

    layout = gnutls.GnuTlsLayout(0x20, {label: 0x1794 + 0x40 * n for n, label in enumerate(gnutls.TLS13_LABELS)},
                                 0xF8, 0x21A0E0, 0x21A0B8, 7312)
    facts = gnutls.GnuTlsFacts("3.7.9", 0x53240, 0x50, layout)
    assert gnutls.GnuTlsFacts.from_json(facts.to_json()) == facts
    assert gnutls.GnuTlsFacts.from_json(json.dumps({"version": "3.7.9", "keylog_function": 1, "client_random": 80,
                                                    "layout": None})).layout is None
    body = json.loads(facts.to_json())
    del body["layout"]["tls13"]["EXPORTER_SECRET"]
    with pytest.raises(ProfileError):
        gnutls.GnuTlsFacts.from_json(json.dumps(body))
    body = json.loads(facts.to_json())
    body["layout"]["master_secret"] = 1 << 20
    with pytest.raises(ProfileError):
        gnutls.GnuTlsFacts.from_json(json.dumps(body))
