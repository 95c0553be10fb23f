"""mm7tx inside another application, under the real ``twistd web --class``: a
configuration error said in one line, and the README's commands mailing a
DeliverReq (in memory: tests/app/test_cohosting.py)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import cast

import pytest

from mm7tx.app import cohost
from mm7tx.app.service import IMM7Reactor
from mm7tx.testing import (
    MemoryReactor,
)
from tests import samples
from tests.app.test_cohosting import ROOT, readme_commands
from tests.processes import TWISTD, free_port, post_sample, wait_for_port


def test_twistd_web_class_says_what_is_wrong_with_the_file_in_one_line(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "mm7tx.conf"
    conf.write_text("mm7_serv {\n  nonsense = 1\n}\n")
    expected = f"{conf}, line 2: unknown mm7_serv option 'nonsense'"
    with pytest.raises(SystemExit) as caught:
        cohost.resource(cast(IMM7Reactor, MemoryReactor()), {"MM7TX_CONFIG": str(conf)})
    assert str(caught.value) == expected
    # The real twistd prints that line alone, not twistd web's usage text.
    done = subprocess.run(
        [TWISTD, "-n", "web", "--class=mm7tx.cohost.resource"],
        env={**os.environ, "MM7TX_CONFIG": str(conf)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == expected
    assert "Usage:" not in done.stdout + done.stderr


@pytest.mark.parametrize("index", [0, 1], ids=["tac", "web-class"])
def test_a_readme_command_under_twistd_mails_a_deliver_req(
    tmp_path: Path, index: int
) -> None:
    """The command as the README writes it, but for the file, the port and
    the twistd (this virtualenv's): a reference DeliverReq gets 1000 and its
    mail; the .tac serves its own page beside; SIGTERM stops it cleanly."""
    conf = tmp_path / "mm7tx.conf"
    conf.write_text(
        samples.EXAMPLE_7_1.replace(
            "}", '  smtp_relay = "maildir:Maildir"\n  metrics_listen = none\n}'
        )
    )
    port = free_port()
    line = readme_commands()[index]
    line = line.replace("/etc/mm7tx/mm7tx.conf", str(conf))
    line = line.replace("tcp:8080", f"tcp:{port}:interface=127.0.0.1")
    line = line.replace("etc/cohost.tac", str(ROOT / "etc" / "cohost.tac"))
    words = shlex.split(line)
    environ = dict(os.environ)
    while "=" in words[0]:
        name, _, value = words.pop(0).partition("=")
        environ[name] = value
    assert words[0] == "twistd"
    process = subprocess.Popen(
        [TWISTD, *words[1:]],
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for_port(port, process)
        reply = post_sample(port, "/ringtones/")
        if index == 0:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello") as page:
                assert page.read() == b"hello\n"
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=30)
    assert b"<StatusCode>1000</StatusCode>" in reply, log
    # twistd ends by the signal it was stopped with, once shut down.
    assert process.returncode == -signal.SIGTERM, log
    assert "Server Shut Down." in log
    assert "listening on nothing of its own" in log
    assert "Traceback" not in log, log
    plain = "MM7 on /ringtones/ is served by Site, not mm7tx.site.MM7Site"
    assert (plain in log) == (index == 1), log
    [mail] = list((tmp_path / "Maildir" / "new").iterdir())
    assert b"Subject: Weather Forecast" in mail.read_bytes()
