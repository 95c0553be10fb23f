"""The ESMTP listener's STARTTLS: TLS server options from the PEM files of
``tls_certificate`` and ``tls_private_key`` in ``ESMTP_Listener``."""

from __future__ import annotations

from twisted.internet import ssl

from mm7tx.smtp.settings import load_tls_files


def server_tls(
    certificate: str, private_key: str | None = None
) -> ssl.CertificateOptions:
    """``CertificateOptions`` for the PEM files ``certificate`` (the
    server's certificate, then its chain, sent with it) and ``private_key``
    (``None``: in the certificate file); errors as
    :func:`~mm7tx.smtp.settings.load_tls_files` raises them."""
    key, chain = load_tls_files(certificate, private_key)
    return ssl.CertificateOptions(
        # Twisted annotates these as pyOpenSSL's types; it passes them on to
        # OpenSSL.SSL.Context, which takes cryptography's objects as they are.
        privateKey=key,
        certificate=chain[0],
        extraCertChain=chain[1:],
    )
