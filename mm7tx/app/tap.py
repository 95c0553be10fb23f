"""``twistd mm7``: command-line options and ``makeService``.

A mistake stops ``twistd`` with one line naming where and why: a bad
``--config`` file (file, line, reason), a bad ``--listen`` or
``--smtp-relay`` (the option and the reason), or a port that cannot be
listened on (the endpoint and the reason), instead of the usage text or a
traceback.  SIGHUP reads the file again and reloads it (with the same
command-line overrides); a mistake in it then is logged and changes nothing.
"""

from __future__ import annotations

import platform
import re
import signal
import sys
from typing import cast

from twisted.application.service import IService, MultiService
from twisted.copyright import version as twisted_version
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from mm7tx import __version__
from mm7tx.app import systemd, workers
from mm7tx.app.service import IMM7Reactor, build_service
from mm7tx.config import (
    EMBEDDED,
    Config,
    ConfigError,
    load_file,
    read_text,
    with_overrides,
)
from mm7tx.offload import SWITCH_INTERVAL
from mm7tx.smtp.maildir import MaildirError, MaildirSender

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.tap")


# A worker's program: SIGHUP ignored first thing (it is the parent's: see
# Options.postOptions), then twistd.
WORKER_MAIN = (
    "import signal; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "from twisted.scripts.twistd import run; run()"
)


class Options(usage.Options):
    synopsis = (
        "[--config FILE] [--listen ENDPOINT]... [--smtp-relay ENDPOINT] "
        "[--workers N|auto]"
    )
    longdesc = (
        "Run the mm7tx MM7 gateway.  With no --config it runs on embedded "
        "defaults: listen on tcp:8080, VASP path /vasp/, mail into ./Maildir."
    )
    optParameters = [
        ["config", "c", None, "The configuration file (Momentum grammar)."],
        [
            "smtp-relay",
            None,
            None,
            "Where mail goes: an endpoint (tcp:HOST:PORT, tls:HOST:PORT) or "
            "maildir:PATH.  Overrides smtp_relay in the file.",
        ],
        [
            "workers",
            None,
            None,
            "Worker processes behind the listeners, or auto (one per core).  "
            "Overrides workers in the file.",
        ],
        # Set by the parent for its workers; not shown (see getUsage).
        ["worker", None, None, "(Internal: set by the parent for its workers.)"],
    ]
    # Where a worker reads its configuration from its parent (standard input).
    parent_fd = 0

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def getUsage(self, width: int | None = None) -> str:
        """The usage text, without the internal ``--worker``."""
        shown = self.longOpt
        self.longOpt = [name for name in shown if name != "worker="]
        try:
            return super().getUsage(width)
        finally:
            self.longOpt = shown

    def opt_version(self) -> None:
        """Print mm7tx's version, then Twisted's and Python's, and exit."""
        print(f"mm7tx {__version__}")
        print(f"Twisted {twisted_version}")
        print(f"Python {platform.python_version()}")
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """An endpoint to listen on (tcp:8080, :8080, ssl:443:...).
        Repeatable; overrides the file's HTTP_Listener."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        """Load and check the configuration.

        A mistake raises ``SystemExit`` with its one-line message: twistd
        answers a ``UsageError`` with the whole usage text before the
        message (``twisted.application.app.run``), which buries it.
        """
        if self["worker"] is not None:
            self._worker_options()
            return
        systemd.adopt()  # before systemd: listeners are checked
        try:
            accepted = _read(self["config"])
            config = accepted.load()
            # --listen replaces the file's listeners, their access lists too.
            self["dropped_access"] = bool(self["listen"]) and any(
                access.allow or access.deny for access in config.listen_access
            )
            config = with_overrides(
                config, self["listen"], self["smtp-relay"], self["workers"]
            )
        except ConfigError as e:
            raise SystemExit(str(e)) from None
        self["mm7_config"] = config
        self["mm7_accepted"] = accepted

    def _worker_options(self) -> None:
        """A worker's configuration: the one its parent accepted, which the
        parent writes on its standard input (it reads no file)."""
        # SIGHUP is the parent's, which passes on what it reloads: the
        # default (to die) must not kill a worker the signal reaches too.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # The listeners are the parent's sockets: systemd: ones included.
        systemd.adopt(workers.passed_to_worker())
        try:
            payload = workers.read_frame(self.parent_fd)
        except (OSError, ValueError):
            payload = None
        if payload is None:
            raise SystemExit(
                "--worker: no configuration from the parent on standard input "
                "(--worker is for the parent of --workers N only)"
            )
        try:
            config = workers.configuration(payload, self["listen"], self["smtp-relay"])
        except ConfigError as e:
            raise SystemExit(str(e)) from None
        self["dropped_access"] = False  # the parent says so
        self["mm7_config"] = config

    def worker_command(self, slot: int) -> list[str]:
        """How the parent starts worker ``slot``: ``twistd mm7`` with the
        same command-line overrides, logging JSON events to the parent (its
        configuration comes on its standard input)."""
        argv = [
            sys.executable,
            "-c",
            WORKER_MAIN,
            "--nodaemon",
            "--pidfile=",
            "--logger=mm7tx.workers.worker_log_observer",
            "mm7",
            f"--worker={slot}",
        ]
        argv += [f"--listen={endpoint}" for endpoint in self["listen"]]
        if self["smtp-relay"]:
            argv.append(f"--smtp-relay={self['smtp-relay']}")
        return argv


class CannotStart(SystemExit, Exception):
    """The service cannot start (a port in use); the message is logged.

    An ``Exception``, so twistd's runner removes its PID file and tells a
    daemon's parent why (``UnixApplicationRunner.postApplication``); a
    ``SystemExit`` with code 1, so the interpreter then exits with status 1,
    without a traceback and without printing the message a second time.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 1


