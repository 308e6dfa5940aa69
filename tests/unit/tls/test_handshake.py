"""Handshake message framing across records, and the parsers' declared error type."""

from __future__ import annotations

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
