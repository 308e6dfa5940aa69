"""Handshake message framing across records, and the parsers' declared error type."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import RecordDecodeError
from bridge.tls import handshake as hs
from bridge.tls.records import RecordReader

MESSAGE = bytes([hs.CERTIFICATE]) + (40_000).to_bytes(3, "big") + bytes(range(256)) * 156 + bytes(64)


def test_a_message_split_across_records_is_reassembled():
    reader = hs.HandshakeReader()
    pieces = [MESSAGE[i : i + 16384] for i in range(0, len(MESSAGE), 16384)]
    out = []
    for piece in pieces + [bytes([hs.SERVER_HELLO_DONE, 0, 0, 0])]:
        out += reader.feed(piece)
    assert [m.msg_type for m in out] == [hs.CERTIFICATE, hs.SERVER_HELLO_DONE]
    assert out[0].raw == MESSAGE and len(out[0].body) == 40_000
    assert not reader.pending


def test_many_records_in_one_segment_and_one_record_over_many():
    records = b"".join(bytes([22, 3, 3]) + len(p).to_bytes(2, "big") + p for p in (b"a" * 10, b"b" * 300, b"c"))
    assert [len(r.fragment) for r in RecordReader().feed(records)] == [10, 300, 1]
    reader = RecordReader()
    got = []
    for i in range(len(records)):
        got += reader.feed(records[i : i + 1])
    assert [r.fragment for r in got] == [b"a" * 10, b"b" * 300, b"c"]
    assert [r.stream_offset for r in got] == [0, 15, 320]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_raise_only_record_decode_errors(body):
    for parse in (hs.parse_client_hello, hs.parse_server_hello, hs.parse_encrypted_extensions, hs.parse_key_update,
                  lambda b: hs.parse_certificate(b, tls13=True), lambda b: hs.parse_certificate(b, tls13=False),
                  lambda b: hs.parse_new_session_ticket(b, tls13=True)):
        try:
            parse(body)
        except RecordDecodeError:
            pass


# --- the one-pass ClientHello parser -------------------------------------------------------------


def _ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def _client_hello(extensions: bytes, *, session_id: bytes = b"\x11" * 32, suites=(0x1301, 0x1302, 0xC02F)) -> bytes:
    """A ClientHello body built field by field (RFC 8446 §4.1.2), independently of the parser."""
    suites_raw = b"".join(s.to_bytes(2, "big") for s in suites)
    return (b"\x03\x03" + bytes(range(32)) + bytes([len(session_id)]) + session_id
            + len(suites_raw).to_bytes(2, "big") + suites_raw + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)


SNI = _ext(hs.EXT_SERVER_NAME, (16).to_bytes(2, "big") + b"\x00" + (13).to_bytes(2, "big") + b"shop.example.")
ALPN = _ext(hs.EXT_ALPN, (12).to_bytes(2, "big") + b"\x02h2\x08http/1.1")
VERSIONS = _ext(hs.EXT_SUPPORTED_VERSIONS, b"\x04\x03\x04\x03\x03")
TICKET = _ext(hs.EXT_SESSION_TICKET, b"ticket-bytes")


def test_client_hello_fields_from_one_pass():
    body = _client_hello(SNI + ALPN + VERSIONS + TICKET + _ext(hs.EXT_EARLY_DATA, b"") + _ext(0xFF01, b"\x00")
                         + _ext(hs.EXT_PRE_SHARED_KEY, b"\x00" * 8))
    hello = hs.parse_client_hello(body)
    assert hello.legacy_version == 0x0303 and hello.random == bytes(range(32))
    assert hello.session_id == b"\x11" * 32 and hello.cipher_suites == [0x1301, 0x1302, 0xC02F]
    assert hello.sni == "shop.example." and hello.alpn == ["h2", "http/1.1"]
    assert hello.supported_versions == [0x0304, 0x0303] and hello.session_ticket == b"ticket-bytes"
    assert hello.offers_early_data and hello.offers_psk
    assert list(hello.extensions) == [0, 16, 43, 35, 42, 0xFF01, 41] and hello.extensions[0xFF01] == b"\x00"
    # A whole handshake message (header first) parses from offset 4, sharing its bytes.
    message = bytes([hs.CLIENT_HELLO]) + len(body).to_bytes(3, "big") + body
    from_message = hs.parse_client_hello(message, 4)
    assert (from_message.random, from_message.sni, from_message.alpn, from_message.cipher_suites) == (
        hello.random, hello.sni, hello.alpn, hello.cipher_suites)
    assert from_message.size == len(message)
    bare = hs.parse_client_hello(_client_hello(b"", session_id=b""))
    assert (bare.sni, bare.alpn, bare.session_id, bare.session_ticket, bare.offers_psk) == (None, [], b"", b"", False)


def test_a_malformed_extension_inside_is_refused_at_parse_time():
    """Fields are decoded lazily, so their structure is checked in the one pass: a
    bad length inside server_name or ALPN fails there, not when the flow is logged."""
    bad_sni = _ext(hs.EXT_SERVER_NAME, (16).to_bytes(2, "big") + b"\x00" + (40).to_bytes(2, "big") + b"shop.example.")
    bad_alpn = _ext(hs.EXT_ALPN, (12).to_bytes(2, "big") + b"\x09h2\x08http/1.1")
    bad_versions = _ext(hs.EXT_SUPPORTED_VERSIONS, b"\x09\x03\x04")
    for extension in (bad_sni, bad_alpn, bad_versions, SNI[:-1]):
        with pytest.raises(RecordDecodeError):
            hs.parse_client_hello(_client_hello(extension))


def test_server_hello_from_one_pass():
    extensions = _ext(hs.EXT_SUPPORTED_VERSIONS, b"\x03\x04") + _ext(hs.EXT_ALPN, b"\x00\x03\x02h2") \
        + _ext(hs.EXT_EXTENDED_MASTER_SECRET, b"")
    body = b"\x03\x03" + bytes(range(32, 64)) + b"\x04sess" + b"\x13\x02" + b"\x00" \
        + len(extensions).to_bytes(2, "big") + extensions
    hello = hs.parse_server_hello(bytes([hs.SERVER_HELLO]) + len(body).to_bytes(3, "big") + body, 4)
    assert hello.random == bytes(range(32, 64)) and hello.session_id == b"sess" and hello.cipher_suite == 0x1302
    assert hello.version == hs.TLS13 and hello.alpn == "h2" and hello.extended_master_secret
    assert not hello.is_hello_retry_request and not hello.encrypt_then_mac