class _ListeningService(MultiService):
    """The mm7tx service, whose listeners failing to listen stop ``twistd``
    with one line naming the endpoint (twistd listens in
    ``privilegedStartService``, before the reactor runs)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise self._cannot_start(e) from None

    def startService(self) -> None:
        raise_file_limit(_descriptors_needed(self.config))
        try:
            super().startService()
        except CannotListenError as e:
            raise self._cannot_start(e) from None

    def _cannot_start(self, error: CannotListenError) -> CannotStart:
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        where = next(
            (
                listener
                for listener in (*self.config.listeners, *self.config.esmtp_listeners)
                if _port_of(listener.endpoint) == error.port
            ),
            None,
        )
        if where is None:
            message = f"cannot listen on {error.interface or '*'}:{error.port}"
        else:
            message = f"cannot listen on {where.endpoint}"
            if where.origin:
                message = f"{where.origin}: {message}"
        message = f"{message}: {reason}"
        log.critical("{message}", message=message)
        return CannotStart(message)


def _descriptors_needed(config: Config) -> int:
    """Descriptors mm7tx may hold at its bounds: every listener full, the
    SMTP pool, and a margin for logs, listening sockets and the like."""
    return (
        len(config.listen) * config.max_connections + config.smtp.max_connections + 64
    )


def raise_file_limit(needed: int = 0) -> None:
    """Raise the soft limit on open files to the hard limit, and log it.

    systemd and most shells start a process with a soft limit of 1024: a
    thousand idle connections would then take every descriptor and lock out
    the others (and the SMTP pool).  ``twistd`` leaves the limit alone, so
    ``twistd mm7`` raises it, as nginx's ``worker_rlimit_nofile`` does; an
    application that embeds mm7tx keeps its own.  With no hard limit
    (macOS), the soft one is raised to 65536 at most.  A limit below
    ``needed`` is logged as a warning.
    """
    try:
        import resource
    except ImportError:  # not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn(
                "Open file limit {soft}: could not raise it to {target} ({why})",
                soft=soft,
                target=target,
                why=e,
            )
            target = soft
        else:
            log.info(
                "Open file limit raised from {soft} to {target}",
                soft=soft,
                target=target,
            )
    else:
        target = soft
        log.info("Open file limit {soft} (the hard limit)", soft=soft)
    if target != resource.RLIM_INFINITY and target < needed:
        log.warn(
            "Open file limit {limit} is below the {needed} descriptors the "
            "connection bounds allow (mm7_max_connections per listener, "
            "smtp_max_connections): raise the hard limit (LimitNOFILE=) or "
            "lower the bounds",
            limit=target,
            needed=needed,
        )


def _port_of(endpoint: str) -> int | None:
    """The port of a listener such as ``tcp:8080:interface=…``."""
    match = re.search(r"(?:^|:)(?:port=)?(\d+)(?::|$)", endpoint)
    return int(match.group(1)) if match else None


def makeService(options: Options) -> IService:
    config: Config = options["mm7_config"]
    if options.get("dropped_access"):
        log.warn(
            "--listen replaces the listeners of {source}, and with them their "
            "always_allow/always_deny lists: these listeners admit any address",
            source=config.source,
        )
    wrapper = _ListeningService(config)
    # The one place the service takes the global reactor; everything below
    # gets it.  (The JSON logger's SIGUSR1 rotation, mm7tx.logs, takes it
    # too, as twistd's own rotation does: twistd calls a logger with no
    # arguments.)
    from twisted.internet import reactor

    if config.workers > 1:
        try:
            _check_maildir(config, options)
        except ConfigError as e:
            raise SystemExit(str(e)) from None
        supervisor(options, reactor).setServiceParent(wrapper)
        return wrapper
    # The process serves MM7 (a worker, or alone): while a thread works on a
    # large request (mm7tx.offload), the reactor thread gets the interpreter
    # back within half a millisecond rather than five, which halves the
    # wait a small request sees then.  Only here, in the process twistd
    # makes for us: an application hosting mm7tx keeps its own setting.
    sys.setswitchinterval(SWITCH_INTERVAL)
    listen_via = None
    worker = options["worker"]
    if worker is not None:
        slot = int(worker)
        config = workers.worker_config(config, slot)
        listen_via = workers.adopting(reactor)

        def reload(payload: bytes) -> None:
            # What the parent accepted at a SIGHUP, as this worker's.
            def load() -> Config:
                accepted = workers.configuration(
                    payload, options["listen"], options["smtp-relay"]
                )
                return workers.worker_config(accepted, slot)

            built.reload_from(load)

        workers.ParentWatch(reactor, received=reload).setServiceParent(wrapper)

    try:
        built = build_service(config, cast(IMM7Reactor, reactor), listen_via)
    except MaildirError as e:
        raise SystemExit(f"{config.smtp_relay_origin}: {e}") from None
    if worker is None:
        built.reload_on_sighup(lambda: load_config(options))
    built.setServiceParent(wrapper)
    return wrapper


def supervisor(options: Options, reactor: object) -> workers.Supervisor:
    """The parent of ``--workers N`` for ``options``: it gives its workers
    the configuration read at start, then the one each good SIGHUP reads."""
    return workers.Supervisor(
        options["mm7_config"],
        reactor,
        options.worker_command,
        options["mm7_accepted"],
        lambda: accept(options),
    )


def accept(options: Options) -> tuple[Config, workers.Accepted]:
    """What the parent of workers reads on SIGHUP: the ``--config`` file
    (the configuration, and the text it was read from), with the command
    line over it, its Maildir checked; a :class:`ConfigError` if not."""
    accepted = _read(options["config"])
    config = with_overrides(
        accepted.load(), options["listen"], options["smtp-relay"], options["workers"]
    )
    _check_maildir(config, options)
    return config, accepted


def _read(path: str | None) -> workers.Accepted:
    """The ``--config`` file's text (the embedded defaults without one)."""
    if not path:
        return workers.Accepted(EMBEDDED.source, None)
    return workers.Accepted(path, read_text(path))


def _check_maildir(config: Config, options: Options) -> None:
    """A ``maildir:`` relay made and written into, as a worker would: a
    :class:`ConfigError` if it cannot be (each worker would die at start)."""
    endpoint = config.smtp.endpoint
    if not endpoint.startswith("maildir:"):
        return
    try:
        MaildirSender(endpoint[len("maildir:") :])
    except MaildirError as e:
        origin = "--smtp-relay" if options["smtp-relay"] else config.source
        raise ConfigError(origin, 0, str(e)) from None


def load_config(options: Options) -> Config:
    """The configuration as ``options`` say: the ``--config`` file read (now:
    again on SIGHUP), with ``--listen`` and ``--smtp-relay`` over it."""
    path = options["config"]
    config = load_file(path) if path else EMBEDDED
    return with_overrides(config, options["listen"], options["smtp-relay"])
