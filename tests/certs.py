"""A self-signed certificate for localhost, made for TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """Write ``cert.pem`` (for localhost and 127.0.0.1) and ``key.pem``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_options(cert: Path, key: Path) -> ssl.CertificateOptions:
    """TLS server options for ``cert`` and ``key``, loaded with ``cryptography``.

    ``PrivateCertificate.loadPEM(...).options()`` would hand pyOpenSSL's ``X509``
    and ``PKey`` to ``OpenSSL.SSL.Context``, which pyOpenSSL deprecates; the
    context takes ``cryptography``'s objects as they are.
    """
    return ssl.CertificateOptions(
        # Twisted annotates these as pyOpenSSL's types, but only passes them on
        # to Context.use_privatekey and use_certificate, which take these.
        privateKey=serialization.load_pem_private_key(key.read_bytes(), None),  # type: ignore[arg-type]
        certificate=x509.load_pem_x509_certificate(cert.read_bytes()),  # type: ignore[arg-type]
    )
