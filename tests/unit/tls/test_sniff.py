"""Recognising hellos in a payload's first bytes (the engine, the harvesters, the IPS)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.tls.sniff import CLIENT_HELLO, SERVER_HELLO, client_hello_random, hello_type
from tests.support.fixtures import FIXTURES


def _payloads():  # type: ignore[no-untyped-def]
    from bridge.engine.packets import decode_tcp

    for frame in FIXTURES[0].frames():
        segment = decode_tcp(frame.linktype, frame.data, frame.timestamp_ns)
        if segment is not None and segment.payload:
            yield segment


def test_the_hellos_of_a_real_capture():
    segments = list(_payloads())
    kinds = [hello_type(s.payload) for s in segments]
    assert kinds.count(CLIENT_HELLO) == 1 and kinds.count(SERVER_HELLO) == 1
    hello = segments[kinds.index(CLIENT_HELLO)]
    random = client_hello_random(hello.payload)
    assert random is not None and random.hex() in FIXTURES[0].keylog.read_text()
    assert client_hello_random(segments[kinds.index(SERVER_HELLO)].payload) is None


@given(st.binary(max_size=64))
def test_any_bytes(data):
    kind = hello_type(data)
    assert kind in (None, CLIENT_HELLO, SERVER_HELLO)
    random = client_hello_random(data)
    assert random is None or (len(random) == 32 and kind == CLIENT_HELLO)
