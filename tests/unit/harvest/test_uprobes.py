"""trace_pipe lines of probes with fetch-args of the caller's."""

from __future__ import annotations

from bridge.harvest.uprobes import parse_raw_event


def test_a_raw_probe_line_gives_arrays_as_bytes_and_scalars_as_ints():
    line = ("          gohttps-4711    (   4711) [001] d..1.  1234.567890: k0_3: (0x59bea0) "
            "label={0x525f544e45494c43,0x4d4f444e41,0x0,0x0} label_len=0x17 secret=(fault) secret_len=48")
    event = parse_raw_event(line, {"k0_3": ("0", "/srv/gohttps")})
    assert event is not None and (event.tgid, event.tag, event.binary) == (4711, "0", "/srv/gohttps")
    assert event.args["label"] == b"CLIENT_RANDOM" + bytes(19)
    assert event.args["label_len"] == 0x17 and event.args["secret"] is None and event.args["secret_len"] == 48
    assert parse_raw_event(line, {"other": ("0", "x")}) is None
    assert parse_raw_event("garbage", {"k0_3": ("0", "x")}) is None
