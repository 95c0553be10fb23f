"""systemd for real: a socket passed by ``systemd-socket-activate``, and
``systemd-analyze verify`` on the unit files in etc/ (in process:
tests/app/test_systemd.py)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests import samples
from tests.app.test_systemd import ANALYZE, ETC, SOCKET_ACTIVATE, unit_settings
from tests.processes import TWISTD, free_port, post_sample, wait_for_port


@pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="no systemd-socket-activate")
def test_a_deliver_req_over_a_socket_systemd_socket_activate_passed(
    tmp_path: Path,
) -> None:
    assert SOCKET_ACTIVATE is not None
    conf = tmp_path / "mm7tx.conf"
    conf.write_text(
        'HTTP_Listener { Listen "systemd:domain=INET:index=0" { } }\n'
        + samples.EXAMPLE_7_1.replace("}", '  smtp_relay = "maildir:Maildir"\n}')
    )
    port = free_port()
    # No --fdname: systemd-socket-activate then sets no LISTEN_FDNAMES.
    activate = [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}"]
    process = subprocess.Popen(
        [*activate, TWISTD, "-n", "--pidfile=", "mm7", "--config", str(conf)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for_port(port, process)
        # The first connection starts twistd, which then answers it.
        reply = post_sample(port, "/ringtones/", timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)  # twistd by now, the same process
        log, _ = process.communicate(timeout=30)
    assert b"<StatusCode>1000</StatusCode>" in reply, log
    assert "listening on systemd:domain=INET:index=0" in log
    assert "Traceback" not in log, log
    [mail] = list((tmp_path / "Maildir" / "new").iterdir())
    assert b"Subject: Weather Forecast" in mail.read_bytes()


def verify(folder: Path) -> tuple[int, str]:
    """``systemd-analyze verify`` on the units in ``folder``: its exit
    status and all it says."""
    assert ANALYZE is not None, (
        "systemd-analyze is needed (apt-get install systemd; .ci/run installs it)"
    )
    out = subprocess.run(
        [ANALYZE, "verify", "mm7tx.service", "mm7tx.socket"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, out.stdout + out.stderr


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    """The units as shipped, for the README's install.

    verify checks that ExecStart's program is executable, and the test
    cannot install into /opt: so the shipped unit, verified as it is, may
    say that one thing and nothing else (nothing at all on a host where
    the README's install was done); a copy whose only change is that
    program's folder, moved under ``tmp_path`` where it holds this
    virtualenv's twistd, must verify clean.  The other test above checks
    the path is the one the README's install step makes.  Any warning (a
    misspelt key or value) fails."""
    program = unit_settings(ETC / "mm7tx.service")["ExecStart"].split()[0]
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for unit in ("mm7tx.service", "mm7tx.socket"):
        shutil.copy(ETC / unit, shipped / unit)
    code, said = verify(shipped)
    missing = f"mm7tx.service: Command {program} is not executable: No such file"
    assert (code, said) == (0, "") or (
        code == 1 and said == f"{missing} or directory\n"
    ), said

    installed = tmp_path / program.lstrip("/")
    installed.parent.mkdir(parents=True)
    installed.symlink_to(TWISTD)
    moved = tmp_path / "moved"
    moved.mkdir()
    service = (ETC / "mm7tx.service").read_text()
    assert service.count(f"ExecStart={program} ") == 1
    (moved / "mm7tx.service").write_text(
        service.replace(f"ExecStart={program} ", f"ExecStart={installed} ")
    )
    shutil.copy(ETC / "mm7tx.socket", moved / "mm7tx.socket")
    assert verify(moved) == (0, "")
