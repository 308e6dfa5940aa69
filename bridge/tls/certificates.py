"""Summaries of the server certificate chain for the flow log."""

from __future__ import annotations


def describe_certificate(der: bytes) -> dict[str, object]:
    """Subject, issuer and DNS/IP subject alternative names of one DER certificate.

    `cryptography` parses lazily: a malformed name only fails when it is read, so
    every field access sits inside the error handling.
    """
    from cryptography import x509  # here: most runs never read a certificate (a fifth of the start-up)

    try:
        certificate = x509.load_der_x509_certificate(der)
        subject = certificate.subject.rfc4514_string()
        issuer = certificate.issuer.rfc4514_string()
    except ValueError as exc:
        return {"error": f"unparseable certificate: {exc}"}
    names: list[str] = []
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        pass
    except ValueError:
        names.append("<malformed subjectAltName>")
    else:
        names.extend(extension.value.get_values_for_type(x509.DNSName))
        names.extend(str(address) for address in extension.value.get_values_for_type(x509.IPAddress))
    return {
        "subject": subject,
        "issuer": issuer,
        "san": names,
    }


def describe_chain(chain: list[bytes]) -> list[dict[str, object]]:
    return [describe_certificate(der) for der in chain]
