from bridge.secrets import (
    CLIENT_RANDOM,
    CLIENT_TRAFFIC_SECRET_0,
    HANDSHAKE_SECRET,
    SERVER_TRAFFIC_SECRET_0,
    TLS13,
    ConnectionSecrets,
    is_known_label,
    rsa_handle,
    session_handle,
    traffic_secret_epoch,
    traffic_secret_label,
)


def test_complete_means_enough_to_decrypt_the_whole_connection():
    tls13 = ConnectionSecrets(bytes(32), {CLIENT_TRAFFIC_SECRET_0: b"c" * 32, SERVER_TRAFFIC_SECRET_0: b"s" * 32},
                              tls_version=TLS13)
    assert not tls13.complete  # the handshake would not decrypt
    tls13.secrets[HANDSHAKE_SECRET] = b"h" * 32
    assert tls13.complete
    assert ConnectionSecrets(bytes(32), {CLIENT_RANDOM: b"m" * 48}).complete
    assert "m" * 8 not in repr(ConnectionSecrets(bytes(32), {CLIENT_RANDOM: b"m" * 48}))  # no secret in repr


def test_labels_and_handles():
    assert traffic_secret_epoch(traffic_secret_label("SERVER", 3)) == ("SERVER", 3)
    assert traffic_secret_epoch(CLIENT_TRAFFIC_SECRET_0) is None  # epoch 0 is RFC 9850's own label
    assert is_known_label("CLIENT_TRAFFIC_SECRET_12") and not is_known_label("SOMETHING_ELSE")
    assert rsa_handle(bytes(range(20))) == b"rsa:" + bytes(range(8)) and session_handle(b"id") == b"sid:id"
