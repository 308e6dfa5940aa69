"""GnuTLS: the sandboxed probe's answer, the probe's arguments."""

from __future__ import annotations

import pytest

from bridge.errors import ProfileError
from bridge.harvest.gnutls import GnuTlsFacts, decode, is_libgnutls, probe_args


def test_facts_parse_and_implausible_ones_are_refused():
    facts = GnuTlsFacts.from_json('{"version": "3.7.9", "keylog_function": 340544, "client_random": 80}')
    assert facts == GnuTlsFacts("3.7.9", 340544, 80)
    assert "random=+0x50(%di):x64[4]" in probe_args(facts)
    for text in ("not json", "{}", '{"version": "3", "keylog_function": 1, "client_random": 1000000}',
                 '{"version": "3", "keylog_function": 0, "client_random": 8}'):
        with pytest.raises(ProfileError):
            GnuTlsFacts.from_json(text)


def test_decode_label_secret_and_client_random():
    args = {"label": b"EXPORTER_SECRET\0" + b"x" * 16, "secret": bytes(range(48)), "secret_len": 48,
            "random": bytes(32)}
    line = decode(args)
    assert line is not None and line.label == "EXPORTER_SECRET" and line.secret == bytes(range(48))
    assert decode({**args, "secret_len": 16}) is None and decode({**args, "random": None}) is None


def test_library_names():
    assert is_libgnutls("/usr/lib/x86_64-linux-gnu/libgnutls.so.30")
    assert not is_libgnutls("/usr/lib/x86_64-linux-gnu/libgnutls-dane.so.0")


def test_what_loading_taught_is_cached_by_build_id(tmp_path):
    from bridge.harvest.gnutls import _cache, _cached

    facts = GnuTlsFacts("3.7.9", 340544, 80)
    assert _cached(str(tmp_path), "ab" * 20) is None
    _cache(str(tmp_path), "ab" * 20, facts)
    assert _cached(str(tmp_path), "ab" * 20) == facts and (tmp_path / f"gnutls-{'ab' * 20}.json").is_file()
    (tmp_path / f"gnutls-{'cd' * 20}.json").write_text('{"version": "3", "keylog_function": 0}')
    assert _cached(str(tmp_path), "cd" * 20) is None  # a damaged entry: probed again
