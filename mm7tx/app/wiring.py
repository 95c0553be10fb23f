"""The wiring: what a configuration's resources and site are built of.

:func:`make_shared` makes the objects every configuration of a service
shares (and a reload keeps): the bound on transactions in flight, the
failed-login counts, the rate limiter, the bound on scrypt checks, the
delivery reporter and the state store (:meth:`Shared.open_store`).
:func:`build_resources` builds the MM7 resources on them, :func:`site_for`
the site to serve them with, :func:`mail_policy` and :func:`mail_portal` the
ESMTP listener's policy and AUTH.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.cred.portal import Portal
from twisted.internet import defer, ssl
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.python.reflect import namedAny
from twisted.web.resource import Resource

from mm7tx.config import Config
from mm7tx.config.model import DEFAULT_STATE_STORE
from mm7tx.gateway.conversations import Conversations
from mm7tx.gateway.mail_in import MailToMMS, Upstream, smtp_portal_for
from mm7tx.gateway.mail_once import StoredDedup
from mm7tx.gateway.processors import EmailProcessor
from mm7tx.gateway.reports import DeliveryReporter
from mm7tx.gateway.return_path import ReturnPath
from mm7tx.http.auth import SCRYPT_CONCURRENCY, Account, portal_for
from mm7tx.http.client import MM7Client
from mm7tx.http.limits import LoginThrottle, RateLimiter, TransactionGate
from mm7tx.http.once import ExactlyOnce, StoreHealth
from mm7tx.http.resource import MM7Resource
from mm7tx.http.settings import SubmitSettings
from mm7tx.http.site import MM7Site
from mm7tx.interfaces import IMailSender, IStateStore
from mm7tx.metrics import Metrics
from mm7tx.offload import in_pool, in_threads, inline
from mm7tx.smtp.tls import server_tls
from mm7tx.store import StoreSpec, open_store

log = Logger(namespace="mm7tx.service")

# How much longer than the relay's whole bound (smtp_total_timeout) a
# transaction's claim on its key lasts: the time to answer after the 250.
LEASE_MARGIN = 5.0


class _Configured:
    """make_shared's default ``store``: the one the configuration names."""


CONFIGURED: Any = _Configured()

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

if TYPE_CHECKING:
    from mm7tx.smtp.server import ESMTPServerFactory


@dataclass
class Shared:
    """What every configuration of one service shares, made once by
    :func:`make_shared` and kept across reloads (each reload sets its new
    limits on them with :meth:`configure`)."""

    reactor: IMM7Reactor
    metrics: Metrics | None
    # The bound on transactions in flight.
    gate: TransactionGate
    # Failed logins per address, with the lockout.
    throttle: LoginThrottle
    # The VASPs' rate limits' buckets.
    limiter: RateLimiter
    # The bound on scrypt checks running at once.
    scrypt: defer.DeferredSemaphore
    # Made for the first configuration with MMSC paths: delivery_reporter.
    reporter: DeliveryReporter | None = None
    # The state store new transactions use (None: stateless), and whether it
    # was given (kept whatever state_store a reload names) or opened from
    # the configuration's state_store (then reopened when that changes).
    store: IStateStore | None = None
    store_given: bool = False
    store_spec: StoreSpec | None = None
    # Whether the store answers, across reloads (/readyz, the log).
    store_health: StoreHealth | None = None

    def open_store(self, config: Config) -> IStateStore | None:
        """The store for ``config``: the one in use if given or named the
        same; else the one ``state_store`` names, opened on the reactor,
        which new transactions use from now on (the caller closes the one it
        replaces once its transactions are done)."""
        if self.store_given or self.store_spec == config.state_store:
            return self.store
        self.store = open_configured_store(config.state_store, self.reactor)
        self.store_spec = config.state_store
        health = self.health()
        health.description = config.state_store.describe()
        health.error = None
        log.info(
            "State store: {store}",
            store=self.store.description if self.store is not None else "none",
        )
        return self.store

    def health(self) -> StoreHealth:
        if self.store_health is None:
            self.store_health = StoreHealth(self.metrics)
            if self.store is not None:
                self.store_health.description = self.store.description
        return self.store_health

    def exactly_once(self, config: Config) -> ExactlyOnce | None:
        """Exactly once on the store in use, with ``config``'s window."""
        if self.store is None:
            return None
        return ExactlyOnce(
            self.store,
            self.reactor,
            config.dedup_window,
            self.health(),
            self.metrics,
        )

    def delivery_reporter(self, config: Config) -> DeliveryReporter:
        """The delivery reporter, made with ``config``'s settings if none
        was made yet."""
        if self.reporter is None:
            self.reporter = DeliveryReporter(
                self.reactor,
                attempts=config.delivery_report_attempts,
                timeout=config.delivery_report_timeout,
                metrics=self.metrics,
                max_answer_size=config.client_max_answer_size,
                store=self.store,
                accounts=accounts_by_name(config),
            )
        return self.reporter

    def configure(self, config: Config) -> None:
        """``config``'s limits on each (a reload)."""
        self.gate.limit = config.max_transactions
        self.throttle.max_failures = config.max_failed_logins
        self.throttle.lockout = config.login_lockout
        if self.reporter is not None:
            self.reporter.attempts = config.delivery_report_attempts
            self.reporter.set_timeout(config.delivery_report_timeout)
            self.reporter.max_answer_size = config.client_max_answer_size
            self.reporter.accounts = accounts_by_name(config)
            self.reporter.use_store(self.store)


