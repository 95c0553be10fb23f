"""The real ``twistd`` command, run from outside the checkout."""

from __future__ import annotations

import os
import platform
import signal
import socket
import subprocess
from pathlib import Path

from mm7tx import __version__
from tests.processes import TWISTD, free_port, post_sample, wait_for_port


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


def test_twistd_mm7_version_is_mm7txs_then_twisteds_and_pythons(tmp_path):
    out = run(["mm7", "--version"], tmp_path)
    assert out.returncode == 0, out.stderr
    [ours, twisted, python] = out.stdout.splitlines()
    assert ours == f"mm7tx {__version__}"
    assert twisted.startswith("Twisted ")
    assert python == f"Python {platform.python_version()}"


def test_a_bad_config_stops_the_start_with_file_and_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('mm7_serv {\n  mm7_vasp_uri_paths = ("/a/")\n  nonsense = 1\n}\n')
    out = run(["-n", "mm7", "--config", str(conf)], tmp_path)
    assert out.returncode != 0
    assert (
        f"{conf}, line 3: unknown mm7_serv option 'nonsense'" in out.stdout + out.stderr
    )


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
        assert wait_for_port(port, process)
        reply = post_sample(port, "/vasp/")
        assert b"<StatusCode>1000</StatusCode>" in reply
        [mail] = list((tmp_path / "Maildir" / "new").iterdir())
        assert b"Subject: Weather Forecast" in mail.read_bytes()
    finally:
        process.send_signal(signal.SIGTERM)
        log, _ = process.communicate(timeout=30)
    assert f"mm7tx {__version__} on embedded defaults" in log
    assert f"listening on tcp:{port}:interface=127.0.0.1" in log
    assert f"mail to Maildir {tmp_path / 'Maildir'}" in log
    assert os.path.exists(tmp_path / "Maildir" / "cur")


def test_a_bad_config_is_one_line_without_the_usage_text(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text('mm7_serv {\n  mm7_vasp_uri_paths = ("/a/")\n  nonsense = 1\n}\n')
    out = run(["-n", "--pidfile=", "mm7", "--config", str(conf)], tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr == f"{conf}, line 3: unknown mm7_serv option 'nonsense'\n"


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    conf = tmp_path / "latin1.conf"
    conf.write_bytes(b'# caf\xe9\nmm7_serv { mm7_vasp_uri_paths = ("/a/") }\n')
    out = run(["-n", "--pidfile=", "mm7", "--config", str(conf)], tmp_path)
    assert out.returncode == 1
    assert out.stderr == f"{conf}, line 1: the file is not UTF-8 text (byte 0xe9)\n"


def test_bad_command_line_endpoints_are_one_line_naming_the_option(tmp_path):
    out = run(["-n", "--pidfile=", "mm7", "--listen", "8080"], tmp_path)
    assert out.returncode == 1
    [line] = out.stderr.splitlines()
    assert line.startswith("--listen: '8080' is not a server endpoint")
    out = run(["-n", "--pidfile=", "mm7", "--smtp-relay", "smtp://x"], tmp_path)
    assert out.returncode == 1
    [line] = out.stderr.splitlines()
    assert line.startswith("--smtp-relay: 'smtp://x' is a URL, not an endpoint")


def test_a_port_in_use_stops_the_start_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        out = run(["-n", "mm7", "--listen", endpoint], tmp_path)
    assert out.returncode == 1
    log = out.stdout + out.stderr
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if "cannot listen" in line]
    assert len(errors) == 1
    assert f"--listen: cannot listen on {endpoint}: Address already in use" in errors[0]
    assert len(log.splitlines()) <= 4
    assert not (tmp_path / "twistd.pid").exists()  # twistd cleaned up after itself
