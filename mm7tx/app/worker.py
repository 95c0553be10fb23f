"""A ``--workers`` worker: the listening sockets its parent bound (HTTP and
ESMTP), adopted
(:class:`Adopting`), its metrics on a socket in the parent's folder, its log
as JSON to the parent, and its link to the parent (:class:`ParentWatch`).

What the parent sets for it (:data:`FIRST_FD`, the environment variables,
:func:`metrics_socket`, :func:`systemd_names`) is here too: both sides read
it from here.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from twisted.application import service
from twisted.logger import ILogObserver, Logger, jsonFileLogObserver
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from mm7tx.app.frames import Frames
from mm7tx.config import Config, inner_endpoint

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.workers")

# The first descriptor a worker finds its listeners at (as systemd does).
FIRST_FD = 3
# Set by the parent for its workers: the folder of their metrics sockets,
# and what their systemd: listeners find (see systemd_names).
FOLDER_ENV = "MM7TX_WORKER_FOLDER"
FDS_ENV, FDNAMES_ENV = "MM7TX_WORKER_LISTEN_FDS", "MM7TX_WORKER_LISTEN_FDNAMES"


def passed_endpoints(config: Config) -> tuple[str, ...]:
    """The endpoints of the listeners a parent binds for its workers, in
    the order of their sockets (at ``FIRST_FD``, ``FIRST_FD + 1``, …): the
    MM7 (HTTP) listeners, then the ESMTP listeners.  A worker's ESMTP
    listener ``j`` thus adopts socket ``len(config.listeners) + j``."""
    return config.listen + tuple(
        listener.endpoint for listener in config.esmtp_listeners
    )


def metrics_socket(folder: str, slot: int) -> str:
    """Where worker ``slot`` serves its metrics and health."""
    return os.path.join(folder, f"{slot}.sock")


def systemd_names(listen: Sequence[str], first: int = FIRST_FD) -> tuple[str, str]:
    """``LISTEN_FDS``-like descriptors and names for a worker, so that its
    ``systemd:`` listeners (by ``index=`` or ``name=``) parse and find the
    socket its parent passed it for that listener (``first + i``)."""
    descriptors: dict[int, int] = {}
    names: dict[int, str] = {}
    by_name: list[tuple[str, int]] = []
    for i, endpoint in enumerate(listen):
        kind, _, keywords = inner_endpoint(endpoint)
        if kind != "systemd":
            continue
        if keywords.get("index", "").isdigit():
            descriptors[int(keywords["index"])] = first + i
        else:
            by_name.append((keywords.get("name", "unknown"), first + i))
    # Those found by name after those found by index.
    for name, fd in by_name:
        at = max(descriptors, default=-1) + 1
        descriptors[at], names[at] = fd, name
    if not descriptors:
        return "", ""
    top = max(descriptors) + 1
    return (
        ",".join(str(descriptors.get(at, -1)) for at in range(top)),
        ":".join(names.get(at, "unknown") for at in range(top)),
    )


class Adopting:
    """The reactor a worker's listener listens on: any ``listen*`` (or
    ``adoptStreamPort``) adopts the socket at ``fd`` instead, with TLS
    around the factory for ``listenSSL``, as Twisted's own ``listenSSL``
    does; everything else is the real reactor's."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _adopt(self, factory: Any) -> Any:
        import socket

        probe = socket.socket(fileno=os.dup(self._fd))
        family = probe.family
        probe.close()
        port = self._reactor.adoptStreamPort(self._fd, family, factory)
        if family == socket.AF_UNIX:
            # The parent owns the path: a worker stopping must not unlink it
            # (Twisted's UNIX port unlinks its path on close).
            from twisted.internet import tcp

            port.connectionLost = functools.partial(tcp.Port.connectionLost, port)
        return port

    def listenTCP(self, port: int, factory: Any, *args: Any, **kw: Any) -> Any:
        return self._adopt(factory)

    def listenUNIX(self, address: Any, factory: Any, *args: Any, **kw: Any) -> Any:
        return self._adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, *args: Any, **kw: Any
    ) -> Any:
        listening = self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))
        listening._type = "TLS"
        return listening

    def adoptStreamPort(self, fileDescriptor: int, family: Any, factory: Any) -> Any:
        return self._adopt(factory)


def worker_log_observer() -> ILogObserver:
    """A worker's log (``twistd --logger``): JSON events, one a line, on its
    standard output, for the parent to log as its own."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")


class ParentWatch(service.Service):
    """A worker's link to its parent: its standard input, which the parent
    holds open.  Each configuration the parent accepts on SIGHUP comes
    there as a frame, whose payload goes to ``received``.  When it closes
    (the parent is gone, even killed with SIGKILL) the worker stops as on
    SIGTERM, draining.  SIGINT (a terminal's Ctrl-C reaches the whole
    process group) is left to the parent, which sends SIGTERM."""

    def __init__(
        self,
        reactor: Any,
        fd: int = 0,
        received: Callable[[bytes], object] | None = None,
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.received = received
        self._frames = Frames()

    def startService(self) -> None:
        from twisted.internet.process import ProcessReader

        super().startService()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._reader = ProcessReader(self.reactor, self, "parent", self.fd)

    def childDataReceived(self, name: str, data: bytes) -> None:
        for payload in self._frames.feed(data):
            if self.received is None:
                continue
            try:
                self.received(payload)
            except Exception:
                # Not the end of the link to the parent, as raising would be.
                log.failure("Reloading what the parent passed on")

    def childConnectionLost(self, name: str, reason: Failure | None = None) -> None:
        if self.running:
            log.warn("The parent is gone: stopping")
            self.reactor.stop()


def passed_to_worker(environ: Mapping[str, str] = os.environ) -> Any:
    """The sockets a worker's ``systemd:`` listeners find (its parent's,
    at the descriptors :func:`systemd_names` says)."""
    from twisted.python.systemd import ListenFDs

    fds = environ.get(FDS_ENV, "")
    names = environ.get(FDNAMES_ENV, "")
    if not fds:
        return ListenFDs([], ())
    return ListenFDs([int(fd) for fd in fds.split(",")], tuple(names.split(":")))


def worker_config(
    config: Config, slot: int, environ: Mapping[str, str] = os.environ
) -> Config:
    """A worker's configuration: its metrics on its own socket in the
    parent's folder (or none, when the parent serves none)."""
    folder = environ.get(FOLDER_ENV)
    listen = f"unix:{metrics_socket(folder, slot)}:mode=600" if folder else None
    return replace(config, metrics_listen=listen)


def adopting(reactor: Any) -> Callable[[int], Adopting]:
    """For :func:`~mm7tx.service.build_service`: listener ``i`` adopts the
    socket at descriptor ``FIRST_FD + i`` (``i`` counts the ESMTP listeners
    after the HTTP ones: :func:`passed_endpoints`)."""
    return lambda index: Adopting(reactor, FIRST_FD + index)
