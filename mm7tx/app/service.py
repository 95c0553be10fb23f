"""Building the running service from a :class:`~mm7tx.config.Config`.

:func:`build_service` is the one wiring point: every listener, timer, SMTP
session and HTTP client it makes runs on the reactor it is given, so the
same service runs under ``twistd mm7``, inside any other application, or in
memory on :mod:`mm7tx.testing`'s reactor.  :func:`build_resources` gives the
resource tree alone, to mount in another site.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request

from mm7tx import __version__
from mm7tx.app.health import Alive, Checkable, Ready, RelayWatch
from mm7tx.config import Config, ConfigError, listens_beyond_loopback
from mm7tx.gateway.processors import EmailProcessor
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.http.auth import SCRYPT_CONCURRENCY, ListenerGuard, portal_for
from mm7tx.http.limits import LoginThrottle, RateLimiter, TransactionGate
from mm7tx.http.resource import Folder, MM7Resource, build_root
from mm7tx.http.site import Listener, MM7Site
from mm7tx.interfaces import IMailSender
from mm7tx.metrics import Metrics, MetricsPage
from mm7tx.offload import in_pool, in_threads
from mm7tx.smtp.maildir import MaildirError
from mm7tx.smtp.senders import sender_for

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.service")

# Seconds to close the HTTP connections and the SMTP pool on stop, beyond
# the drain if that ran out.
CLOSE_GRACE = 5.0

if TYPE_CHECKING:

    class IMM7Reactor(
        IReactorCore,
        IReactorTime,
        IReactorTCP,
        IReactorSSL,
        IReactorThreads,
        IReactorPluggableNameResolver,
    ):
        """What mm7tx needs of a reactor, as one make-believe interface (the
        way ``twisted.internet`` types its global reactor): every real
        reactor provides these, and so does ``mm7tx.testing.MemoryReactor``.
        Pass the global reactor as ``cast(IMM7Reactor, reactor)``."""

else:
    IMM7Reactor = Any


def make_processor(
    name: str | Callable[..., object] | None,
    config: Config,
    sender: IMailSender,
    reporter: DeliveryReporter | None = None,
    options: Mapping[str, Any] | None = None,
) -> object:
    """The processor for a path: :class:`EmailProcessor` or the class named
    by dotted name (or given), called with the same arguments; a class that
    declares ``Options`` (a dataclass) is given ``options=Options(**options)``
    too, the options of its Path scope (checked when the file was loaded)."""
    factory: Any = EmailProcessor if name is None else name
    if isinstance(factory, str):
        factory = namedAny(factory)
    declared = getattr(factory, "Options", None)
    extra: dict[str, Any] = {}
    if declared is not None:
        extra["options"] = declared(**(options or {}))
    elif options:
        raise ValueError(f"{name} declares no Options, so it takes no options")
    return factory(
        sender,
        config.rules,
        mm7_version=config.mm7_version,
        keep_smil=config.keep_smil,
        reporter=reporter,
        **extra,
    )


ProcessorFactory = Callable[
    [Config, str, IMailSender, "DeliveryReporter | None"], object
]
"""What makes the processor of one path: ``(config, path, sender, reporter)``
(the reporter ``None`` on VASP paths) to the processor that serves it."""


def configured_processor(
    config: Config,
    path: str,
    sender: IMailSender,
    reporter: DeliveryReporter | None,
) -> object:
    """The processor ``config`` names for ``path``, with its Path scope's
    options: the :data:`ProcessorFactory` used unless another is given."""
    return make_processor(
        config.processor_for(path), config, sender, reporter, config.options_for(path)
    )


def build_resources(
    config: Config,
    sender: IMailSender,
    reactor: IMM7Reactor,
    gate: TransactionGate | None = None,
    reporter: DeliveryReporter | None = None,
    metrics: Metrics | None = None,
    *,
    throttle: LoginThrottle | None = None,
    limiter: RateLimiter | None = None,
    scrypt: defer.DeferredSemaphore | None = None,
    processors: ProcessorFactory = configured_processor,
) -> dict[str, Resource]:
    """One :class:`MM7Resource` per configured VASP and MMSC path.

    All share one :class:`TransactionGate` (the bound on transactions in
    flight), one bound on scrypt checks and one count of failed logins per
    address; MMSC paths share one Portal over the VASP accounts, VASP paths
    one over the MMSC accounts (none, and so open, without any), one rate
    limiter on the reactor's clock and one delivery reporter.  Each of the
    shared objects is made here unless given (a reload gives the running
    ones).  ``metrics``, if given, counts their requests.  ``processors``
    makes each path's processor (by default, the configured one).
    """
    gate = gate if gate is not None else TransactionGate(config.max_transactions)
    if scrypt is None:
        scrypt = defer.DeferredSemaphore(SCRYPT_CONCURRENCY)
    offload = in_threads(reactor)
    blocking = in_pool(reactor)
    if throttle is None:
        throttle = LoginThrottle(
            reactor, config.max_failed_logins, lockout=config.login_lockout
        )
    resources: dict[str, Resource] = {}
    mmsc_portal = (
        portal_for(config.mmscs, reactor, mmsc=True, scrypt=scrypt)
        if config.mmscs
        else None
    )
    for path in config.vasp_paths:
        processor = processors(config, path, sender, None)
        resources[path] = MM7Resource(
            processor,
            path,
            "vasp",
            config.mm7_version,
            mmsc_portal,
            gate=gate,
            xml_limits=config.xml_limits,
            throttle=throttle,
            trusted_proxies=config.trusted_proxies,
            metrics=metrics,
            offload=offload,
            in_thread=blocking,
            max_request_size=config.max_request_size,
            log_addresses=config.log_addresses,
        )
    if config.mmsc_paths:
        portal = portal_for(config.vasps, reactor, scrypt=scrypt)
        limiter = limiter if limiter is not None else RateLimiter(reactor)
        if reporter is None:
            reporter = DeliveryReporter(
                reactor,
                attempts=config.delivery_report_attempts,
                metrics=metrics,
                max_answer_size=config.client_max_answer_size,
            )
        for path in config.mmsc_paths:
            processor = processors(config, path, sender, reporter)
            resources[path] = MM7Resource(
                processor,
                path,
                "mmsc",
                config.mm7_version,
                portal,
                limiter,
                gate,
                config.xml_limits,
                throttle,
                config.trusted_proxies,
                metrics,
                offload,
                max_request_size=config.max_request_size,
                in_thread=blocking,
                log_addresses=config.log_addresses,
            )
    return resources


def site_for(
    resource: Resource,
    config: Config,
    reactor: IReactorTime,
    metrics: Metrics | None = None,
) -> MM7Site:
    """A site serving ``resource`` (yours and mm7tx's) with ``config``'s
    request size limit, request deadline, idle timeout and bound per
    address: a plain ``twisted.web.server.Site`` reads a body whole before
    any resource may refuse it, and waits for it as long as it takes."""
    return MM7Site(
        resource,
        reactor,
        max_request_size=config.max_request_size,
        request_timeout=config.request_timeout,
        idle_timeout=config.idle_timeout,
        max_connections_per_address=config.max_connections_per_address,
        access_log=config.access_log,
        metrics=metrics,
    )


def useless_parts(config: Config) -> list[str]:
    """What in ``config`` can only refuse: MMSC paths no VASP can use, VASP
    accounts with no MMSC path to use them on.  Logged as warnings at start
    (the embedded defaults have an MMSC path and no account)."""
    found = []
    if config.mmsc_paths and not config.vasps:
        found.append(
            f"MMSC paths {' '.join(config.mmsc_paths)} have no VASP account: "
            'every SubmitReq is refused (4001); add VASP "name" '
            '{ password = "…" } (or a VASP named by its IP address), or '
            "mm7_mmsc_uri_paths = () to serve none"
        )
    if config.vasps and not config.mmsc_paths:
        found.append(
            f"{len(config.vasps)} VASP accounts are unused: there is no MMSC "
            "path (mm7_mmsc_uri_paths) for them to submit to"
        )
    return found


class _Generation:
    """One configuration's objects, as a reload swaps them: its resource
    tree (paths, accounts, processors) and the mail sender its processors
    hold; and what still uses them: the requests routed into the tree and
    not finished, and the transactions in its gate."""

    def __init__(
        self, config: Config, sender: IMailSender, root: Resource, gate: TransactionGate
    ) -> None:
        self.config = config
        self.sender = sender
        self.root = root
        self.gate = gate
        self.resource = _Routing(self)
        self.requests = 0
        self._idle: list[defer.Deferred[None]] = []
        # Earlier generations holding the same sender (a reload that kept
        # the relay settings) and maybe still using it: the sender closes
        # only once they are done too.
        self.sharing: list[_Generation] = []

    @property
    def busy(self) -> bool:
        return bool(self.requests or self.gate.in_flight)

    def routed(self, request: Request) -> None:
        self.requests += 1
        request.notifyFinish().addBoth(self._finished)

    def _finished(self, _: object) -> None:
        self.requests -= 1
        if not self.requests:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    async def done(self) -> None:
        """Once no request and no transaction uses these objects: a request
        still authenticating has not entered the gate yet, and a transaction
        whose client went away is no request any more."""
        while self.busy:
            if self.gate.in_flight:
                await self.gate.drained()
            else:
                idle: defer.Deferred[None] = defer.Deferred()
                self._idle.append(idle)
                await idle


class _Routing(Resource):
    """The site's resource: a generation's tree, each request routed into it
    counted until it finishes."""

    def __init__(self, generation: _Generation) -> None:
        super().__init__()
        self.generation = generation

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:  # type: ignore[override]
        self.generation.routed(request)
        child: Resource = self.generation.root.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> Any:
        return self.generation.root.render(request)


class _Current(Resource):
    """A service's MM7 paths, as its configuration in force has them (a
    reload switches to the new one), to mount in a site of your own.
    Children put here (your own resources beside MM7) come first."""

    def __init__(self, service: MM7Service) -> None:
        super().__init__()
        self.service = service

    def getChild(self, path: bytes, request: Request) -> Resource:
        child: Resource = self.service._current.resource.getChildWithDefault(
            path, request
        )
        return child

    def render(self, request: Request) -> Any:
        return self.service._current.resource.render(request)


class MM7Service(service.MultiService):
    """The listeners of one mm7tx configuration, and what they share.

    Starting it logs where it listens and where mail goes.  Stopping it
    stops listening, takes no new transaction, waits up to ``drain_timeout``
    for the transactions in flight and the delivery reports still being
    posted, then closes the HTTP connections and the SMTP pool: nothing of
    it is left on the reactor.

    With ``metrics`` and a ``metrics_listen`` endpoint it serves
    ``/metrics``, ``/healthz`` and ``/readyz`` there (see
    :mod:`mm7tx.health`), listening once started and until the very end of
    the stop, so that ``/readyz`` says it drains.  That listener failing to
    listen is logged as an error, and the MM7 service runs on without it.

    ``resource`` serves the MM7 paths in a site of your own, the way its
    own site does (reloads included): stopping the service then drains the
    transactions come that way too and closes the sender
    (:mod:`mm7tx.cohost`).

    :meth:`reload` swaps in a new configuration (see there).  With ``root``
    None the service builds the resource tree from ``config``, each path's
    processor made by ``processors`` (by default, the configured one); a tree built
    elsewhere counts its transactions in ``gate`` alone, so a reload that
    changes the relay closes its sender once that whole gate is drained.
    """

    def __init__(
        self,
        config: Config,
        sender: IMailSender,
        root: Resource | None,
        gate: TransactionGate,
        reactor: IMM7Reactor,
        reporter: DeliveryReporter | None = None,
        metrics: Metrics | None = None,
        listen_via: Callable[[int], Any] | None = None,
        processors: ProcessorFactory = configured_processor,
    ) -> None:
        super().__init__()
        self.processors = processors
        self.gate = gate
        self.reactor = reactor
        self.reporter = reporter
        self.metrics = metrics
        # Kept across reloads, with the new limits set on them.
        self.throttle = LoginThrottle(
            reactor, config.max_failed_logins, lockout=config.login_lockout
        )
        self.limiter = RateLimiter(reactor)
        self.scrypt = defer.DeferredSemaphore(SCRYPT_CONCURRENCY)
        self._load: Callable[[], Config] | None = None
        # SIGHUP's handler before ours, while ours is installed.
        self._previous_sighup: list[Any] = []
        self._retiring: list[_Generation] = []
        if root is None:
            self._current = self._generation(config, sender)
        else:
            self._current = _Generation(config, sender, root, gate)
        self.resource: Resource = _Current(self)
        self.site = site_for(self._current.resource, config, reactor, metrics)
        self._listeners: list[Listener] = []
        for index, configured in enumerate(config.listeners):
            endpoint = configured.endpoint
            listener = Listener(self.site, endpoint, config.max_connections)
            self._listeners.append(listener)
            factory: Any = listener
            access = configured.access
            if access.allow or access.deny:
                factory = ListenerGuard(
                    factory, access, proxied=endpoint.startswith("haproxy:")
                )
            # A worker listens through a reactor that adopts the socket its
            # parent bound (mm7tx.workers.Adopting).
            via = listen_via(index) if listen_via is not None else reactor
            strports.service(endpoint, factory, reactor=via).setServiceParent(self)
        self.relay_watch: RelayWatch | None = None
        self.monitor: MM7Site | None = None
        self._monitor_port: defer.Deferred[IListeningPort] | None = None
        if metrics is not None:
            metrics.watch(lambda: gate.in_flight, self._smtp_connections)
        if metrics is not None and config.metrics_listen is not None:
            if isinstance(sender, Checkable):
                self.relay_watch = RelayWatch(reactor, sender)
            self.monitor = _MonitorSite(
                monitor_root(metrics, self.problem),
                reactor,
                metrics,
                config.metrics_listen,
            )

    def _smtp_connections(self) -> float:
        """SMTP sessions open, those of earlier configurations' senders still
        finishing their transactions included."""
        senders = [self.sender] + [g.sender for g in self._retiring]
        return float(sum(getattr(sender, "connections", 0) for sender in senders))

    @property
    def config(self) -> Config:
        """The configuration new transactions get."""
        return self._current.config

    @property
    def sender(self) -> IMailSender:
        """The mail sender of new transactions."""
        return self._current.sender

    @property
    def root(self) -> Resource:
        """The resource tree of new requests."""
        return self._current.root

    def _generation(self, config: Config, sender: IMailSender) -> _Generation:
        gate = TransactionGate(within=self.gate)
        if config.mmsc_paths and self.reporter is None:
            self.reporter = DeliveryReporter(
                self.reactor,
                attempts=config.delivery_report_attempts,
                metrics=self.metrics,
                max_answer_size=config.client_max_answer_size,
            )
        resources = build_resources(
            config,
            sender,
            self.reactor,
            gate,
            self.reporter,
            self.metrics,
            throttle=self.throttle,
            limiter=self.limiter,
            scrypt=self.scrypt,
            processors=self.processors,
        )
        return _Generation(config, sender, build_root(resources), gate)

    def reload(self, config: Config) -> bool:
        """Apply ``config`` to the transactions from now on; whether it was.

        Paths, accounts, processors, limits and the relay settings are built
        anew and swapped in at once (the site's resource); the requests and
        transactions under way finish with the objects they started with,
        and a mail sender no longer used (the relay settings changed) is
        closed once they are done, its sessions not cut.  The listeners
        (endpoints, TLS, access lists, ``metrics_listen``) stay: a change to
        them is logged as needing a restart.

        Kept across reloads: the listeners and their connections, the bound
        on transactions in flight (old and new count together, and the drain
        waits for both), the failed-login counts, the rate limiters'
        buckets, the bound on scrypt checks, the delivery reports being
        posted, the metrics and the mail sender if the relay settings are the same (its
        sessions stay open); the new limits apply to each.
        """
        if self.gate.closed:
            log.warn(
                "Not reloading {source}: the service is stopping",
                source=config.source,
            )
            return False
        running = self._current
        changed = _listener_changes(running.config, config)
        if changed:
            log.warn(
                "Reloading {source}: {changed} changed, which takes a restart; "
                "the running listeners are kept",
                source=config.source,
                changed=" and ".join(changed),
            )
        # The running listeners, which a later reload compares with.
        config = replace(
            config,
            listeners=running.config.listeners,
            metrics_listen=running.config.metrics_listen,
        )
        fresh: IMailSender | None = None
        try:
            if config.smtp != running.config.smtp:
                fresh = sender_for(self.reactor, config.smtp, self.metrics)
            new = self._generation(config, fresh or running.sender)
        except MaildirError as e:
            log.error(
                "Not reloading {source}: {origin}: {error}; the running "
                "configuration is kept",
                source=config.source,
                origin=config.smtp_relay_origin,
                error=str(e),
            )
            return False
        except Exception:
            log.failure(
                "Not reloading {source}: the running configuration is kept",
                source=config.source,
            )
            if fresh is not None:
                fresh.close()
            return False
        self.gate.limit = config.max_transactions
        self.throttle.max_failures = config.max_failed_logins
        self.throttle.lockout = config.login_lockout
        if self.reporter is not None:
            self.reporter.attempts = config.delivery_report_attempts
            self.reporter.max_answer_size = config.client_max_answer_size
        self.site.set_limits(
            config.max_request_size,
            config.request_timeout,
            config.idle_timeout,
            config.max_connections_per_address,
        )
        self.site.access_log = config.access_log
        for listener in self._listeners:
            listener.max_connections = config.max_connections
        self.site.resource = new.resource
        self._current = new
        if fresh is None:
            new.sharing = [g for g in (*running.sharing, running) if g.busy]
        else:
            self._retiring.append(running)
            defer.ensureDeferred(self._retire(running))
            self._watch_relay(fresh)
        log.info(
            "Reloaded {source}: VASP paths {paths}, MMSC paths {mmsc} for "
            "{accounts} VASP accounts, mail to {mail}",
            source=config.source,
            paths=" ".join(config.vasp_paths) or "-",
            mmsc=" ".join(config.mmsc_paths) or "-",
            accounts=len(config.vasps),
            mail=new.sender.description,
        )
        for warning in useless_parts(config):
            log.warn("{warning}", warning=warning)
        return True

    def _watch_relay(self, sender: IMailSender) -> None:
        """``/readyz`` from now on says whether this sender's relay answers."""
        if self.monitor is None:
            return
        if self.relay_watch is not None:
            self.relay_watch.stop()
        self.relay_watch = (
            RelayWatch(self.reactor, sender) if isinstance(sender, Checkable) else None
        )
        if self.relay_watch is not None and self._monitor_port is not None:
            self.relay_watch.start()

    def reload_from(self, load: Callable[[], Config]) -> bool:
        """Reload what ``load`` returns (the file read again); a mistake in
        it (a :class:`ConfigError`: file, line, reason) is logged and leaves
        the running configuration in place.  Whether it reloaded."""
        try:
            config = load()
        except ConfigError as e:
            log.error(
                "Not reloading, the running configuration is kept: {error}",
                error=str(e),
            )
            return False
        return self.reload(config)

    def reload_on_sighup(self, load: Callable[[], Config]) -> None:
        """While the service runs, SIGHUP reloads what ``load`` returns.

        Only when asked (``twistd mm7`` asks): an application that embeds
        mm7tx keeps its signals, and may call :meth:`reload` itself.
        """
        self._load = load

    async def _retire(self, generation: _Generation) -> None:
        for user in (*generation.sharing, generation):
            await user.done()
        if generation in self._retiring:  # not closed by a stop meanwhile
            self._retiring.remove(generation)
            await generation.sender.close()
            log.info(
                "Closed the previous configuration's {mail}",
                mail=generation.sender.description,
            )

    def _sighup(self, signum: int, frame: object) -> None:
        # A signal handler: nothing here but handing it to the reactor.
        load = self._load
        if load is not None:
            self.reactor.callFromThread(self.reload_from, load)

    def problem(self) -> str | None:
        """Why the service is not ready for MM7 traffic, or None: what
        ``/readyz`` answers."""
        if self.gate.closed:
            return "draining: the service is stopping"
        # Each MM7 listener listening has started the site once.
        if self.site.numPorts < len(self.config.listen):
            return "not listening on every MM7 listener"
        if self.relay_watch is not None:
            return self.relay_watch.problem()
        return None

    def _start_monitor(self) -> None:
        endpoint = self.config.metrics_listen
        if self.monitor is None or endpoint is None:
            return
        listening = serverFromString(self.reactor, endpoint).listen(self.monitor)
        self._monitor_port = listening

        def up(port: IListeningPort) -> IListeningPort:
            log.info("Metrics and health on {endpoint}", endpoint=endpoint)
            if self.relay_watch is not None:
                self.relay_watch.start()
            return port

        def down(reason: Failure) -> None:
            self._monitor_port = None
            log.error(
                "Cannot serve metrics and health on {endpoint} (metrics_listen): "
                "{why}; MM7 goes on without them",
                endpoint=endpoint,
                why=reason.getErrorMessage(),
            )

        listening.addCallbacks(up, down)

    async def _stop_monitor(self) -> None:
        if self.relay_watch is not None:
            self.relay_watch.stop()
        listening, self._monitor_port = self._monitor_port, None
        if listening is None or self.monitor is None:
            return
        if not listening.called:
            listening.cancel()
        port = await listening
        stopping = port.stopListening() if port is not None else None
        if stopping is not None:
            await stopping
        await _within(
            self.reactor,
            self.monitor.close_connections(abort=True),
            self.reactor.seconds() + 1,
        )

    def startService(self) -> None:
        log.info(
            "mm7tx {version} on {source}: listening on {listen}, VASP paths "
            "{paths}, MMSC paths {mmsc} for {accounts} VASP accounts, mail to {mail}",
            version=__version__,
            source=self.config.source,
            listen=", ".join(self.config.listen) or "nothing of its own",
            paths=" ".join(self.config.vasp_paths) or "-",
            mmsc=" ".join(self.config.mmsc_paths) or "-",
            accounts=len(self.config.vasps),
            mail=self.sender.description,
        )
        for warning in useless_parts(self.config):
            log.warn("{warning}", warning=warning)
        open_to = [e for e in self.config.listen if listens_beyond_loopback(e)]
        if self.config.vasp_paths and not self.config.mmscs and open_to:
            log.warn(
                "VASP paths {paths} are open to anyone who reaches {listen}: "
                "no MMSC account is configured",
                paths=" ".join(self.config.vasp_paths),
                listen=", ".join(open_to),
            )
        if self._load is not None and hasattr(signal, "SIGHUP"):
            previous = signal.signal(signal.SIGHUP, self._sighup)
            # None: a handler not set from Python, which cannot be put back.
            self._previous_sighup = [signal.SIG_DFL if previous is None else previous]
        super().startService()
        self._start_monitor()

    def stopService(self) -> defer.Deferred[None]:
        self.gate.close()
        if self.relay_watch is not None:
            self.relay_watch.stop()
        stopping = super().stopService()
        return defer.ensureDeferred(self._stop(stopping))

    async def _stop(self, listeners: defer.Deferred[None] | None) -> None:
        deadline = self.reactor.seconds() + self.config.drain_timeout
        in_flight = self.gate.in_flight
        if in_flight:
            log.info(
                "Draining {count} transactions in flight (at most {timeout:g} s)",
                count=in_flight,
                timeout=self.config.drain_timeout,
            )
        if listeners is not None:
            await listeners
        drained = await _within(self.reactor, self.gate.drained(), deadline)
        if not drained:
            log.warn(
                "Stopped with {count} transactions still in flight",
                count=self.gate.in_flight,
            )
        elif in_flight:
            log.info("Drained {count} transactions", count=in_flight)
        if self.reporter is not None:
            await self.reporter.stop(max(0.0, deadline - self.reactor.seconds()))
        # Every answer written and its connection closed before the process
        # may exit (at least a few seconds for that, even after a drain that
        # ran out of time).
        closing = self.site.close_connections()
        grace = max(deadline, self.reactor.seconds() + CLOSE_GRACE)
        if not await _within(self.reactor, closing, grace):
            # A peer that does not read what we write: cut it.
            log.warn(
                "Cutting {count} HTTP connections still not closed",
                count=len(self.site.channels),
            )
            cutting = self.site.close_connections(abort=True)
            await _within(self.reactor, cutting, self.reactor.seconds() + 1)
        # The senders of earlier configurations not yet closed too.
        retiring, self._retiring = self._retiring, []
        for generation in retiring:
            await generation.sender.close()
        await self.sender.close()
        await self._stop_monitor()
        # Ours until here: a SIGHUP while draining is no reason to die.
        if self._previous_sighup:
            signal.signal(signal.SIGHUP, self._previous_sighup.pop())


def _listener_changes(running: Config, new: Config) -> list[str]:
    """What of the listeners differs in ``new``, in the file's words."""
    changes = []
    if new.listen != running.listen:
        changes.append(
            f"Listen ({', '.join(running.listen)} -> {', '.join(new.listen)})"
        )
    if new.listen_access != running.listen_access:
        changes.append("always_allow/always_deny")
    if new.metrics_listen != running.metrics_listen:
        changes.append(
            f"metrics_listen ({running.metrics_listen or 'none'} -> "
            f"{new.metrics_listen or 'none'})"
        )
    return changes


async def _within(
    clock: IReactorTime, waiting: defer.Deferred[None], deadline: float
) -> bool:
    """Whether ``waiting`` fired before ``deadline`` (on ``clock``)."""
    timed_out: list[bool] = []

    def on_timeout(result: object, timeout: float) -> None:
        timed_out.append(True)

    waiting.addTimeout(
        max(0.0, deadline - clock.seconds()), clock, onTimeoutCancel=on_timeout
    )
    await waiting
    return not timed_out


class _MonitorSite(MM7Site):
    """The metrics and health listener's site: small GETs, and no access
    log line for each scrape.  Its refusals are counted under its endpoint
    and warned of apart from the MM7 listeners'."""

    noisy = False  # no "Starting factory" line either
    refusing = (
        "Refusing connections to the metrics listener from {peer}: {count} "
        "open, its limit"
    )

    def __init__(
        self,
        root: Resource,
        reactor: IReactorTime,
        metrics: Metrics | None = None,
        endpoint: str = "metrics",
    ) -> None:
        super().__init__(
            root,
            reactor,
            max_request_size=64 * 1024,
            request_timeout=10,
            max_connections_per_address=16,
            metrics=metrics,
            name=endpoint,
        )

    def log(self, request: http.Request) -> None:
        pass

    def logPrefix(self) -> str:
        return "Metrics and health"


def monitor_root(metrics: Metrics, problem: Callable[[], str | None]) -> Resource:
    """``/metrics``, ``/healthz`` and ``/readyz`` (ready unless ``problem``
    gives a reason), to serve on a listener of their own or mount in a site."""
    root = Folder()
    root.putChild(b"metrics", MetricsPage(metrics))
    root.putChild(b"healthz", Alive())
    root.putChild(b"readyz", Ready(problem))
    return root


def build_service(
    config: Config,
    reactor: IMM7Reactor,
    listen_via: Callable[[int], Any] | None = None,
    *,
    processors: ProcessorFactory = configured_processor,
) -> MM7Service:
    """The whole service for ``config``, wired to ``reactor`` alone;
    ``listen_via(index)``, if given, is the reactor the ``index``-th
    listener listens on (a worker's, adopting its parent's socket);
    ``processors``, if given, makes each path's processor, at the start and
    on every reload, instead of the configured ones."""
    metrics = Metrics() if config.metrics_listen is not None else None
    sender = sender_for(reactor, config.smtp, metrics)
    gate = TransactionGate(config.max_transactions)
    return MM7Service(
        config,
        sender,
        None,
        gate,
        reactor,
        metrics=metrics,
        listen_via=listen_via,
        processors=processors,
    )
