"""Project-wide fixtures: only re-exports; the OpenSSL peer fixtures live in openssl_peer.py."""

from openssl_peer import openssl_mock, test_pki  # noqa: F401
