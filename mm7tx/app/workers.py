"""``--workers N``: N worker processes behind listeners bound once.

The parent (:class:`Supervisor`) binds every listener, the MM7 (HTTP) ones
then the ESMTP ones, through Twisted's own endpoint parser on the real reactor and never accepts on them; it
spawns N ``twistd mm7`` workers, each given the listening sockets as file
descriptors 3, 4, … (one per listener, in order) and adopting them with
``reactor.adoptStreamPort`` (:class:`Adopting`): the kernel hands each
connection to one worker.  TLS (``ssl:``) and the PROXY protocol
(``haproxy:``) are done in the worker, by the same endpoint string.  This
is the way Twisted's "Using processes" and ``adoptStreamPort`` documents;
unlike ``SO_REUSEPORT`` it works with UNIX and systemd-passed sockets, and a
dead worker's share of new connections goes to the others at once.

Each worker is the whole single-process mm7tx (:func:`build_service`): its
own SMTP pool, limits and metrics, the latter served on a private UNIX
socket that the parent reads to answer ``/metrics`` (every worker's
samples with a ``worker`` label) and ``/readyz`` (ready when every worker
is).  Workers log JSON events to the parent, which logs them as its own.

Workers read no configuration file: the parent reads it (at start, and again
on SIGHUP, when it checks it before anything changes) and writes the text it
accepted on each worker's standard input (:func:`frame`), at the worker's
start and after each good SIGHUP.  A worker started at any time, a
replacement too, thus runs what the parent last accepted, never a file
changed since; its listeners stay the ones the parent bound.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from mm7tx import __version__
from mm7tx.app.drain import CLOSE_GRACE
from mm7tx.app.frames import Accepted as Accepted
from mm7tx.app.frames import Frames as Frames
from mm7tx.app.frames import configuration as configuration
from mm7tx.app.frames import configuration_frame as configuration_frame
from mm7tx.app.frames import frame as frame
from mm7tx.app.frames import read_frame as read_frame
from mm7tx.app.monitor import MonitorListener, MonitorSite
from mm7tx.app.pool import BACKOFF as BACKOFF
from mm7tx.app.pool import BACKOFF_MAX as BACKOFF_MAX
from mm7tx.app.pool import MAX_LINE as MAX_LINE
from mm7tx.app.pool import STEADY as STEADY
from mm7tx.app.pool import WorkerPool as WorkerPool
from mm7tx.app.pool import WorkerProtocol as WorkerProtocol
from mm7tx.app.pool_monitor import ASK_TIMEOUT as ASK_TIMEOUT
from mm7tx.app.pool_monitor import WorkersMonitor as WorkersMonitor
from mm7tx.app.pool_monitor import monitor_root as monitor_root
from mm7tx.app.reload import Sighup, listener_changes
from mm7tx.app.worker import FDNAMES_ENV as FDNAMES_ENV
from mm7tx.app.worker import FDS_ENV as FDS_ENV
from mm7tx.app.worker import FIRST_FD as FIRST_FD
from mm7tx.app.worker import FOLDER_ENV as FOLDER_ENV
from mm7tx.app.worker import Adopting as Adopting
from mm7tx.app.worker import ParentWatch as ParentWatch
from mm7tx.app.worker import adopting as adopting
from mm7tx.app.worker import metrics_socket as metrics_socket
from mm7tx.app.worker import passed_endpoints as passed_endpoints
from mm7tx.app.worker import passed_to_worker as passed_to_worker
from mm7tx.app.worker import systemd_names as systemd_names
from mm7tx.app.worker import worker_config as worker_config
from mm7tx.app.worker import worker_log_observer as worker_log_observer
from mm7tx.config import Config, ConfigError

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.workers")


# The parent: binding ---------------------------------------------------------


class _Unused(protocol.Factory):
    """What the parent's listening ports are made with: they never accept."""

    noisy = False

    def logPrefix(self) -> str:
        return "Listener for the workers"


def bind(reactor: Any, endpoint: str) -> IListeningPort:
    """Listen on ``endpoint`` (one of :data:`~mm7tx.config.SHARED_KINDS`)
    without ever accepting: the socket is for workers to adopt.  A
    ``CannotListenError`` is raised as from ``listenTCP``."""
    results: list[Any] = []
    serverFromString(reactor, endpoint).listen(_Unused()).addBoth(results.append)
    if not results:  # cannot happen for the kinds checked by check_shared
        raise RuntimeError(f"{endpoint} did not listen at once")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    port = results[0]
    port.stopReading()
    return port  # type: ignore[no-any-return]


