"""Mail to MMS, swaks over loopback for the odd cases: STARTTLS then AUTH,
PIPELINING, an 8-bit body, a declared SIZE over the limit, through the real
policy (``ESMTP_Listener`` with ``tls_certificate``) to a fake MMSC on
loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue

from mm7tx.app.wiring import mail_listener, mail_policy, make_shared
from mm7tx.config import load
from tests.app.test_mail_in_tls import config_text
from tests.certs import make_certificate
from tests.fake_mmsc import listen_fake_mmsc


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path / "tls")


async def swaks(port: int, *arguments: str) -> tuple[int, str]:
    out, err, code = await getProcessOutputAndValue(
        "swaks",
        [
            "--server",
            "127.0.0.1",
            "--port",
            str(port),
            "--to",
            "15551234567@mms.example",
            "--timeout",
            "5",
            *arguments,
        ],
        env={"PATH": "/usr/bin:/bin"},
    ).addTimeout(10, reactor)
    return code, (out + err).decode("utf-8", "replace")


@pytest_twisted.ensureDeferred
async def test_swaks_odd_cases_over_loopback(pem):
    cert, key = pem
    mmsc, mmsc_port = await listen_fake_mmsc(reactor, [1000])
    config = load(
        config_text(
            f'tls_certificate = "{cert}"  tls_private_key = "{key}"',
            port=mmsc_port.getHost().port,
            # Loopback is not a relay network here: mail needs AUTH.
            relay='mms_relay_networks = ("192.0.2.0/24")',
        )
    )
    shared = make_shared(config, reactor)  # type: ignore[arg-type]
    factory = mail_listener(
        config, mail_policy(config, shared, shared.gate, {}), shared
    )
    listening: Any = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        factory
    )
    port = listening.getHost().port
    try:
        # STARTTLS, then AUTH as the VASP account, PIPELINING, an 8-bit body.
        body = "Subject: caf\u00e9\n\nVoil\u00e0 \u2014 8 bits\n"
        code, said = await swaks(
            port,
            "--from",
            "ann@example.org",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "mailin",
            "--auth-password",
            "pw",
            "--pipeline",
            "--data",
            body,
        )
        assert code == 0, said
        assert "<-  220 2.0.0 Begin TLS negotiation now" in said
        assert "=== TLS started with cipher TLSv1." in said
        assert "<~  250 AUTH PLAIN LOGIN" in said  # offered under TLS
        assert "<~  250-STARTTLS" not in said  # once only
        assert "<~  235 2.7.0 Authentication successful" in said
        assert "<~  250 2.0.0 Ok: queued as " in said
        assert "MMSC up MessageID fake-1" in said
        [(submit, status)] = mmsc.received
        assert status == 1000
        assert [a.value for a in submit.recipients.to] == ["15551234567"]
        text = b"".join(part.data for part in submit.content)
        assert "Voil\u00e0 \u2014 8 bits".encode() in text
        # MAIL, RCPT and DATA went in one group, each answered in order.
        lines = said.splitlines()
        at = next(i for i, line in enumerate(lines) if line.startswith(" ~> MAIL"))
        assert [line[:8] for line in lines[at : at + 3]] == [
            " ~> MAIL",
            " ~> RCPT",
            " ~> DATA",
        ], said
        # SIZE declared over mms_max_mail_size: 552 5.3.4 at MAIL.  This
        # swaks sends no SIZE of its own: it goes in after the address.
        code, said = await swaks(
            port,
            "--from",
            "ann@example.org> SIZE=999999999 ENVID=x",
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "mailin",
            "--auth-password",
            "pw",
        )
        assert code != 0
        assert " ~> MAIL FROM:<ann@example.org> SIZE=999999999 ENVID=x>" in said
        assert "<~* 552 5.3.4 " in said, said
        assert len(mmsc.received) == 1
        # No AUTH: loopback is not a relay network here.
        code, said = await swaks(port, "--from", "ann@example.org", "--tls")
        assert "<~* 530 5.7.0 Authentication required" in said, said
        assert len(mmsc.received) == 1
    finally:
        await listening.stopListening()
        await mmsc_port.stopListening()
