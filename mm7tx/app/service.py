"""The running service: :func:`build_service` builds it from a
:class:`~mm7tx.config.Config`, :class:`MM7Service` runs it (start, reload,
stop with a drain).

:func:`build_service` is the one wiring point: every listener, timer, SMTP
session and HTTP client it makes runs on the reactor it is given, so the
same service runs under ``twistd mm7``, inside any other application, or in
memory on :mod:`mm7tx.testing`'s reactor.  :func:`build_resources` gives the
resource tree alone, to mount in another site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from mm7tx import __version__
from mm7tx.app.drain import CLOSE_GRACE as CLOSE_GRACE
from mm7tx.app.drain import close_connections, drain
from mm7tx.app.health import RelayWatch
from mm7tx.app.monitor import MonitorListener, MonitorSite
from mm7tx.app.monitor import monitor_root as monitor_root
from mm7tx.app.reload import (
    Generation,
    Sighup,
    keeping_listeners,
    listener_changes,
)
from mm7tx.app.wiring import (
    CONFIGURED,
    mail_listener,
    mail_policy,
    mail_portal,
    mail_tls,
    make_shared,
)
from mm7tx.app.wiring import IMM7Reactor as IMM7Reactor
from mm7tx.app.wiring import ProcessorFactory as ProcessorFactory
from mm7tx.app.wiring import build_resources as build_resources
from mm7tx.app.wiring import configured_processor as configured_processor
from mm7tx.app.wiring import make_processor as make_processor
from mm7tx.app.wiring import site_for as site_for
from mm7tx.app.wiring import useless_parts as useless_parts
from mm7tx.config import Config, ConfigError, listens_beyond_loopback
from mm7tx.config import Listener as ConfiguredListener
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.http.auth import ListenerGuard
from mm7tx.http.client import MM7Client
from mm7tx.http.limits import LoginThrottle, RateLimiter, TransactionGate
from mm7tx.http.resource import build_root
from mm7tx.http.settings import SubmitSettings
from mm7tx.http.site import Listener, MM7Site
from mm7tx.interfaces import Checkable, IMailSender, IStateStore
from mm7tx.metrics import Metrics
from mm7tx.smtp.maildir import MaildirError
from mm7tx.smtp.senders import sender_for

if TYPE_CHECKING:
    from mm7tx.smtp.server import ESMTPServerFactory

# Named as before the move into packages: the namespace is in every log event.
log = Logger(namespace="mm7tx.service")


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
    None the service builds the resource tree from ``config``; a tree built
    elsewhere counts its transactions in ``gate`` alone, so a reload that
    changes the relay closes its sender once that whole gate is drained.
    ``shared`` holds what every configuration shares, made once
    (:func:`~mm7tx.app.wiring.make_shared`: ``gate`` and ``reporter`` if
    given, else made there), the state store among them: the one
    ``state_store`` names, or ``store`` if given (``None``: none).
    """

    def __init__(
        self,
        config: Config,
        sender: IMailSender,
        root: Resource | None,
        gate: TransactionGate | None,
        reactor: IMM7Reactor,
        reporter: DeliveryReporter | None = None,
        metrics: Metrics | None = None,
        listen_via: Callable[[int], Any] | None = None,
        processors: ProcessorFactory = configured_processor,
        store: IStateStore | None = CONFIGURED,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.processors = processors
        # Kept across reloads, with the new limits set on them.
        self.shared = make_shared(
            config, reactor, metrics, gate=gate, reporter=reporter, store=store
        )
        self._load: Callable[[], Config] | None = None
        self._sighup = Sighup(reactor, self._reload_loaded)
        self._retiring: list[Generation] = []
        # State stores a reload replaced, closed once no longer used.
        self._closing_stores: list[IStateStore] = []
        if root is None:
            self._current = self._generation(config, sender)
        else:
            self._current = Generation(config, sender, root, self.gate)
        self.resource: Resource = _Current(self)
        self.site = site_for(self._current.resource, config, reactor, metrics)
        self._listeners: list[Listener] = []
        for index, configured in enumerate(config.listeners):
            listener = Listener(self.site, configured.endpoint, config.max_connections)
            self._listeners.append(listener)
            self._listen(configured, listener, index, listen_via)
        # Mail to MMS: the ESMTP listeners, one factory for all; a reload
        # sets its new policy and portal on it.
        self._mail_clients: dict[SubmitSettings, MM7Client] = {}
        self.mail_factory: ESMTPServerFactory | None = None
        if config.esmtp_listeners:
            self.mail_factory = mail_listener(
                config,
                mail_policy(
                    config, self.shared, self._current.gate, self._mail_clients
                ),
                self.shared,
            )
        # A worker's ESMTP listeners adopt the sockets its parent bound
        # after the HTTP ones (mm7tx.app.worker.passed_endpoints).
        for index, configured in enumerate(
            config.esmtp_listeners, start=len(config.listeners)
        ):
            self._listen(configured, self.mail_factory, index, listen_via)
        self.relay_watch: RelayWatch | None = None
        self.monitor: MM7Site | None = None
        self._monitor: MonitorListener | None = None
        if metrics is not None:
            gate = self.gate
            metrics.watch(lambda: gate.in_flight, self._smtp_connections)
        if metrics is not None and config.metrics_listen is not None:
            if isinstance(sender, Checkable):
                self.relay_watch = RelayWatch(reactor, sender)
            self.monitor = MonitorSite(
                monitor_root(metrics, self.problem, self.notes),
                reactor,
                metrics,
                config.metrics_listen,
            )
            self._monitor = MonitorListener(
                reactor, config.metrics_listen, self.monitor
            )

    # The shared objects (Shared), by the names they always had here.

    @property
    def gate(self) -> TransactionGate:
        """The bound on transactions in flight, every configuration's."""
        return self.shared.gate

    @property
    def reporter(self) -> DeliveryReporter | None:
        """The delivery reporter, once a configuration has MMSC paths."""
        return self.shared.reporter

    @property
    def metrics(self) -> Metrics | None:
        return self.shared.metrics

    @property
    def throttle(self) -> LoginThrottle:
        return self.shared.throttle

    @property
    def limiter(self) -> RateLimiter:
        return self.shared.limiter

    @property
    def scrypt(self) -> defer.DeferredSemaphore:
        return self.shared.scrypt

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

    def _listen(
        self,
        configured: ConfiguredListener,
        factory: Any,
        index: int,
        listen_via: Callable[[int], Any] | None,
    ) -> None:
        """Serve ``factory`` on ``configured``'s endpoint, behind its access
        lists if it has any; a worker listens through a reactor that adopts
        the socket its parent bound as the ``index``-th (mm7tx.workers
        .Adopting)."""
        endpoint, access = configured.endpoint, configured.access
        if access.allow or access.deny:
            factory = ListenerGuard(
                factory, access, proxied=endpoint.startswith("haproxy:")
            )
        via = listen_via(index) if listen_via is not None else self.reactor
        strports.service(endpoint, factory, reactor=via).setServiceParent(self)

    def _generation(self, config: Config, sender: IMailSender) -> Generation:
        # Its own count of transactions, within the shared bound.
        gate = TransactionGate(within=self.gate)
        resources = build_resources(
            config,
            sender,
            self.reactor,
            gate,
            shared=self.shared,
            processors=self.processors,
        )
        return Generation(config, sender, build_root(resources), gate)

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
        changed = listener_changes(running.config, config)
        if changed:
            log.warn(
                "Reloading {source}: {changed} changed, which takes a restart; "
                "the running listeners are kept",
                source=config.source,
                changed=" and ".join(changed),
            )
        # The running listeners, which a later reload compares with.
        config = keeping_listeners(config, running.config)
        fresh: IMailSender | None = None
        old_store = self.shared.store
        try:
            if config.smtp != running.config.smtp:
                fresh = sender_for(self.reactor, config.smtp, self.metrics)
            self.shared.open_store(config)
            new = self._generation(config, fresh or running.sender)
        except MaildirError as e:
            self._keep_store(old_store, running.config)
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
                defer.maybeDeferred(fresh.close).addErrback(
                    lambda reason: log.failure(
                        "Closing the mail sender a failed reload made",
                        reason,
                    )
                )
            self._keep_store(old_store, running.config)
            return False
        self.shared.configure(config)
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
        if self.mail_factory is not None:
            self.mail_factory.policy = mail_policy(
                config, self.shared, new.gate, self._mail_clients
            )
            self.mail_factory.portal = mail_portal(config, self.shared)
            self.mail_factory.options["max_size"] = config.mail_in.max_mail_size
            try:
                self.mail_factory.options["tls"] = mail_tls(config)
            except (OSError, ValueError) as e:
                log.error(
                    "Reloading {source}: ESMTP_Listener's certificate: {error}; "
                    "the running one is kept",
                    source=config.source,
                    error=str(e),
                )
        if self.shared.store is not old_store and old_store is not None:
            users = [running, *running.sharing, *self._retiring]
            defer.ensureDeferred(self._close_store(old_store, users))
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
        if (
            self.relay_watch is not None
            and self._monitor is not None
            and self._monitor.serving
        ):
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

    async def _retire(self, generation: Generation) -> None:
        for user in (*generation.sharing, generation):
            await user.done()
        if generation in self._retiring:  # not closed by a stop meanwhile
            self._retiring.remove(generation)
            await generation.sender.close()
            log.info(
                "Closed the previous configuration's {mail}",
                mail=generation.sender.description,
            )

    def _keep_store(self, store: IStateStore | None, config: Config) -> None:
        """A reload failed: a store it opened closed, the running one kept."""
        shared = self.shared
        opened = shared.store
        if opened is not store and opened is not None:
            opened.close().addErrback(
                lambda reason: log.failure(
                    "Closing the state store {store} a failed reload opened",
                    reason,
                    store=opened.description,
                )
            )
        shared.store, shared.store_spec = store, config.state_store

    async def _close_store(self, store: IStateStore, users: list[Generation]) -> None:
        """Close a store a reload replaced, once the transactions of the
        configurations that used it are done."""
        self._closing_stores.append(store)
        for user in users:
            await user.done()
        if store in self._closing_stores:  # not closed by a stop meanwhile
            self._closing_stores.remove(store)
            await store.close()
            log.info("Closed the previous state store {store}", store=store.description)

    def notes(self) -> str | None:
        """What ``/readyz`` notes while ready: the state store failing
        (served without exactly once, which is no reason to take the
        instance out of service)."""
        health = self.shared.store_health
        return health.problem() if health is not None else None

    def _reload_loaded(self) -> None:
        # SIGHUP, in the reactor's thread.
        if self._load is not None:
            self.reload_from(self._load)

    def problem(self) -> str | None:
        """Why the service is not ready for MM7 traffic, or None: what
        ``/readyz`` answers."""
        if self.gate.closed:
            return "draining: the service is stopping"
        # Each MM7 listener listening has started the site once.
        if self.site.numPorts < len(self.config.listen):
            return "not listening on every MM7 listener"
        if self.mail_factory is not None and self.mail_factory.numPorts < len(
            self.config.esmtp_listeners
        ):
            return "not listening on every ESMTP listener"
        if self.relay_watch is not None:
            return self.relay_watch.problem()
        return None

    def _relay_watch_up(self) -> None:
        if self.relay_watch is not None:
            self.relay_watch.start()

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
        if self._load is not None:
            self._sighup.install()
        super().startService()
        if self._monitor is not None:
            self._monitor.start(self._relay_watch_up)

    def stopService(self) -> defer.Deferred[None]:
        self.gate.close()
        if self.relay_watch is not None:
            self.relay_watch.stop()
        stopping = super().stopService()
        return defer.ensureDeferred(self._stop(stopping))

    async def _stop(self, listeners: defer.Deferred[None] | None) -> None:
        deadline = await drain(
            self.reactor, self.gate, listeners, self.config.drain_timeout
        )
        if self.reporter is not None:
            await self.reporter.stop(max(0.0, deadline - self.reactor.seconds()))
        if self.mail_factory is not None:
            # The drain's end: a mail whose MMSC has not answered yet gets
            # 421 4.3.2 and stays in the sender's queue.
            self.mail_factory.shut_down()
            for client in self._mail_clients.values():
                await client.close()
        await close_connections(self.reactor, self.site, deadline)
        # The senders of earlier configurations not yet closed too.
        retiring, self._retiring = self._retiring, []
        for generation in retiring:
            await generation.sender.close()
        await self.sender.close()
        # After the reporter: it may keep its reports there.
        closing, self._closing_stores = self._closing_stores, []
        if self.shared.store is not None and not self.shared.store_given:
            closing.append(self.shared.store)
        for store in closing:
            await store.close()
        if self.relay_watch is not None:
            self.relay_watch.stop()
        if self._monitor is not None:
            await self._monitor.stop()
        # Ours until here: a SIGHUP while draining is no reason to die.
        self._sighup.restore()


def build_service(
    config: Config,
    reactor: IMM7Reactor,
    listen_via: Callable[[int], Any] | None = None,
    *,
    processors: ProcessorFactory = configured_processor,
    store: IStateStore | None = CONFIGURED,
) -> MM7Service:
    """The whole service for ``config``, wired to ``reactor`` alone;
    ``listen_via(index)``, if given, is the reactor the ``index``-th
    listener listens on (a worker's, adopting its parent's socket), the
    ESMTP listeners counted after the HTTP ones;
    ``processors``, if given, makes each path's processor, at the start and
    on every reload, instead of the configured ones; ``store``, if given,
    is the state store (``None``: none) instead of the one ``state_store``
    names, kept across reloads and left open at the stop (it is yours)."""
    metrics = Metrics() if config.metrics_listen is not None else None
    sender = sender_for(reactor, config.smtp, metrics)
    return MM7Service(
        config,
        sender,
        None,
        None,
        reactor,
        metrics=metrics,
        listen_via=listen_via,
        processors=processors,
        store=store,
    )
