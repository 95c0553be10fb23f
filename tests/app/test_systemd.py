"""systemd: the sockets it passes (``systemd:`` listeners), in process and
under the real ``systemd-socket-activate``; the unit files in etc/."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from twisted.internet.endpoints import _SystemdParser
from twisted.python.systemd import ListenFDs

from mm7tx.app import systemd
from mm7tx.config import ConfigError, check_listen, load
from tests import samples
from tests.processes import TWISTD, free_port, post_sample, wait_for_port

SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.parametrize(
    "environ, fds, names",
    [
        ({}, [], {}),
        ({"LISTEN_PID": "41", "LISTEN_FDS": "1"}, [], {}),  # another process's
        ({"LISTEN_PID": "42", "LISTEN_FDS": "x"}, [], {}),
        # systemd-socket-activate without --fdname: no names, still sockets.
        ({"LISTEN_PID": "42", "LISTEN_FDS": "1"}, [3], {"unknown": 3}),
        (
            {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:metrics"},
            [3, 4],
            {"web": 3, "metrics": 4},
        ),
    ],
)
def test_passed_sockets_names_optional(
    environ: dict[str, str], fds: list[int], names: dict[str, int]
) -> None:
    passed = systemd.passed_sockets(environ, 42)
    assert passed.inheritedDescriptors() == fds
    assert passed.inheritedNamedDescriptors() == names


def test_adopted_sockets_make_systemd_listeners_usable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_SystemdParser, "_sddaemon", ListenFDs([], ()))
    with pytest.raises(ValueError, match="no socket with that index"):
        check_listen("systemd:domain=INET:index=0")
    systemd.adopt(systemd.passed_sockets({"LISTEN_PID": "7", "LISTEN_FDS": "1"}, 7))
    assert check_listen("systemd:domain=INET:index=0") == (
        "systemd:domain=INET:index=0"
    )
    with pytest.raises(ValueError, match="no socket with that name;"):
        check_listen("systemd:domain=INET:name=web")
    # Twisted's own reading, when it found sockets, is left alone.
    theirs = ListenFDs([3], ("web",))
    monkeypatch.setattr(_SystemdParser, "_sddaemon", theirs)
    systemd.adopt(systemd.passed_sockets({"LISTEN_PID": "7", "LISTEN_FDS": "2"}, 7))
    assert _SystemdParser._sddaemon is theirs


def test_a_systemd_listener_by_name_without_that_socket_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_SystemdParser, "_sddaemon", ListenFDs([], ()))
    text = (
        'HTTP_Listener { Listen "systemd:domain=INET:name=mm7" { } }\n'
        + samples.EXAMPLE_7_1
    )
    with pytest.raises(ConfigError) as caught:
        load(text, "sd.conf")
    assert str(caught.value) == (
        "sd.conf, line 1: Listen: 'systemd:domain=INET:name=mm7': systemd passed "
        "no socket with that name; start mm7tx from a .socket unit or with "
        "systemd-socket-activate"
    )


@pytest.mark.loopback
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


ETC = Path(__file__).parents[2] / "etc"
README = ETC.parent / "README.md"
ANALYZE = shutil.which("systemd-analyze")


def unit_settings(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def readme_systemd_install() -> tuple[str, str]:
    """The README's "Under systemd" section, and the virtualenv its install
    step makes (``python3 -m venv DIR``)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Under systemd\n", 1)[1].split("\n### ", 1)[0]
    found = re.search(r"^    python3 -m venv (/\S+)$", section, re.M)
    assert found, "the README's Under systemd has no `python3 -m venv DIR` step"
    return section, found.group(1)


def test_the_service_unit_runs_the_twistd_the_readme_installs() -> None:
    section, venv = readme_systemd_install()
    # The step installs mm7tx there, and the unit runs that venv's twistd.
    assert f"    {venv}/bin/pip install " in section
    unit = unit_settings(ETC / "mm7tx.service")
    assert unit["ExecStart"] == (
        f"{venv}/bin/twistd --nodaemon --pidfile= mm7 --config /etc/mm7tx/mm7tx.conf"
    )
    assert f"`{unit['ExecStart']}`" in " ".join(section.split())


def test_the_service_unit_is_hardened_and_drains_before_it_is_killed() -> None:
    unit = unit_settings(ETC / "mm7tx.service")
    for setting, value in {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "mm7tx",
        "LogsDirectory": "mm7tx",
        "LimitNOFILE": "65536",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "CapabilityBoundingSet": "",
    }.items():
        assert unit[setting] == value, setting
    # Above the drain and the time to close the connections after it.
    assert float(unit["TimeoutStopSec"]) > load(samples.EXAMPLE_7_1).drain_timeout + 5
    socket_unit = unit_settings(ETC / "mm7tx.socket")
    listen = f"systemd:domain=INET:name={socket_unit['FileDescriptorName']}"
    assert f'Listen "{listen}"' in (ETC / "mm7tx.socket").read_text()


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


@pytest.mark.loopback
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
