"""``twistd mm7`` in process: the options, ``makeService`` and a listener that
cannot listen (the real ``twistd`` runs in tests/test_plugin.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.application.service import IService, Service
from twisted.internet.error import CannotListenError
from twisted.logger import capturedLogs, formatEvent

from mm7tx import tap
from mm7tx.config import EMBEDDED
from mm7tx.service import MM7Service
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
