"""``twistd mm7`` in process: the options, ``makeService`` and a listener that
cannot listen (the real ``twistd`` runs in tests/loopback/test_plugin.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
from twisted.application.service import IService, Service
from twisted.copyright import version as twisted_version
from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs, formatEvent

from mm7tx import __version__
from mm7tx.app import tap
from mm7tx.app.service import MM7Service
from mm7tx.config import EMBEDDED
from tests import samples


def options(*argv: str) -> tap.Options:
    parsed = tap.Options()
    parsed.parseOptions(list(argv))
    return parsed


def test_no_config_is_the_embedded_defaults() -> None:
    assert options()["mm7_config"] == EMBEDDED


def test_a_config_file_with_command_line_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mm7tx.conf"
    path.write_text(samples.EXAMPLE_7_1)
    parsed = options(
        "--config",
        str(path),
        "--listen",
        "tcp:9000:interface=127.0.0.1",
        "--listen",
        ":9001",
        "--smtp-relay",
        "tcp:relay.example:2525",
    )
    config = parsed["mm7_config"]
    assert config.source == str(path)
    assert config.listen == ("tcp:9000:interface=127.0.0.1", "tcp:9001")
    assert config.smtp.endpoint == "tcp:relay.example:2525"
    assert config.vasp_paths == ("/ringtones/", "/photo_contest/", "/email_gateway/")


def test_a_bad_file_is_one_line_not_a_usage_dump(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text('mm7_serv {\n  nonsense = "x"\n}\n')
    with pytest.raises(SystemExit) as caught:
        options("--config", str(path))
    assert str(caught.value) == f"{path}, line 2: unknown mm7_serv option 'nonsense'"


def test_make_service_builds_the_mm7_service_without_starting_it() -> None:
    made = tap.makeService(options("--listen", "tcp:0:interface=127.0.0.1"))
    assert IService.providedBy(made)
    (inner,) = list(made)  # type: ignore[call-overload]
    assert isinstance(inner, MM7Service)
    assert inner.config.listen == ("tcp:0:interface=127.0.0.1",)
    assert not made.running


class CannotBind(Service):
    def privilegedStartService(self) -> None:
        raise CannotListenError("127.0.0.1", 8080, OSError(98, "Address in use"))


def test_a_port_in_use_is_one_logged_line_and_exit_status_1() -> None:
    config = options("--listen", "tcp:8080:interface=127.0.0.1")["mm7_config"]
    wrapper = tap._ListeningService(config)
    CannotBind().setServiceParent(wrapper)
    with capturedLogs() as events, pytest.raises(tap.CannotStart) as caught:
        wrapper.privilegedStartService()
    message = "--listen: cannot listen on tcp:8080:interface=127.0.0.1: Address in use"
    assert str(caught.value) == message
    assert caught.value.code == 1
    assert [formatEvent(e) for e in events] == [message]


def test_a_port_in_use_names_the_file_and_line_of_its_listener(tmp_path: Path) -> None:
    path = tmp_path / "mm7tx.conf"
    path.write_text(
        "HTTP_Listener {\n"
        '  Listen "tcp:8081" { }\n'
        '  Listen "tcp:8080:interface=127.0.0.1" { }\n'
        "}\n" + samples.EXAMPLE_7_1
    )
    wrapper = tap._ListeningService(options("--config", str(path))["mm7_config"])
    CannotBind().setServiceParent(wrapper)
    with capturedLogs(), pytest.raises(tap.CannotStart) as caught:
        wrapper.privilegedStartService()
    assert str(caught.value) == (
        f"{path}, line 3: cannot listen on tcp:8080:interface=127.0.0.1: Address in use"
    )


def test_an_esmtp_port_in_use_names_its_listener(tmp_path: Path) -> None:
    # As the parent of workers binds it (or a single process listens).
    path = tmp_path / "mm7tx.conf"
    path.write_text(
        'HTTP_Listener { Listen "tcp:8081" { } }\n'
        'ESMTP_Listener { Listen "tcp:8080:interface=127.0.0.1" { } }\n'
        + samples.EXAMPLE_7_1.replace(
            "mm7_serv {", 'mm7_serv {\n  mms_domains = ("mms.example")'
        )
        + 'MMSC "up" { submit_url = "http://127.0.0.1:9/mm7" }\n'
    )
    wrapper = tap._ListeningService(options("--config", str(path))["mm7_config"])
    CannotBind().setServiceParent(wrapper)
    with capturedLogs(), pytest.raises(tap.CannotStart) as caught:
        wrapper.privilegedStartService()
    assert str(caught.value) == (
        f"{path}, line 2: cannot listen on tcp:8080:interface=127.0.0.1: Address in use"
    )


class Limits:
    """``resource.getrlimit`` / ``setrlimit`` for RLIMIT_NOFILE, in memory."""

    def __init__(self, soft: int, hard: int, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import resource

        def getrlimit(which: int) -> tuple[int, int]:
            assert which == resource.RLIMIT_NOFILE
            return self.soft, self.hard

        def setrlimit(which: int, limits: tuple[int, int]) -> None:
            assert which == resource.RLIMIT_NOFILE
            if self.refuse:
                raise ValueError("not allowed")
            self.soft, self.hard = limits

        monkeypatch.setattr(resource, "getrlimit", getrlimit)
        monkeypatch.setattr(resource, "setrlimit", setrlimit)


def started(config: object) -> list[str]:
    wrapper = tap._ListeningService(config)  # type: ignore[arg-type]
    with capturedLogs() as events:
        wrapper.startService()
    wrapper.stopService()
    return [formatEvent(e) for e in events if "file limit" in formatEvent(e)]


def test_the_soft_file_limit_is_raised_to_the_hard_one_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = Limits(1024, 524288)
    limits.install(monkeypatch)
    assert started(options()["mm7_config"]) == [
        "Open file limit raised from 1024 to 524288"
    ]
    assert (limits.soft, limits.hard) == (524288, 524288)
    assert started(options()["mm7_config"]) == [
        "Open file limit 524288 (the hard limit)"
    ]


def test_a_file_limit_too_low_for_the_bounds_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Limits(512, 1024).install(monkeypatch)
    config = options("--listen", "tcp:1", "--listen", "tcp:2")["mm7_config"]
    assert started(config) == [
        "Open file limit raised from 512 to 1024",
        "Open file limit 1024 is below the 2084 descriptors the connection bounds "
        "allow (mm7_max_connections per listener, smtp_max_connections): raise the "
        "hard limit (LimitNOFILE=) or lower the bounds",
    ]


def test_a_file_limit_that_cannot_be_raised_is_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Limits(1024, 4096, refuse=True).install(monkeypatch)
    [refused, low] = started(options()["mm7_config"])
    assert refused == "Open file limit 1024: could not raise it to 4096 (not allowed)"
    assert low.startswith("Open file limit 1024 is below the 1084 descriptors ")


def test_listen_on_the_command_line_says_it_drops_the_files_access_lists(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mm7tx.conf"
    path.write_text(
        'HTTP_Listener {\n  Listen "tcp:8080" { always_allow = ("192.0.2.0/24") }\n}\n'
        + samples.EXAMPLE_7_1
    )
    with capturedLogs() as events:
        tap.makeService(options("--config", str(path), "--listen", "tcp:0"))
    assert [formatEvent(e) for e in events if "--listen" in formatEvent(e)] == [
        f"--listen replaces the listeners of {path}, and with them their "
        "always_allow/always_deny lists: these listeners admit any address"
    ]
    with capturedLogs() as events:
        tap.makeService(options("--config", str(path)))
    assert not [e for e in events if "--listen" in formatEvent(e)]


def test_version_is_mm7txs_then_twisteds_and_pythons(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        options("--version")
    assert caught.value.code == 0
    [ours, twisted, python] = capsys.readouterr().out.splitlines()
    assert ours == f"mm7tx {__version__}"
    assert twisted == f"Twisted {twisted_version}"
    assert python == f"Python {platform.python_version()}"


def test_a_maildir_it_cannot_write_into_stops_the_start_with_one_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("")
    relay = f"maildir:{tmp_path}/file/Maildir"
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--smtp-relay", relay))
    assert str(caught.value) == (
        f"--smtp-relay: cannot deliver into the Maildir {tmp_path}/file/Maildir: "
        "Not a directory"
    )


def test_a_maildir_it_cannot_make_names_the_file_and_line_of_smtp_relay(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "mm7tx.conf"
    path.write_text(
        samples.EXAMPLE_7_1.replace(
            "}", f'  smtp_relay = "maildir:{tmp_path}/file/Maildir"\n}}'
        )
    )
    line = (
        path.read_text()
        .splitlines()
        .index(f'  smtp_relay = "maildir:{tmp_path}/file/Maildir"')
    )
    with pytest.raises(SystemExit) as caught:
        tap.makeService(options("--config", str(path)))
    assert str(caught.value) == (
        f"{path}, line {line + 1}: cannot deliver into the Maildir "
        f"{tmp_path}/file/Maildir: Not a directory"
    )
