"""Re-injection of decrypted TLS connections for IDSs that cannot decrypt.

:mod:`bridge.reinject.synthetic` turns the decryptor's plaintext events into
synthetic cleartext TCP connections (complete Ethernet frames, sans-I/O); the
drivers that put those frames on an interface or into a pcap live elsewhere.
"""
