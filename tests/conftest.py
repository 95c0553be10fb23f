"""Fixtures shared by the tests: a real ESMTP server on loopback, the
``loopback`` mark given by folder (every test under tests/loopback/, no
other), and the guard that keeps every test without it in memory."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from mm7tx.testing import RecordingDelivery, smtp_server_factory

LOOPBACK = Path(__file__).resolve().parent / "loopback"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by mark
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Mark every test under tests/loopback/ ``loopback``; a test elsewhere
    that carries the mark is an error: it belongs in tests/loopback/."""
    astray = []
    for item in items:
        # ``Item.path`` came with pytest 7; the lowest pytest we support
        # (6.2.5, .ci/lowest.txt) has only ``fspath``.
        where = getattr(item, "path", None) or item.fspath
        if LOOPBACK in Path(str(where)).resolve().parents:
            item.add_marker(pytest.mark.loopback)
        elif item.get_closest_marker("loopback") is not None:
            astray.append(item.nodeid)
    if astray:
        raise pytest.UsageError(
            "marked loopback outside tests/loopback/ (move them there, "
            "unmarked: the folder marks them): " + ", ".join(astray)
        )


@pytest.fixture(autouse=True, scope="session")
def working_folder_of_its_own(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """The suite runs in a folder of its own: what the service makes in its
    working folder by default (the Maildir, the state store's file) never
    lands in the checkout."""
    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(before)


@pytest.fixture(autouse=True)
def in_memory_unless_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test without the ``loopback`` mark (one outside tests/loopback/)
    runs in memory: a real socket bound or connected, or a process started,
    fails it at once, naming the folder, so that ``pytest -m "not loopback"``
    stays the in-memory suite (CONTRIBUTING.md)."""
    if request.node.get_closest_marker("loopback") is not None:
        # The default state store (sqlite:mm7tx.sqlite3) is a file in the
        # working folder: each real-process test gets a folder of its own,
        # so that no test answers another's transactions from it.
        monkeypatch.chdir(request.getfixturevalue("tmp_path"))
        return

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"{request.node.nodeid} uses a real socket or process: "
            "it belongs in tests/loopback/ (marked loopback there)"
        )

    monkeypatch.setattr(socket.socket, "bind", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    # reactor.spawnProcess starts its processes with these, not Popen.
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawnp", refuse)


@pytest.fixture
def delivery() -> RecordingDelivery:
    """What the loopback SMTP server received."""
    return RecordingDelivery()


@pytest_twisted.async_yield_fixture(params=["one-by-one", "pipelining"])
async def relay(delivery, request):
    """Twisted's ESMTP server on a free loopback port; yields its endpoint.
    Tests using it run twice: with a relay that offers PIPELINING (commands
    sent in groups) and with one that does not (one command at a time)."""
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        smtp_server_factory(delivery, pipelining=request.param == "pipelining")
    )
    yield f"tcp:127.0.0.1:{port.getHost().port}"
    await port.stopListening()
