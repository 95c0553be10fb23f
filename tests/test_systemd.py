"""systemd: the sockets it passes (``systemd:`` listeners), in process and
under the real ``systemd-socket-activate``; the unit files in etc/."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from twisted.internet.endpoints import _SystemdParser
from twisted.python.systemd import ListenFDs

from mm7tx import systemd
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


ETC = Path(__file__).parent.parent / "etc"
ANALYZE = shutil.which("systemd-analyze")


def unit_settings(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )


def test_the_service_unit_is_hardened_and_drains_before_it_is_killed() -> None:
    unit = unit_settings(ETC / "mm7tx.service")
    assert unit["ExecStart"] == (
        "/usr/bin/twistd --nodaemon --pidfile= mm7 --config /etc/mm7tx/mm7tx.conf"
    )
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


@pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    """verify wants ExecStart's program to exist: the copy runs this
    virtualenv's twistd.  Any warning (a misspelt key or value) fails."""
    assert ANALYZE is not None
    service = (ETC / "mm7tx.service").read_text()
    assert "ExecStart=/usr/bin/twistd " in service
    (tmp_path / "mm7tx.service").write_text(
        service.replace("ExecStart=/usr/bin/twistd ", f"ExecStart={TWISTD} ")
    )
    shutil.copy(ETC / "mm7tx.socket", tmp_path / "mm7tx.socket")
    out = subprocess.run(
        [ANALYZE, "verify", "mm7tx.service", "mm7tx.socket"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout + out.stderr) == (0, "")
