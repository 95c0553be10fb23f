"""The ESMTP server over a real loopback socket, against swaks (in memory:
tests/smtp/test_smtp_server.py)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue

from mm7tx.smtp.server import ESMTPServerFactory
from tests.smtp.test_smtp_server import Policy


@pytest_twisted.ensureDeferred
async def test_swaks_pipelines_an_8bit_mail_over_loopback():
    policy = Policy(Clock())
    factory = ESMTPServerFactory(
        policy, reactor, hostname="mx.example", max_size=100000
    )
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        body = "Subject: caf\u00e9\n\nVoil\u00e0 \u2014 8 bits\n"
        out, err, code = await getProcessOutputAndValue(
            "swaks",
            [
                "--server",
                "127.0.0.1",
                "--port",
                str(port.getHost().port),
                "--from",
                "a@b.example",
                "--to",
                "15551234567@mms.example,15557654321@mms.example",
                "--pipeline",
                "--data",
                body,
                "--timeout",
                "5",
            ],
            env={"PATH": "/usr/bin:/bin"},
        ).addTimeout(10, reactor)
    finally:
        await port.stopListening()
    assert code == 0, out + err
    # This swaks (20201014) sends no BODY=8BITMIME (parsed in memory above):
    # the 8-bit body must come through intact all the same.
    assert b"<-  250-8BITMIME" in out
    [(envelope, data)] = policy.called("message")
    assert len(envelope.recipients) == 2
    assert "Voil\u00e0 \u2014 8 bits".encode() in data
    # swaks sent MAIL, RCPT, RCPT and DATA in one group, answered in order.
    assert b"<** " not in out
    sent = [line[4:14] for line in out.decode().splitlines() if line.startswith(" -> ")]
    group = ["MAIL FROM:", "RCPT TO:<1", "RCPT TO:<1", "DATA"]
    assert any(sent[i : i + 4] == group for i in range(len(sent))), out
    lines = out.decode().splitlines()
    at = lines.index(next(line for line in lines if line.startswith(" -> MAIL")))
    assert all(line.startswith(" -> ") for line in lines[at : at + 4]), out
