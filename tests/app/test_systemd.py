"""systemd: the sockets it passes (``systemd:`` listeners), in process; the
unit files in etc/.  The real ``systemd-socket-activate`` and
``systemd-analyze`` run in tests/loopback/test_systemd.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from twisted.internet.endpoints import _SystemdParser
from twisted.python.systemd import ListenFDs

from mm7tx.app import systemd
from mm7tx.config import ConfigError, check_listen, load
from tests import samples

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
