"""Building the running service from a :class:`~mm7tx.config.Config`.

:func:`build_resources` gives the resource tree alone (to mount in another
site); :func:`build_service` gives a ``MultiService`` with one HTTP listener
per endpoint, to run under ``twistd mm7`` or inside any other application.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.reflect import namedAny
from twisted.web.resource import Resource

from mm7tx.auth import portal_for
from mm7tx.config import Config
from mm7tx.interfaces import IMailSender
from mm7tx.limits import RateLimiter, TransactionGate
from mm7tx.processors import EmailProcessor
from mm7tx.reports import DeliveryReporter
from mm7tx.resource import MM7Resource, build_root
from mm7tx.senders import sender_for
from mm7tx.site import MM7Site

log = Logger()


def make_processor(
    name: str | None,
    config: Config,
    sender: IMailSender,
    reporter: DeliveryReporter | None = None,
) -> object:
    """The processor for a path: :class:`EmailProcessor` or the class named
    by dotted name, called with the same arguments."""
    factory: Any = EmailProcessor if name is None else namedAny(name)
    return factory(
        sender,
        config.rules,
        mm7_version=config.mm7_version,
        keep_smil=config.keep_smil,
        reporter=reporter,
    )


def build_resources(
    config: Config,
    sender: IMailSender,
    reactor: Any = None,
    gate: TransactionGate | None = None,
) -> dict[str, Resource]:
    """One :class:`MM7Resource` per configured VASP and MMSC path.

    All share one :class:`TransactionGate` (the bound on transactions in
    flight); MMSC paths share one Portal over the VASP accounts, one rate
    limiter and one delivery reporter, and need a ``reactor`` for those.
    """
    gate = gate if gate is not None else TransactionGate(config.max_transactions)
    resources: dict[str, Resource] = {}
    for path in config.vasp_paths:
        processor = make_processor(config.processor_for(path), config, sender)
        resources[path] = MM7Resource(
            processor,
            path,
            "vasp",
            config.mm7_version,
            gate=gate,
            xml_limits=config.xml_limits,
        )
    if config.mmsc_paths:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        portal = portal_for(config.vasps, reactor)
        limiter = RateLimiter(reactor)
        reporter = DeliveryReporter(reactor, attempts=config.delivery_report_attempts)
        for path in config.mmsc_paths:
            processor = make_processor(
                config.processor_for(path), config, sender, reporter
            )
            resources[path] = MM7Resource(
                processor,
                path,
                "mmsc",
                config.mm7_version,
                portal,
                limiter,
                gate,
                config.xml_limits,
            )
    return resources


class MM7Service(service.MultiService):
    """The listeners of one mm7tx configuration; logs where it listens and
    where mail goes when it starts."""

    def __init__(
        self,
        config: Config,
        sender: IMailSender,
        root: Resource,
        gate: TransactionGate,
        reactor: Any,
    ) -> None:
        super().__init__()
        self.config = config
        self.sender = sender
        self.root = root
        self.gate = gate
        self.reactor = reactor
        self.site = MM7Site(
            root,
            max_request_size=config.max_request_size,
            request_timeout=config.request_timeout,
            idle_timeout=config.idle_timeout,
            reactor=reactor,
        )
        for endpoint in config.listen:
            strports.service(endpoint, self.site).setServiceParent(self)

    def startService(self) -> None:
        log.info(
            "mm7tx on {source}: listening on {listen}, VASP paths {paths}, "
            "MMSC paths {mmsc} for {accounts} VASP accounts, mail to {mail}",
            source=self.config.source,
            listen=", ".join(self.config.listen),
            paths=" ".join(self.config.vasp_paths) or "-",
            mmsc=" ".join(self.config.mmsc_paths) or "-",
            accounts=len(self.config.vasps),
            mail=self.sender.description,
        )
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """Stop listening, take no new transaction, and let the ones in
        flight finish (for at most ``mm7_drain_timeout`` seconds)."""
        self.gate.close()
        stopping = super().stopService()
        in_flight = self.gate.in_flight
        if in_flight:
            log.info(
                "Draining {count} transactions in flight (at most {timeout:g} s)",
                count=in_flight,
                timeout=self.config.drain_timeout,
            )

        def timed_out(result: object, timeout: float) -> None:
            log.warn(
                "Stopped with {count} transactions still in flight",
                count=self.gate.in_flight,
            )

        drained = self.gate.drained().addTimeout(
            self.config.drain_timeout, self.reactor, onTimeoutCancel=timed_out
        )
        return defer.gatherResults(
            [defer.maybeDeferred(lambda: stopping), drained]
        ).addCallback(lambda _: None)


def build_service(config: Config, reactor: Any = None) -> MM7Service:
    """The whole service for ``config``; pass a reactor to avoid the global one."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    sender = sender_for(reactor, config.smtp)
    gate = TransactionGate(config.max_transactions)
    root = build_root(build_resources(config, sender, reactor, gate))
    return MM7Service(config, sender, root, gate, reactor)
