from bridge.tls.sessions import SessionCache


def test_bounded_oldest_first_and_empty_keys_ignored():
    cache = SessionCache(max_entries=2)
    cache.remember(b"a", b"1" * 48)
    cache.remember(b"b", b"2" * 48)
    cache.lookup(b"a")
    cache.remember(b"a", b"3" * 48)  # refreshed: now the newest
    cache.remember(b"c", b"4" * 48)
    assert cache.lookup(b"b") is None and cache.lookup(b"a") == b"3" * 48 and len(cache) == 2
    cache.remember(b"", b"5" * 48)
    assert cache.lookup(b"") is None and len(cache) == 2
