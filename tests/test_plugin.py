"""The real ``twistd`` command, run from outside the checkout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests import samples

TWISTD = str(Path(sys.executable).parent / "twistd")


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_twistd_help_lists_mm7(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    assert any(line.split()[:1] == ["mm7"] for line in out.stdout.splitlines())
    out = run(["mm7", "--help"], tmp_path)
    for option in ("--config", "--listen", "--smtp-relay"):
        assert option in out.stdout


def test_a_bad_config_stops_the_start_with_file_and_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('mm7_serv {\n  mm7_vasp_uri_paths = ("/a/")\n  nonsense = 1\n}\n')
    out = run(["-n", "mm7", "--config", str(conf)], tmp_path)
    assert out.returncode != 0
    assert (
        f"{conf}, line 3: unknown mm7_serv option 'nonsense'" in out.stdout + out.stderr
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_embedded_defaults_deliver_into_a_maildir(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "mm7",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        ctype, body = samples.body_sample("instantcom-mm7/deliver-req2.txt")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/vasp/", data=body, headers={"Content-Type": ctype}
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    reply = answer.read()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.2)
        assert b"<StatusCode>1000</StatusCode>" in reply
        [mail] = list((tmp_path / "Maildir" / "new").iterdir())
        assert b"Subject: Weather Forecast" in mail.read_bytes()
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=30)
    assert "mm7tx on embedded defaults" in log
    assert f"listening on tcp:{port}:interface=127.0.0.1" in log
    assert f"mail to Maildir {tmp_path / 'Maildir'}" in log
    assert os.path.exists(tmp_path / "Maildir" / "cur")