def accounts_by_name(config: Config) -> dict[str, Account]:
    """``config``'s VASP accounts by name: where their reports go."""
    return {account.name: account for account in config.vasps}


def make_shared(
    config: Config,
    reactor: IMM7Reactor,
    metrics: Metrics | None = None,
    *,
    gate: TransactionGate | None = None,
    reporter: DeliveryReporter | None = None,
    store: IStateStore | None = CONFIGURED,
) -> Shared:
    """The shared objects for ``config``, on ``reactor``'s clock: the one
    place each is made (``gate``, ``reporter`` and ``store`` are yours if
    given; ``store=None``: no store, stateless).  By default the store is
    the one ``state_store`` names, opened here on ``reactor``; the service
    closes it when it stops."""
    shared = Shared(
        reactor,
        metrics,
        gate if gate is not None else TransactionGate(config.max_transactions),
        LoginThrottle(reactor, config.max_failed_logins, lockout=config.login_lockout),
        RateLimiter(reactor),
        defer.DeferredSemaphore(SCRYPT_CONCURRENCY),
        reporter,
    )
    if store is CONFIGURED:
        shared.open_store(config)
    else:
        shared.store = store
        shared.store_given = True
    shared.health()
    return shared


def open_configured_store(spec: StoreSpec, reactor: Any) -> IStateStore | None:
    """The store ``spec`` names on ``reactor``: :func:`mm7tx.store.open_store`,
    except on a reactor without threads, or whose thread pool runs work in
    the caller's thread (``synchronous``: :mod:`mm7tx.testing`'s), where
    an SQLite file is worked on inline, and the default file is not made
    at all (a store in memory instead: a test leaves no file behind)."""
    pool = reactor.getThreadPool() if IReactorThreads.providedBy(reactor) else None
    if spec.kind == "sqlite" and (pool is None or getattr(pool, "synchronous", False)):
        if spec == DEFAULT_STATE_STORE:
            return open_store(StoreSpec(kind="memory"), reactor)
        from mm7tx.store.sqlite import SQLiteStore

        return SQLiteStore(spec.path, reactor, inline)
    return open_store(spec, reactor)


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
    shared: Shared | None = None,
    processors: ProcessorFactory | None = None,
) -> dict[str, Resource]:
    """One :class:`MM7Resource` per configured VASP and MMSC path.

    All share the objects of ``shared`` (made by :func:`make_shared` if not
    given, with ``gate``, ``reporter`` and ``metrics``): one
    :class:`TransactionGate` (the bound on transactions in flight; ``gate``,
    if given, counts these resources' transactions instead), one bound on
    scrypt checks and one count of failed logins per address; MMSC paths
    share one Portal over the VASP accounts, VASP paths one over the MMSC
    accounts (none, and so open, without any), one rate limiter on the
    reactor's clock, one delivery reporter and one state store (exactly
    once; without ``shared``, none: the tree alone keeps no state).  ``metrics``, if given,
    counts their requests.  ``processors`` makes each path's processor (by
    default, the configured one: :func:`configured_processor`).
    """
    if processors is None:
        processors = configured_processor
    if shared is None:
        # The tree alone: nothing would close a store, so it keeps none.
        shared = make_shared(
            config, reactor, metrics, gate=gate, reporter=reporter, store=None
        )
    gate = gate if gate is not None else shared.gate
    metrics = shared.metrics
    once = shared.exactly_once(config)
    lease = config.smtp.total_timeout + LEASE_MARGIN
    offload = in_threads(reactor)
    blocking = in_pool(reactor)
    resources: dict[str, Resource] = {}
    mmsc_portal = (
        portal_for(config.mmscs, reactor, mmsc=True, scrypt=shared.scrypt)
        if config.mmscs
        else None
    )
    return_path = _return_path(config, shared, sender)
    conversations = _conversations(config, shared)
    for path in config.vasp_paths:
        processor = processors(config, path, sender, None)
        if return_path is not None and isinstance(processor, EmailProcessor):
            processor.return_path = return_path
        if conversations is not None and isinstance(processor, EmailProcessor):
            processor.conversations = conversations
        resources[path] = MM7Resource(
            processor,
            path,
            "vasp",
            config.mm7_version,
            mmsc_portal,
            gate=gate,
            xml_limits=config.xml_limits,
            throttle=shared.throttle,
            trusted_proxies=config.trusted_proxies,
            metrics=metrics,
            offload=offload,
            in_thread=blocking,
            max_request_size=config.max_request_size,
            log_addresses=config.log_addresses,
            once=once,
            lease=lease,
        )
    if config.mmsc_paths:
        portal = portal_for(config.vasps, reactor, scrypt=shared.scrypt)
        reporter = shared.delivery_reporter(config)
        for path in config.mmsc_paths:
            processor = processors(config, path, sender, reporter)
            resources[path] = MM7Resource(
                processor,
                path,
                "mmsc",
                config.mm7_version,
                portal,
                shared.limiter,
                gate,
                config.xml_limits,
                shared.throttle,
                config.trusted_proxies,
                metrics,
                offload,
                max_request_size=config.max_request_size,
                in_thread=blocking,
                log_addresses=config.log_addresses,
                once=once,
                lease=lease,
            )
    return resources


