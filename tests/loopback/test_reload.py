"""Reloading the configuration of the real ``twistd`` with SIGHUP (in memory:
tests/app/test_reload.py)."""

from __future__ import annotations

import base64
import http.client
import signal
import subprocess
from pathlib import Path

from mm7tx.mm7 import codec
from mm7tx.mm7 import messages as m
from tests.app.test_reload import SUBMIT, config
from tests.processes import TWISTD, free_port, wait_for_port, wait_until


def test_sighup_to_the_real_twistd_adds_an_account(tmp_path: Path) -> None:
    """The real ``twistd -n mm7``: the file rewritten with a second account,
    SIGHUP, and that account is let in by the same process."""
    port = free_port()
    conf = tmp_path / "mm7tx.conf"
    text = (
        config()
        .replace("tcp:8080:", f"tcp:{port}:")
        .replace("tcp:relay.test:25", "maildir:Maildir")
    )
    conf.write_text(text)
    posted: list[str] = []

    def status(account: str, password: str) -> int:
        # Each post a transaction of its own: a repeated one would be
        # answered from the state store without mailing (Exactly once).
        posted.append(f"sighup-{len(posted) + 1}")
        content_type, body = codec.encode(m.Envelope(posted[-1], SUBMIT))
        credentials = base64.b64encode(f"{account}:{password}".encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request(
                "POST",
                "/mm7/",
                body,
                {"Content-Type": content_type, "Authorization": f"Basic {credentials}"},
            )
            answer = connection.getresponse()
            data = answer.read()
        finally:
            connection.close()
        if answer.status == 401:
            return 401
        envelope = codec.decode(answer.getheader("content-type"), data)
        return int(envelope.message.status.code)  # type: ignore[union-attr]

    log = tmp_path / "mm7tx.log"

    def wait_for_log(text: str) -> None:
        wait_until(lambda: text in log.read_text())

    with open(log, "wb") as output:
        process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "mm7", "--config", str(conf)],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_for_port(port, process)
        assert status("vasp2", "secret2") == 401
        conf.write_text(text + 'VASP "vasp2" { password = "secret2" }\n')
        process.send_signal(signal.SIGHUP)
        wait_for_log("Reloaded ")
        assert status("vasp2", "secret2") == 1000
        assert status("vasp1", "secret1") == 1000
        # A mistake: logged, and the running configuration kept.
        conf.write_text(text + 'VASP "vasp3" { }\n')
        process.send_signal(signal.SIGHUP)
        wait_for_log("Not reloading")
        assert status("vasp2", "secret2") == 1000
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    output_text = log.read_text()
    assert f"Reloaded {conf}: VASP paths /vasp/, MMSC paths /mm7/ for 2" in output_text
    assert (
        f"Not reloading, the running configuration is kept: {conf}, line 13: "
        'VASP "vasp3" needs a password (or name it by an IP address)'
    ) in output_text
    assert len(list((tmp_path / "Maildir" / "new").iterdir())) == 3
