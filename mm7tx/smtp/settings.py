"""How to reach the relay: the settings the relay option gives, apart from the
senders that use them, so that the configuration can name them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mm7tx.mm7.peers import Network, network

StartTLS = Literal["off", "opportunistic", "required"]


@dataclass(frozen=True, slots=True)
class SMTPSettings:
    """How to reach the relay.  Timeouts are in seconds.

    A message waits at most ``total_timeout`` from ``send`` to the relay's
    250, whatever happens: the wait for a session, ``connect_timeout``, and
    each reply awaited up to ``command_timeout`` (restarted by each chunk of
    a big message the connection takes).  The defaults keep the whole under
    the 30 s many MM7 peers (and mm7tx's own client) wait for an answer, so
    that a silent relay gets them a 4006, not a timeout of their own.
    """

    endpoint: str = "tcp:127.0.0.1:25"
    starttls: StartTLS = "opportunistic"
    ca_file: str | None = None
    tls_hostname: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    helo: str | None = None
    connect_timeout: float = 10.0
    command_timeout: float = 20.0
    total_timeout: float = 25.0
    max_connections: int = 20
    idle_timeout: float = 30.0

    @property
    def host(self) -> str:
        """The relay's host name, from the endpoint string (for TLS checks)."""
        if self.tls_hostname:
            return self.tls_hostname
        parts = self.endpoint.split(":")
        for part in parts[1:]:
            if part.startswith("host="):
                return part[5:]
        return parts[1] if len(parts) > 1 and "=" not in parts[1] else "localhost"


_LOOPBACK: tuple[Network, ...] = tuple(
    n for n in (network("127.0.0.0/8"), network("::1")) if n is not None
)

# Mail to MMS: the defaults of mm7_serv's mms_* options.
DEFAULT_MMS_RATE = 60.0  # mails per minute, per sender address and per network
DEFAULT_MMS_MAX_MAIL_SIZE = 20 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MailInSettings:
    """What mail the ESMTP listener (``ESMTP_Listener``) takes: mail to a
    numeric local part at one of ``domains``, from ``relay_networks`` (or
    after AUTH as a VASP account), at most ``rate`` mails a minute per
    sender address and per network, at most ``max_mail_size`` bytes (SIZE);
    ``refuse_unsupported`` refuses a mail with a part that cannot be sent
    as MMS rather than dropping the part."""

    domains: tuple[str, ...] = ()
    # STARTTLS (ESMTP_Listener's tls_certificate and tls_private_key): PEM
    # files, read as each configuration is built (load_tls_files).
    tls_certificate: str | None = None
    tls_private_key: str | None = None
    relay_networks: tuple[Network, ...] = field(default_factory=lambda: _LOOPBACK)
    rate: float = DEFAULT_MMS_RATE
    max_mail_size: int = DEFAULT_MMS_MAX_MAIL_SIZE
    refuse_unsupported: bool = False

    def __post_init__(self) -> None:
        # Domains are compared in lower case, without a trailing dot.
        object.__setattr__(
            self, "domains", tuple(d.lower().rstrip(".") for d in self.domains)
        )
        if self.rate <= 0:
            raise ValueError("mms_rate must be a positive number of mails a minute")
        if self.max_mail_size < 1:
            raise ValueError("mms_max_mail_size must be at least 1 byte")


def load_tls_files(certificate: str, private_key: str | None = None) -> Any:
    """The private key and certificates (the server's first, then its
    chain) of the ESMTP listener's ``tls_certificate`` (a PEM file) and
    ``tls_private_key`` (a PEM file, unencrypted; ``None``: the certificate
    file holds it too), loaded with ``cryptography`` and checked to match.
    ``ValueError`` says what does not load or match, ``OSError`` what cannot
    be read.  Here, beside the options, so that the configuration checks
    them as it is read and the listener loads them the same way."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with open(certificate, "rb") as f:
        cert_pem = f.read()
    key_pem = cert_pem
    if private_key is not None:
        with open(private_key, "rb") as f:
            key_pem = f.read()
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError(f"{certificate!r} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise ValueError(
            f"{private_key or certificate!r} holds no unencrypted PEM private key"
        ) from None
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(der, spki)
    if ours != chain[0].public_key().public_bytes(der, spki):
        raise ValueError(
            f"the private key does not match the certificate in {certificate!r}"
        )
    return key, chain
