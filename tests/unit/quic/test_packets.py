"""Headers, coalesced packets, header protection removal, packet number recovery."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from bridge.errors import PacketDecodeError
from bridge.quic.packets import (
    decode_packet_number,
    encode_varint,
    parse_datagram,
    read_varint,
    remove_protection,
    short_header,
)
from bridge.quic.protection import PacketKeys, initial_keys
from bridge.quic.versions import QUIC_V1, PacketType
from bridge.tls.ciphersuites import cipher_suite
from tests.unit.quic import rfc9001 as A


def test_client_initial_header_rfc9001_a2():
    packets, short_at = parse_datagram(A.CLIENT_INITIAL)
    assert short_at == -1
    (packet,) = packets
    assert packet.packet_type is PacketType.INITIAL and packet.version is QUIC_V1
    assert packet.dcid == A.DCID and packet.scid == b"" and packet.token == b""
    assert packet.end == 1200
    client, _ = initial_keys(QUIC_V1, A.DCID)
    unprotected = remove_protection(A.CLIENT_INITIAL, packet, client)
    assert unprotected.header == A.CLIENT_UNPROTECTED_HEADER
    assert unprotected.truncated_pn == 2 and unprotected.pn_length == 4
    payload = client.open(2, unprotected.header, unprotected.ciphertext)
    assert payload.startswith(A.CLIENT_CRYPTO_FRAME) and len(payload) == A.CLIENT_PAYLOAD_LENGTH


def test_server_initial_header_rfc9001_a3():
    (packet,), _ = parse_datagram(A.SERVER_INITIAL)
    assert packet.scid == bytes.fromhex("f067a5502a4262b5") and packet.dcid == b""
    _, server = initial_keys(QUIC_V1, A.DCID)
    unprotected = remove_protection(A.SERVER_INITIAL, packet, server)
    assert unprotected.header == A.SERVER_UNPROTECTED_HEADER
    assert unprotected.pn_length == 2
    assert server.open(1, unprotected.header, unprotected.ciphertext) == A.SERVER_PAYLOAD


def test_coalesced_packets_and_trailing_padding():
    datagram = A.SERVER_INITIAL + A.SERVER_INITIAL + bytes(20)
    packets, short_at = parse_datagram(datagram)
    assert [p.start for p in packets] == [0, len(A.SERVER_INITIAL)] and short_at == -1


def test_a_short_header_after_long_ones():
    packets, short_at = parse_datagram(A.SERVER_INITIAL + A.CHACHA_PACKET)
    assert len(packets) == 1 and short_at == len(A.SERVER_INITIAL)


def test_retry_rfc9001_a4():
    (packet,), _ = parse_datagram(A.RETRY)
    assert packet.packet_type is PacketType.RETRY and packet.token == b"token"


def test_short_header_rfc9001_a5():
    keys = PacketKeys(QUIC_V1, cipher_suite(0x1303), A.CHACHA_SECRET)
    packet = short_header(A.CHACHA_PACKET, 0, 0)
    unprotected = remove_protection(A.CHACHA_PACKET, packet, keys)
    assert unprotected.header == A.CHACHA_UNPROTECTED_HEADER and unprotected.key_phase == 0
    # RFC 9001 A.5: 654360564 encoded as 49140 in 3 bytes
    assert decode_packet_number(A.CHACHA_PN - 1, unprotected.truncated_pn, unprotected.pn_length) == A.CHACHA_PN


def test_packet_number_recovery_rfc9000_a3():
    # RFC 9000 Appendix A.3's example: largest 0xa82f30ea, 2 bytes 0x9b32 -> 0xa82f9b32
    assert decode_packet_number(0xA82F30EA, 0x9B32, 2) == 0xA82F9B32
    assert decode_packet_number(-1, 0, 1) == 0


@given(st.integers(0, 1 << 40), st.integers(-100, 100), st.sampled_from([1, 2, 3, 4]))
def test_packet_number_recovery_near_the_largest(largest, delta, length):
    number = largest + delta
    if number < 0 or abs(delta) >= (1 << (8 * length - 1)) - 1:
        return
    assert decode_packet_number(largest, number & ((1 << (8 * length)) - 1), length) == number


@given(st.integers(0, (1 << 62) - 1))
def test_varints_round_trip(value):
    encoded = encode_varint(value)
    assert read_varint(encoded, 0) == (value, len(encoded))


@pytest.mark.parametrize("datagram", [
    b"\xc0\x00\x00\x00\x01\x15" + bytes(30),  # a 21-byte connection ID
    A.CLIENT_INITIAL[:40],  # its length overruns the datagram
    b"\xc0\x00\x00\x00\x01\x00",  # truncated
])
def test_malformed_long_headers_raise(datagram):
    with pytest.raises(PacketDecodeError):
        parse_datagram(datagram)


def test_an_unknown_version_is_recognised():
    (packet,), _ = parse_datagram(b"\xc0\x0a\x0a\x0a\x0a\x00\x00" + bytes(30))
    assert packet.packet_type is PacketType.UNKNOWN_VERSION and packet.version_number == 0x0A0A0A0A


def test_version_negotiation():
    (packet,), _ = parse_datagram(b"\x80\x00\x00\x00\x00\x00\x00" + bytes.fromhex("000000016b3343cf"))
    assert packet.packet_type is PacketType.VERSION_NEGOTIATION
    assert packet.supported_versions == (1, 0x6B3343CF)
