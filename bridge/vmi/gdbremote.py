"""A GDB Remote Serial Protocol client, for QEMU's gdbstub.

The codec is pure (:func:`frame`, :class:`PacketReader`); :class:`GdbRemote`
drives a TCP connection: requests with acknowledgement, the register layout
from the stub's own ``target.xml`` (``g`` and ``P`` need it), breakpoints (``Z1``
hardware, ``Z0`` software), continue, single step, interrupt, detach.

Stock QEMU (7.2) has no ``QStartNoAckMode`` and does not step over a
breakpoint on resume; :mod:`bridge.vmi.gdb_hooks` deals with both.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

from bridge.errors import HookError

_XML_REG = re.compile(rb'<reg\b[^>]*\bname="([^"]+)"[^>]*\bbitsize="(\d+)"[^>]*>')
_XML_INCLUDE = re.compile(rb'<xi:include href="([^"]+)"')


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(payload: bytes) -> bytes:
    out = bytearray()
    for byte in payload:
        if byte in b"#$}*":
            out += bytes([0x7D, byte ^ 0x20])
        else:
            out.append(byte)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    body = escape(payload)
    return b"$" + body + b"#%02x" % checksum(body)


def _unescape(body: bytes) -> bytes:
    out, index = bytearray(), 0
    while index < len(body):
        byte = body[index]
        if byte == 0x7D and index + 1 < len(body):
            out.append(body[index + 1] ^ 0x20)
            index += 2
        elif byte == 0x2A and out and index + 1 < len(body):  # run-length: repeat the last byte
            out += bytes([out[-1]]) * (body[index + 1] - 29)
            index += 2
        else:
            out.append(byte)
            index += 1
    return bytes(out)


@dataclass(frozen=True, slots=True)
class Packet:
    payload: bytes
    valid: bool  # checksum matched


class PacketReader:
    """Bytes from the stub → acknowledgements and packets."""

    def __init__(self) -> None:
        self._buffer = b""
        self.acks = 0
        self.nacks = 0

    def feed(self, data: bytes) -> list[Packet]:
        self._buffer += data
        packets = []
        while self._buffer:
            first = self._buffer[:1]
            if first == b"+":
                self.acks += 1
                self._buffer = self._buffer[1:]
            elif first == b"-":
                self.nacks += 1
                self._buffer = self._buffer[1:]
            elif first == b"$":
                end = self._buffer.find(b"#")
                if end < 0 or len(self._buffer) < end + 3:
                    break
                body = self._buffer[1:end]
                try:
                    valid = int(self._buffer[end + 1 : end + 3], 16) == checksum(body)
                except ValueError:
                    valid = False
                packets.append(Packet(_unescape(body), valid))
                self._buffer = self._buffer[end + 3 :]
            else:
                self._buffer = self._buffer[1:]  # noise between packets
        return packets


@dataclass(frozen=True, slots=True)
class Register:
    name: str
    number: int
    offset: int  # in the g packet's bytes
    size: int


class GdbRemote:
    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise HookError(f"cannot connect to the gdbstub at {host}:{port}: {exc.strerror or exc} "
                            "(start QEMU with -gdb tcp:HOST:PORT, or 'gdbserver tcp::PORT' in its monitor)") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.reader = PacketReader()
        self._pending: list[Packet] = []
        self.registers: dict[str, Register] = {}
        self.register_bytes = 0

    # --- transport -----------------------------------------------------------------------

    def _receive(self, timeout: float | None) -> Packet | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._pending:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise HookError("the gdbstub closed the connection (the guest is gone?)")
            for packet in self.reader.feed(data):
                self.sock.sendall(b"+" if packet.valid else b"-")
                if packet.valid:
                    self._pending.append(packet)
        return self._pending.pop(0)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(frame(payload))

    def request(self, payload: bytes, *, timeout: float | None = None) -> bytes:
        self.send(payload)
        packet = self._receive(self.timeout if timeout is None else timeout)
        if packet is None:
            raise HookError(f"the gdbstub did not answer {payload[:20]!r}")
        return packet.payload

    def wait_stop(self, timeout: float | None) -> bytes | None:
        """The next stop reply (``T05...``), or None after ``timeout``."""
        packet = self._receive(timeout)
        return None if packet is None else packet.payload

    def interrupt(self) -> None:
        self.sock.sendall(b"\x03")

    # --- the stub's description -----------------------------------------------------------

    def _xfer(self, annex: str) -> bytes:
        data, offset = b"", 0
        while True:
            reply = self.request(f"qXfer:features:read:{annex}:{offset:x},fff".encode())
            if not reply or reply[:1] not in b"ml":
                raise HookError(f"the gdbstub gave no {annex}")
            data += reply[1:]
            offset += len(reply) - 1
            if reply[:1] == b"l":
                return data

    def load_registers(self) -> None:
        """The register layout of the ``g`` packet, from ``target.xml`` and its includes."""
        self.request(b"qSupported:xmlRegisters=i386")
        names: list[tuple[str, int]] = []
        pending = ["target.xml"]
        while pending:
            document = self._xfer(pending.pop(0))
            names += [(n.decode(), int(b)) for n, b in _XML_REG.findall(document)]
            pending += [href.decode() for href in _XML_INCLUDE.findall(document)]
        self._layout(names)
        actual = len(self.request(b"g")) // 2
        if actual != self.register_bytes:
            # QEMU 7.2's i386-64bit.xml lists ss_base, ds_base and es_base, which its
            # stub does not implement: the g packet and the register numbers skip them.
            trimmed = [(n, b) for n, b in names if n not in ("ss_base", "ds_base", "es_base")]
            self._layout(trimmed)
            if actual != self.register_bytes:
                raise HookError(f"the gdbstub's g packet ({actual} bytes) does not match its target.xml")
        if not {"rip", "rdi", "cr3", "rsp"} <= self.registers.keys():
            raise HookError("the gdbstub does not describe an x86-64 CPU with control registers")

    def _layout(self, names: list[tuple[str, int]]) -> None:
        self.registers, offset = {}, 0
        for number, (name, bits) in enumerate(names):
            self.registers[name] = Register(name, number, offset, bits // 8)
            offset += bits // 8
        self.register_bytes = offset

    def read_registers(self, *names: str) -> dict[str, int]:
        raw = bytes.fromhex(self.request(b"g").decode())
        values = {}
        for name in names:
            register = self.registers[name]
            values[name] = int.from_bytes(raw[register.offset : register.offset + register.size], "little")
        return values

    def write_register(self, name: str, value: int) -> None:
        register = self.registers[name]
        reply = self.request(b"P%x=" % register.number + value.to_bytes(register.size, "little").hex().encode())
        if reply != b"OK":
            raise HookError(f"the gdbstub refused to set {name}: {reply[:40]!r}")

    def read_memory(self, address: int, size: int) -> bytes:
        """Guest virtual memory as the current vCPU sees it."""
        reply = self.request(b"m%x,%x" % (address, size))
        if reply.startswith(b"E"):
            raise HookError(f"the gdbstub cannot read {address:#x}")
        return bytes.fromhex(reply.decode())

    # --- execution ---------------------------------------------------------------------------

    def breakpoint(self, address: int, *, hardware: bool = True, insert: bool = True) -> bool:
        kind = b"1" if hardware else b"0"
        reply = self.request((b"Z" if insert else b"z") + kind + b",%x,1" % address)
        return reply == b"OK"

    def cont(self) -> None:
        self.send(b"c")

    def step(self) -> bytes | None:
        self.send(b"s")
        return self.wait_stop(self.timeout)

    def detach(self) -> None:
        try:
            self.request(b"D", timeout=2)
        except HookError:
            pass

    def close(self) -> None:
        self.sock.close()
