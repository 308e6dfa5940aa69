"""Certificate summaries for the flow log: malformed DER becomes an error entry, never an exception."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.tls.certificates import describe_certificate


def _certificate_der() -> tuple[bytes, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server.test")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("server.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER), certificate


def test_a_well_formed_certificate_is_summarized():
    der, _ = _certificate_der()
    assert describe_certificate(der) == {"subject": "CN=server.test", "issuer": "CN=server.test", "san": ["server.test"]}


def test_a_malformed_issuer_name_is_reported_not_raised():
    # cryptography parses names lazily: load_der succeeds and reading .issuer fails.
    # Found by hypothesis on a real capture's Certificate message.
    der, certificate = _certificate_der()
    issuer = certificate.issuer.public_bytes()
    # Name = SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String } } }: the value's tag
    # (0x0c) becomes RELATIVE-OID (0x0d); the outer DER stays well formed.
    common_name_oid = b"\x06\x03\x55\x04\x03"
    value_tag = der.index(issuer) + issuer.index(common_name_oid) + len(common_name_oid)
    assert der[value_tag] == 0x0C
    broken = der[:value_tag] + b"\x0d" + der[value_tag + 1 :]
    x509.load_der_x509_certificate(broken)  # loads: the damage is only found on access
    summary = describe_certificate(broken)
    assert set(summary) == {"error"} and "unparseable certificate" in str(summary["error"])


def test_a_chain_seen_again_is_described_from_the_cache_as_a_fresh_copy():
    from bridge.tls import certificates

    der, _ = _certificate_der()
    certificates._SUMMARIES.clear()
    first = certificates.describe_chain([der])
    first[0]["san"].append("changed by a caller")
    first[0]["subject"] = "changed"
    second = certificates.describe_chain([der])
    assert second == [describe_certificate(der)] == [
        {"subject": "CN=server.test", "issuer": "CN=server.test", "san": ["server.test"]}]
    assert (certificates._SUMMARIES.hits, certificates._SUMMARIES.misses) == (1, 1)


def test_the_cache_is_bounded_and_large_certificates_are_not_kept(monkeypatch):
    from bridge.tls import certificates

    summaries = certificates._Summaries(entries=3)
    ders = [_certificate_der()[0] for _ in range(5)]  # each its own key: five distinct certificates
    for der in ders:
        assert summaries.describe(der)["subject"] == "CN=server.test"
    assert len(summaries) == 3 and summaries.misses == 5
    summaries.describe(ders[0])  # forgotten (least recently seen): described again
    assert summaries.misses == 6 and len(summaries) == 3
    monkeypatch.setattr(certificates, "CACHE_MAX_DER", len(ders[1]) - 1)
    summaries.clear()
    summaries.describe(ders[1])
    summaries.describe(ders[1])
    assert len(summaries) == 0 and summaries.misses == 0  # described each time, never kept


def test_a_malformed_certificate_is_cached_as_its_error():
    from bridge.tls import certificates

    summaries = certificates._Summaries()
    assert summaries.describe(b"\x30\x03\x02\x01\x01") == summaries.describe(b"\x30\x03\x02\x01\x01")
    assert "error" in summaries.describe(b"\x30\x03\x02\x01\x01") and summaries.hits == 2
