"""Mail to MMS with real programs on loopback: a private Postfix instance
relays mail for ``mms.example`` to mm7tx's ESMTP listener (a real
``twistd -n mm7``), which submits it to a fake MMSC (a real HTTP server
here, tests/fake_mmsc.py) that answers 4006 first, then 1000.  SMTP's
contract end to end: the 4006 is a 4xx to Postfix, which keeps the mail
and tries again; the 1000 is the 250 Postfix logs as sent, with the
MessageID; the MMSC saw exactly two SubmitReqs.

Postfix runs with its own configuration folder (``postfix -c DIR``), its
queue in a folder of the test's that its ``postfix`` user can reach, its
log in a file (``maillog_file``), no DNS, and short queue run and backoff
times.  Starting it takes root (as in CI, .ci/run)."""

from __future__ import annotations

import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from bench.postfix import Postfix
from tests.fake_mmsc import listen_fake_mmsc
from tests.processes import TWISTD, free_port, wait_for_port

MM7TX_CONFIG = """
HTTP_Listener {{ Listen "tcp:{http}:interface=127.0.0.1" {{ }} }}
ESMTP_Listener {{ Listen "tcp:{smtp}:interface=127.0.0.1" {{ }} }}
mm7_serv {{
  mm7_vasp_uri_paths = ("/vasp/")
  mm7_server_default_email_from_domain = "mms.example"
  mm7_server_default_email_to_domain = "mms.example"
  metrics_listen = "none"
  mms_domains = ("mms.example")
}}
MMSC "up" {{
  submit_url = "http://127.0.0.1:{mmsc}/mm7"
  vasp_id = "vasp1"
  sender_address = "12345"
}}
"""


async def wait_for(condition: Any, timeout: float) -> bool:
    """Whether ``condition()`` comes true within ``timeout`` seconds, the
    reactor running meanwhile (the fake MMSC answers in this process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await deferLater(reactor, 0.05, lambda: None)
    return bool(condition())


@pytest.fixture
def root() -> Any:
    # Postfix's own user reaches its queue: not under pytest's tmp_path,
    # whose parents only root may enter.
    folder = Path(tempfile.mkdtemp(prefix="mm7tx-postfix-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_postfix_defers_on_4006_and_delivers_on_1000(root):
    mmsc, mmsc_port = await listen_fake_mmsc(reactor, [4006, 1000])
    smtp_port, http_port = free_port(), free_port()
    conf = root / "mm7tx.conf"
    conf.write_text(
        MM7TX_CONFIG.format(
            http=http_port, smtp=smtp_port, mmsc=mmsc_port.getHost().port
        )
    )
    postfix = Postfix(root, free_port(), {"mms.example": smtp_port})
    with open(root / "mm7tx.log", "wb") as output:
        mm7tx = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "mm7", "--config", str(conf)],
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for_port(smtp_port, mm7tx), (root / "mm7tx.log").read_text()
        started = postfix.start()
        assert started.returncode == 0, (started.stdout, started.stderr)
        mail = EmailMessage()
        mail["From"] = "ann@example.org"
        mail["To"] = "15551234567@mms.example"
        mail["Subject"] = "Through Postfix"
        mail["Message-ID"] = "<postfix-1@example.org>"
        mail.set_content("Hello, phone, by way of Postfix.")
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
            client.send_message(mail)

        def deferred() -> bool:
            return "status=deferred" in postfix.log_text()

        def sent() -> bool:
            return "status=sent" in postfix.log_text()

        assert await wait_for(deferred, 10), postfix.log_text()
        # The mail waits in Postfix's deferred queue: its next attempt is
        # asked for at once (postqueue -f) rather than left to the queue
        # manager's timing, which a loaded machine stretches past seconds.
        postfix.flush()
        assert await wait_for(sent, 10), postfix.log_text()
    finally:
        postfix.stop()
        mm7tx.send_signal(signal.SIGTERM)
        mm7tx.wait(30)
        await mmsc_port.stopListening()
    log = postfix.log_text()
    # The 4006 was a 4xx to Postfix: deferred, kept, tried again.
    deferred = [line for line in log.splitlines() if "status=deferred" in line]
    assert len(deferred) == 1, log
    assert "451 4.4.5 MMSC up answered 4006" in deferred[0], log
    # The 1000 was the 250, with the MessageID the MMSC gave.
    [delivered] = [line for line in log.splitlines() if "status=sent" in line]
    assert f"relay=127.0.0.1[127.0.0.1]:{smtp_port}" in delivered, log
    assert "250 2.0.0 Ok: queued as " in delivered, log
    assert "MMSC up MessageID fake-2" in delivered, log
    # Exactly two SubmitReqs: one per attempt.
    assert [status for _, status in mmsc.received] == [4006, 1000]
    for submit, _ in mmsc.received:
        assert [a.value for a in submit.recipients.to] == ["15551234567"]
