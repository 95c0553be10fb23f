"""Mail to MMS: STARTTLS on the ESMTP listener (``tls_certificate`` and
``tls_private_key`` in ``ESMTP_Listener``), checked as the configuration is
read and reloaded (swaks over real TLS: tests/loopback/test_mail_in_swaks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import ssl

from mm7tx.config import ConfigError, load
from mm7tx.testing import MemoryGateway
from tests.certs import make_certificate

CONFIG = """
mm7_serv {
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  mms_domains = ("mms.example")
  mms_max_mail_size = 100K
  %(relay)s
}
ESMTP_Listener {
  Listen "tcp:2525:interface=127.0.0.1" { }
  %(tls)s
}
VASP "mailin" { password = "pw" }
MMSC "up" {
  submit_url = "http://127.0.0.1:%(port)d/mm7"
  vasp_id = "mailin"
  sender_address = "12345"
}
"""


def config_text(tls: str = "", port: int = 8080, relay: str = "") -> str:
    return CONFIG % {"tls": tls, "port": port, "relay": relay}


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path / "tls")


def test_a_certificate_and_key_give_starttls(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    config = load(config_text(f'tls_certificate = "{cert}"  tls_private_key = "{key}"'))
    assert (config.mail_in.tls_certificate, config.mail_in.tls_private_key) == (
        str(cert),
        str(key),
    )
    gateway = MemoryGateway(config)
    tls = gateway.service.mail_factory.options["tls"]  # type: ignore[union-attr]
    assert isinstance(tls, ssl.CertificateOptions)
    # One PEM file with both: the key is read from the certificate file.
    both = cert.parent / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert gateway.reload(config_text(f'tls_certificate = "{both}"'))
    renewed = gateway.service.mail_factory.options["tls"]  # type: ignore[union-attr]
    assert isinstance(renewed, ssl.CertificateOptions) and renewed is not tls
    gateway.stop()
    # Without one: no STARTTLS.
    plain = MemoryGateway(config_text())
    assert plain.service.mail_factory.options["tls"] is None  # type: ignore[union-attr]
    plain.stop()


def test_bad_certificate_settings_are_config_errors(
    pem: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = pem
    _, other_key = make_certificate(tmp_path / "other")
    cases = {
        f'tls_private_key = "{key}"': "tls_private_key needs tls_certificate",
        f'tls_certificate = "{tmp_path}/nope.pem"': "cannot read",
        f'tls_certificate = "{cert}"': "holds no unencrypted PEM private key",
        f'tls_certificate = "{key}" tls_private_key = "{key}"': "no PEM certificate",
        f'tls_certificate = "{cert}" tls_private_key = "{other_key}"': "does not match",
    }
    for tls, expected in cases.items():
        with pytest.raises(ConfigError) as caught:
            load(config_text(tls))
        assert expected in str(caught.value), (tls, str(caught.value))
        assert "line 12:" in str(caught.value)