class Supervisor(service.MultiService):
    """The parent of ``--workers N``: binds every listener of ``config``,
    ESMTP ones after HTTP ones (in ``privilegedStartService``, as a single
    process would), runs the
    :class:`WorkerPool` with ``command(slot)``, gives each worker the
    configuration it accepted (``accepted``: at start, then what ``load``
    returns at each SIGHUP that loads cleanly), and serves the workers'
    metrics and health on ``metrics_listen``.  Stopping closes the
    parent's copies of the listening sockets, drains every worker
    (SIGTERM), then stops."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        command: Callable[[int], Sequence[str]],
        accepted: Accepted | None = None,
        load: Callable[[], tuple[Config, Accepted]] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        # The configuration the listeners were bound for, and the one the
        # workers run.
        self.bound = self.accepted = accepted or Accepted(config.source, None)
        self.load = load
        self.ports: list[IListeningPort] = []
        self.folder: str | None = None
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
        }
        env[FDS_ENV], env[FDNAMES_ENV] = systemd_names(passed_endpoints(config))
        self.pool = WorkerPool(
            reactor,
            config.workers,
            command,
            self._child_fds,
            stop_timeout=_stop_timeout(config),
            env=env,
            before_start=self._before_start,
            hello=self.frame,
        )
        self.pool.setServiceParent(self)
        self.monitor: WorkersMonitor | None = None
        self._monitor_listener: MonitorListener | None = None
        self._sighup = Sighup(reactor, self.reload)

    def frame(self) -> bytes:
        """What a worker is given at its start: the configuration accepted."""
        return configuration_frame(self.bound, self.accepted)

    def _child_fds(self) -> dict[int, int | str]:
        fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for i, port in enumerate(self.ports):
            fds[FIRST_FD + i] = port.fileno()  # type: ignore[attr-defined]
        return fds

    def _before_start(self, slot: int) -> None:
        if self.folder is not None:  # a killed worker's socket stays behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(metrics_socket(self.folder, slot))

    def privilegedStartService(self) -> None:
        # In the order the workers find them (passed_endpoints).
        for endpoint in passed_endpoints(self.config):
            self.ports.append(bind(self.reactor, endpoint))
        super().privilegedStartService()

    def startService(self) -> None:
        log.info(
            "mm7tx {version} on {source}: {count} workers listening on {listen}",
            version=__version__,
            source=self.config.source,
            count=self.config.workers,
            listen=", ".join(passed_endpoints(self.config)),
        )
        if self.config.metrics_listen is not None:
            self.folder = tempfile.mkdtemp(prefix="mm7tx-workers-")
            self.pool.env[FOLDER_ENV] = self.folder
            folder = self.folder
            self.monitor = WorkersMonitor(
                self.reactor, self.pool, lambda slot: metrics_socket(folder, slot)
            )
        self._sighup.install()
        super().startService()
        if self.monitor is not None and self.config.metrics_listen is not None:
            site = MonitorSite(monitor_root(self.monitor), self.reactor)
            self._monitor_listener = MonitorListener(
                self.reactor, self.config.metrics_listen, site, log
            )
            self._monitor_listener.start()

    def reload(self) -> bool:
        """SIGHUP: the file read again (``load``) and, if it loads cleanly,
        passed on to every worker, and to every worker started from now on;
        a mistake in it is logged and changes nothing.  Whether it was."""
        if self.load is None:
            return False
        try:
            config, accepted = self.load()
        except ConfigError as e:
            log.error(
                "Not reloading, the running configuration is kept: {error}",
                error=str(e),
            )
            return False
        changed = listener_changes(self.config, config)
        if config.workers != self.config.workers:
            changed.append(f"workers ({self.config.workers} -> {config.workers})")
        if changed:
            log.warn(
                "Reloading {source}: {changed} changed, which takes a restart; "
                "the running listeners are kept",
                source=config.source,
                changed=" and ".join(changed),
            )
        self.accepted = accepted
        self.pool.stop_timeout = _stop_timeout(config)
        log.info(
            "SIGHUP: passing {source} on to {count} workers",
            source=config.source,
            count=self.pool.running_count,
        )
        self.pool.tell_all(self.frame())
        return True

    async def _stop(self) -> None:
        if self.monitor is not None:
            self.monitor.draining = True
        for port in self.ports:
            # The workers close theirs as they stop: then nothing listens.
            await defer.maybeDeferred(port.stopListening)
        self.ports = []
        await super().stopService()
        if self._monitor_listener is not None:
            await self._monitor_listener.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        log.info("All workers stopped")

    def stopService(self) -> defer.Deferred[None]:
        self._sighup.restore()
        return defer.ensureDeferred(self._stop())


def _stop_timeout(config: Config) -> float:
    """How long the parent's stop waits for its workers before SIGKILL."""
    # A worker drains, then takes up to CLOSE_GRACE to close.
    return config.drain_timeout + CLOSE_GRACE + 5