def our_name(config: Config) -> str:
    """The name mm7tx goes by in mail: ``smtp_helo`` (``localhost`` unset),
    as its ESMTP client's EHLO, its listener's greeting and the
    Reporting-MTA of its DSNs."""
    return config.smtp.helo or "localhost"


def _return_path(
    config: Config, shared: Shared, sender: IMailSender
) -> ReturnPath | None:
    """The way back to the senders of mail that became MMS, for the VASP
    paths: only with a state store and an upstream MMSC to submit to."""
    if shared.store is None or not config.upstreams:
        return None
    return ReturnPath(
        shared.store,
        sender,
        shared.reactor,
        [upstream.name for upstream in config.upstreams],
        report_mail_from=config.rules.report_mail_from,
        reporting_mta=our_name(config),
    )


def _conversations(config: Config, shared: Shared) -> Conversations | None:
    """The conversations replies go by, both ways: only with a state store
    and an upstream MMSC to submit to."""
    if shared.store is None or not config.upstreams:
        return None
    return Conversations(shared.store, config.reply_window, clock=shared.reactor)


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


def mail_policy(
    config: Config,
    shared: Shared,
    gate: TransactionGate,
    clients: dict[SubmitSettings, MM7Client],
) -> MailToMMS:
    """The ESMTP listener's policy for ``config``: its mms_* settings, an
    MM7 client per upstream MMSC (kept in ``clients`` across reloads while
    its settings stay the same), the shared rate buckets and metrics, and
    ``gate`` to count its mails in flight."""
    reactor = shared.reactor
    upstreams = []
    for settings in config.upstreams:
        client = clients.get(settings)
        if client is None:
            credentials = None
            if settings.user is not None:
                credentials = (settings.user, settings.password or "")
            client = clients[settings] = MM7Client(
                reactor,
                settings.url,
                credentials,
                namespace=settings.namespace,
                mm7_version=settings.mm7_version,
                timeout=settings.timeout,
                max_answer_size=config.client_max_answer_size,
            )
        upstreams.append(Upstream(settings, client))
    return MailToMMS(
        config.mail_in,
        upstreams,
        reactor,
        limiter=shared.limiter,
        gate=gate,
        offload=in_threads(reactor),
        metrics=shared.metrics,
        log_addresses=config.log_addresses,
        store=shared.store,
        report_window=config.report_window,
        conversations=_conversations(config, shared),
        dedup=(
            StoredDedup(shared.store, config.dedup_window, reactor)
            if shared.store is not None
            else None
        ),
    )


def mail_portal(config: Config, shared: Shared) -> Portal:
    """SMTP AUTH over ``config``'s VASP accounts, on the shared bound of
    scrypt checks."""
    return smtp_portal_for(config.vasps, shared.reactor, shared.scrypt)


def mail_tls(config: Config) -> ssl.CertificateOptions | None:
    """The ESMTP listener's STARTTLS options from its ``tls_certificate``
    and ``tls_private_key`` (read now), or None: no STARTTLS."""
    mail_in = config.mail_in
    if mail_in.tls_certificate is None:
        return None
    return server_tls(mail_in.tls_certificate, mail_in.tls_private_key)


def mail_listener(
    config: Config, policy: MailToMMS, shared: Shared
) -> ESMTPServerFactory:
    """The ESMTP listeners' factory: ``policy``, SIZE at ``mms_max_mail_size``,
    AUTH over the VASP accounts, its failures counted per address in the
    shared throttle (an address locked out on HTTP is on SMTP too), STARTTLS
    with the listener's certificate."""
    # Here, not at the top: twisted.mail installs the global reactor as it
    # is imported (see mm7tx.smtp.senders).
    from mm7tx.smtp.server import ESMTPServerFactory

    return ESMTPServerFactory(
        policy,
        shared.reactor,
        hostname=our_name(config),
        max_size=config.mail_in.max_mail_size,
        portal=mail_portal(config, shared),
        throttle=shared.throttle,
        tls=mail_tls(config),
    )
